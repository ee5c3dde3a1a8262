#!/usr/bin/env bash
# Shared helpers for every DiStack node script. Sourced, never run; defines functions only.
# Knobs are environment variables with defaults so tests can shrink waits and point at fakes.

DI_NODE_ENV=${DI_NODE_ENV:-/etc/di/node.env}
# Written by the update runbook (new image or model) and read after node.env, so it wins.
DI_OVERRIDE_ENV=${DI_OVERRIDE_ENV:-/etc/di/override.env}
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

# load_node_env: export every per-deployment value (node.env, then the update override if any).
load_node_env() {
  [[ -r $DI_NODE_ENV ]] || die "cannot read $DI_NODE_ENV (user data did not run, or not as root)"
  set -a
  # shellcheck source=/dev/null
  . "$DI_NODE_ENV"
  # shellcheck source=/dev/null
  [[ -r $DI_OVERRIDE_ENV ]] && . "$DI_OVERRIDE_ENV"
  set +a
}

# endpoints: one line per endpoint of this worker, "index role cores port" (from DI_ENDPOINTS).
endpoints() {
  local index=0 spec role cores port
  for spec in ${DI_ENDPOINTS:-}; do
    IFS=: read -r role cores port <<<"$spec"
    printf '%s %s %s %s\n' "$index" "$role" "$cores" "$port"
    index=$((index + 1))
  done
}

# compiled_key: where compiled artifacts for this model/image/TP/batch/sequence length live under compiled/.
# Any change to one of them must not reuse another's NEFFs, so all five go into the hash.
compiled_key() {
  local model=${DI_MODEL_ID:?} image=${DI_IMAGE:?} tp=${DI_TENSOR_PARALLEL:?}
  local batch=${DI_MAX_NUM_SEQS:?} seq=${DI_MAX_MODEL_LEN:?} digest
  digest=$(printf '%s|%s|%s|%s|%s' "$model" "$image" "$tp" "$batch" "$seq" | sha256sum | cut -c1-12)
  printf '%s-tp%s-b%s-s%s-%s\n' "${model##*/}" "$tp" "$batch" "$seq" "$digest"
}
