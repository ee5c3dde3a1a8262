#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Collect this node's journal (DiStack units, cloud-init), container logs and di-status, and upload them to
# s3://$DI_BUCKET/logs/ROLE-ID:INSTANCE-ID/<time>/ (lib/scope.sh: the node's own folder). Prints that URI last. Usage: collect-logs.sh [HOURS]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/scope.sh"

LOGS_WORK_DIR=${LOGS_WORK_DIR:-/tmp}
# gather DIR HOURS: every log file into DIR (a missing source is noted, never fatal).
gather() {
  local dir=$1 hours=$2 name
  journalctl --no-pager --since "-${hours}h" -u 'di-*' -u 'distack-proxy*' >"$dir/units.log" 2>&1 || echo "journalctl failed" >>"$dir/units.log"
  journalctl --no-pager --since "-${hours}h" -u cloud-final -u cloud-init >"$dir/cloud-init.log" 2>&1 || true
  [[ -r /var/log/cloud-init-output.log ]] && cp /var/log/cloud-init-output.log "$dir/" || true
  docker ps -a --format '{{.Names}}\t{{.Status}}\t{{.Image}}' >"$dir/containers.txt" 2>&1 || true
  while read -r name; do
    [[ -n $name ]] || continue
    docker logs --timestamps --since "${hours}h" "$name" >"$dir/container-$name.log" 2>&1 || true
  done < <(docker ps -a --filter name=di- --format '{{.Names}}' 2>/dev/null || true)
  "$DI_HOME/di-status" >"$dir/status.json" 2>&1 || true
}

main() {
  local hours=${1:-6} folder stamp uri
  [[ $hours =~ ^[0-9]+$ ]] || die "usage: collect-logs.sh [HOURS]"
  load_node_env
  folder=$(own_prefix logs/) || exit 1
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  make_scratch "$LOGS_WORK_DIR" di-logs
  gather "$SCRATCH" "$hours"
  uri="$folder$stamp/"
  retry aws s3 cp --recursive --only-show-errors --region "$DI_REGION" "$SCRATCH" "$uri" || die "upload to $uri failed"
  echo "$uri"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
