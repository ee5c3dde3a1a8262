#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Switch this node to a new image and/or model: write the override read after node.env, pull and stage,
# restart through di-restart, wait (bounded) for di-ready, and restore the previous override on any failure.
# Usage: update.sh [--image IMAGE] [--model ORG/NAME] [--ready-timeout SECONDS]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"

UPDATE_READY_TIMEOUT=${UPDATE_READY_TIMEOUT:-3600}

usage() { die "usage: update.sh [--image IMAGE] [--model ORG/NAME] [--ready-timeout SECONDS]"; }

# write_override IMAGE MODEL: keep what the override already changed, replace the keys given.
write_override() {
  local image=$1 model=$2 tmp
  tmp=$(mktemp "${DI_OVERRIDE_ENV}.XXXXXX")
  if [[ -r $DI_OVERRIDE_ENV ]]; then
    grep -v -e '^DI_IMAGE=' -e '^DI_MODEL_ID=' "$DI_OVERRIDE_ENV" >"$tmp" || true
  fi
  [[ -n $image ]] && printf 'DI_IMAGE=%q\n' "$image" >>"$tmp"
  [[ -n $model ]] && printf 'DI_MODEL_ID=%q\n' "$model" >>"$tmp"
  chmod 0600 "$tmp"
  mv "$tmp" "$DI_OVERRIDE_ENV"
}

# save_override / restore_override: the previous override (or its absence) comes back on failure.
save_override() {
  if [[ -e $DI_OVERRIDE_ENV ]]; then cp -p "$DI_OVERRIDE_ENV" "$DI_OVERRIDE_ENV.previous"; else rm -f "$DI_OVERRIDE_ENV.previous"; fi
}

restore_override() {
  if [[ -e $DI_OVERRIDE_ENV.previous ]]; then mv "$DI_OVERRIDE_ENV.previous" "$DI_OVERRIDE_ENV"; else rm -f "$DI_OVERRIDE_ENV"; fi
}

# stage: the new image (and on workers the model and compiled artifacts) before anything stops, so the
# endpoints are down only for the restart itself. Runs in a subshell: the bootstrap helpers exit on failure.
stage() {
  (
    load_node_env
    if [[ $DI_ROLE == control ]]; then
      retry docker pull "$DI_IMAGE"
    else
      # shellcheck source=../worker.sh
      . "$DI_HOME/worker.sh"
      pull_image
      stage_model
      stage_compiled
    fi
  )
}

# rollback REASON: previous override back, units restarted on it; the update still fails.
rollback() {
  log "update failed: $1; rolling back"
  restore_override
  "$DI_HOME/di-restart" all || log "restart after rollback failed too: check journalctl -u 'di-*'"
  "$DI_HOME/ops/wait-ready.sh" "$ready_timeout" || log "not ready after rollback either"
  die "update failed ($1); previous image and model restored"
}

main() {
  local image="" model=""
  ready_timeout=$UPDATE_READY_TIMEOUT
  while (($#)); do
    case $1 in
      --image) image=${2-}; shift ;;
      --model) model=${2-}; shift ;;
      --ready-timeout) ready_timeout=${2-}; shift ;;
      *) usage ;;
    esac
    shift || usage
  done
  [[ -n $image || -n $model ]] || usage
  [[ $ready_timeout =~ ^[0-9]+$ ]] || usage
  load_node_env
  log "updating ${DI_ROLE:-node}: image ${image:-unchanged}, model ${model:-unchanged}"
  save_override
  write_override "$image" "$model"
  stage || rollback "pull or staging failed"
  "$DI_HOME/di-restart" all || rollback "di-restart failed"
  "$DI_HOME/ops/wait-ready.sh" "$ready_timeout" || rollback "not ready within ${ready_timeout}s"
  rm -f "$DI_OVERRIDE_ENV.previous"
  log "updated: image ${image:-unchanged}, model ${model:-unchanged}"
  echo "updated: image ${image:-unchanged}, model ${model:-unchanged}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
