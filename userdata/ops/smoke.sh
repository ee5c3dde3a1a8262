#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The Neuron DI tutorial's test request ("a tornado is a") through the proxy on this control host.
# Prints the response; fails when the proxy errors or returns no completion. Usage: smoke.sh [MAX_TOKENS]
set -euo pipefail
DI_LIB=${DI_LIB:-/opt/di/lib.sh}
# shellcheck source=../lib.sh
. "$DI_LIB"

SMOKE_PROMPT=${SMOKE_PROMPT:-a tornado is a}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-120}

request_body() {
  printf '{"model": "%s", "prompt": ["%s"], "max_tokens": %s, "temperature": 0}' "$DI_MODEL_ID" "$SMOKE_PROMPT" "$1"
}

main() {
  local max_tokens=${1:-10} url response
  [[ $max_tokens =~ ^[1-9][0-9]*$ ]] || die "usage: smoke.sh [MAX_TOKENS]"
  load_node_env
  [[ $DI_ROLE == control ]] || die "smoke runs on the control host (it calls the proxy on localhost)"
  url="http://localhost:${DI_PROXY_PORT:-8000}/v1/completions"
  response=$(curl -sS --fail-with-body --max-time "$SMOKE_TIMEOUT" "$url" -H 'Content-Type: application/json' \
    -d "$(request_body "$max_tokens")") || die "request to $url failed: ${response:-no response}"
  printf '%s\n' "$response"
  [[ $response == *'"choices"'* && $response == *'"text"'* ]] || die "no completion in the response"
  echo "smoke test passed: $DI_MODEL_ID answered through the proxy"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
