#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The Neuron DI tutorial's test request ("a tornado is a") through the proxy on this control host.
# Prints the response; fails when the proxy errors or returns no completion. Usage: smoke.sh [MAX_TOKENS]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/secrets.sh"

SMOKE_PROMPT=${SMOKE_PROMPT:-a tornado is a}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-120}
SMOKE_WORK_DIR=${SMOKE_WORK_DIR:-/tmp}

request_body() {
  printf '{"model": "%s", "prompt": ["%s"], "max_tokens": %s, "temperature": 0}' "$DI_MODEL_ID" "$SMOKE_PROMPT" "$1"
}

# auth_header_file: a root-only file holding the Authorization header when the proxy asks for an API key (curl
# reads it with -H @FILE, so the key stays off the command line); empty otherwise.
auth_header_file() {
  local api_key file="$SCRATCH/auth.header"
  : >"$file"
  chmod 0600 "$file"
  if [[ -n ${DI_PROXY_API_KEY_SECRET:-} ]]; then
    api_key=$(secret_value "$DI_PROXY_API_KEY_SECRET" "${PROXY_API_KEY_FIELDS[@]}") || die "$api_key"
    printf 'Authorization: Bearer %s\n' "$api_key" >"$file"
  fi
  printf '%s\n' "$file"
}

main() {
  local max_tokens=${1:-10} url response headers
  [[ $max_tokens =~ ^[1-9][0-9]*$ ]] || die "usage: smoke.sh [MAX_TOKENS]"
  load_node_env
  [[ $DI_ROLE == control ]] || die "smoke runs on the control host (it calls the proxy on localhost)"
  make_scratch "$SMOKE_WORK_DIR" di-smoke
  headers=$(auth_header_file)
  url="http://localhost:${DI_PROXY_PORT:-8000}/v1/completions"
  response=$(curl -sS --fail-with-body --max-time "$SMOKE_TIMEOUT" "$url" -H 'Content-Type: application/json' \
    -H "@$headers" -d "$(request_body "$max_tokens")") || die "request to $url failed: ${response:-no response}"
  printf '%s\n' "$response"
  [[ $response == *'"choices"'* && $response == *'"text"'* ]] || die "no completion in the response"
  echo "smoke test passed: $DI_MODEL_ID answered through the proxy"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
