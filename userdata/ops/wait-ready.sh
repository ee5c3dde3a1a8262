#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Wait until di-ready passes (every local endpoint answers /health with 200), at most TIMEOUT seconds
# (0: check once). Prints di-ready's last verdict either way. Usage: wait-ready.sh [TIMEOUT]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/log.sh"

READY_POLL_SECONDS=${READY_POLL_SECONDS:-15}

# wait_ready TIMEOUT: 0 once di-ready passes; 1 when TIMEOUT seconds pass first.
wait_ready() {
  local timeout=$1 deadline output
  deadline=$((SECONDS + timeout))
  while true; do
    if output=$("$DI_HOME/di-ready" 2>&1); then
      printf '%s\n' "$output"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$output"
      log "not ready after ${timeout}s"
      return 1
    fi
    sleep "$READY_POLL_SECONDS"
  done
}

main() {
  local timeout=${1:-0}
  [[ $timeout =~ ^[0-9]+$ ]] || die "usage: wait-ready.sh [TIMEOUT_SECONDS]"
  wait_ready "$timeout"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
