#!/usr/bin/env bash
# Secrets Manager values (the Hugging Face token, the proxy's API key), read so that a value passes through the
# caller's memory only: never argv, never a log line. Sourced, never run.

# The JSON keys a proxy API key secret may hold the key under; diproxy/auth.py reads the same ones.
# shellcheck disable=SC2034  # read by the scripts that source this library
PROXY_API_KEY_FIELDS=(api_key apiKey API_KEY key)

# secret_value ID FIELD...: prints the string of Secrets Manager secret ID; a JSON secret (the console's key/value
# form) gives its first FIELD that holds a string. On failure prints the reason instead and returns 1, so the
# caller has it for its error without a global: `token=$(secret_value ID F) || fail "$token"`.
# The value goes to a command substitution, never to argv or a log line.
secret_value() {
  local id=$1 value fields
  shift
  value=$(aws secretsmanager get-secret-value --region "$DI_REGION" --secret-id "$id" \
    --query SecretString --output text 2>/dev/null) || {
    printf '%s\n' "cannot read secret '$id' from Secrets Manager (missing, or the instance role lacks access)"
    return 1
  }
  if [[ $value == \{* ]]; then
    printf -v fields '%s, ' "$@"
    value=$(python3 -c 'import json, sys
d = json.load(sys.stdin)
print(next(d[k] for k in sys.argv[1:] if isinstance(d.get(k), str)))' "$@" <<<"$value" 2>/dev/null) || {
      printf '%s\n' "secret '$id' is JSON without any of the keys ${fields%, }"
      return 1
    }
  fi
  [[ -n $value ]] || { printf '%s\n' "secret '$id' is empty"; return 1; }
  printf '%s\n' "$value"
}
