#!/usr/bin/env bash
# Logging and retrying, for every node script: log lines go to stderr (the journal or the runbook's output), so a
# function's stdout stays free for the value it prints. Sourced, never run; defines functions only.
# Knobs are environment variables with defaults so tests can shrink waits.

RETRY_ATTEMPTS=${RETRY_ATTEMPTS:-5}
RETRY_SLEEP=${RETRY_SLEEP:-10}

log() { printf '%s [%s] %s\n' "$(date -u +%FT%TZ)" "${DI_LOG_TAG:-${0##*/}}" "$*" >&2; }

die() { log "ERROR: $*"; exit 1; }

# retry CMD...: run CMD up to RETRY_ATTEMPTS times, RETRY_SLEEP seconds apart; return its last status.
retry() {
  local attempt=1 status
  while true; do
    "$@" && return 0
    status=$?
    ((attempt >= RETRY_ATTEMPTS)) && { log "gave up after $attempt attempts: $*"; return "$status"; }
    log "attempt $attempt failed ($status), retrying in ${RETRY_SLEEP}s: $*"
    attempt=$((attempt + 1))
    sleep "$RETRY_SLEEP"
  done
}
