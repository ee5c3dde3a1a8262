#!/usr/bin/env bash
# This node's contract: where node.env and every other path a node script touches are (overridable, so tests run
# unprivileged in a temp dir), loading node.env, and the endpoints it lists. Sourced, never run; defines functions
# and path defaults only.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"

DI_NODE_ENV=${DI_NODE_ENV:-/etc/di/node.env}
# Where the node scripts are (this file is in their lib/; the engine modules live beside them, in engines/).
# shellcheck disable=SC2034  # read by the scripts and modules.sh
DI_SCRIPTS_DIR=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")
DI_DEV_ROOT=${DI_DEV_ROOT:-/dev}
# Written by the update runbook (new image or model) and read after node.env, so it wins.
DI_OVERRIDE_ENV=${DI_OVERRIDE_ENV:-/etc/di/override.env}
DI_HOME=${DI_HOME:-/opt/di}
DI_SYSTEMD_DIR=${DI_SYSTEMD_DIR:-/etc/systemd/system}
DI_RUN_DIR=${DI_RUN_DIR:-/run/di}
DI_KV_LOCK=${DI_KV_LOCK:-/tmp/nrt_kv_store_server.lock}
DI_DATA_DIR=${DI_DATA_DIR:-/mnt/di-data}
# Where this node keeps state that must survive a stop (the root EBS volume; /run is gone after one).
DI_STATE_DIR=${DI_STATE_DIR:-/var/lib/di}

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

# dnf_tool TOOL: TOOL on PATH, installed from Amazon Linux 2023's repositories (its package has the same name) when
# missing; fails when dnf cannot install it, for the caller to say what needed it.
dnf_tool() {
  command -v "$1" >/dev/null && return 0
  log "installing $1 (dnf)"
  retry dnf install -y -q "$1"
}

# fstab_add UUID MOUNTPOINT: record a mount once, with nofail so a missing disk never blocks boot.
fstab_add() {
  local fstab=${DI_FSTAB:-/etc/fstab}
  grep -q "^UUID=$1 " "$fstab" 2>/dev/null || printf 'UUID=%s %s ext4 defaults,nofail 0 2\n' "$1" "$2" >>"$fstab"
}

# make_scratch PARENT NAME: a fresh directory PARENT/NAME.XXXXXX in SCRATCH, removed when the script exits.
# SCRATCH stays a global, not a printed value: the EXIT trap must be set in the script's own shell, which a
# $(...) subshell would not be, so call it directly and read SCRATCH afterwards.
SCRATCH=""
make_scratch() {
  SCRATCH=$(mktemp -d "$1/$2.XXXXXX")
  trap remove_scratch EXIT
}
remove_scratch() { [[ -z $SCRATCH ]] || rm -rf "$SCRATCH"; }
