#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Take endpoints out of service: stop their units (the container gets SIGTERM, vLLM finishes in-flight requests
# and its etcd registration goes away), waiting at most TIMEOUT seconds before stopping them hard.
# Usage: drain.sh [all|INDEX] [TIMEOUT]
set -euo pipefail
DI_LIB=${DI_LIB:-/opt/di/lib.sh}
# shellcheck source=../lib.sh
. "$DI_LIB"

DRAIN_POLL_SECONDS=${DRAIN_POLL_SECONDS:-5}

# selected WHICH: "index role port" of the endpoints to drain.
selected() {
  local which=$1 index role port found=0
  while read -r index role _ port; do
    if [[ $which == all || $which == "$index" ]]; then echo "$index $role $port"; found=1; fi
  done < <(endpoints)
  ((found)) || die "no endpoint '$which' on this node (DI_ENDPOINTS='${DI_ENDPOINTS:-}')"
}

# drained UNIT ROLE IP PORT: the unit stopped and (with etcd) the registration gone.
drained() {
  systemctl is-active --quiet "$1" && return 1
  [[ -z $3 ]] && return 0
  ! etcd_registered "$2" "$3" "$4"
}

main() {
  local which=${1:-all} timeout=${2:-600} deadline ip="" index role port unit pending listed
  [[ $timeout =~ ^[0-9]+$ ]] || die "usage: drain.sh [all|INDEX] [TIMEOUT]"
  load_node_env
  [[ $DI_ROLE != control ]] || die "drain applies to workers; stop the control host's units with di-restart"
  # Endpoints of both modes are registered in etcd (NeuronConnector, or di-register bound to the unit).
  ip=$(local_ip 2>/dev/null) || ip=""
  listed=$(selected "$which")
  mapfile -t chosen <<<"$listed"
  for line in "${chosen[@]}"; do
    read -r index role port <<<"$line"
    unit=$(unit_name "$index")
    log "draining $unit ($role, port $port)"
    systemctl stop --no-block "$unit"
  done
  deadline=$((SECONDS + timeout))
  while true; do
    pending=()
    for line in "${chosen[@]}"; do
      read -r index role port <<<"$line"
      drained "$(unit_name "$index")" "$role" "$ip" "$port" || pending+=("$(unit_name "$index")")
    done
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      log "still serving after ${timeout}s: ${pending[*]}; stopping hard"
      systemctl kill --signal=SIGKILL "${pending[@]}" || true
      echo "drained (forced after ${timeout}s): ${pending[*]}"
      return 1
    fi
    sleep "$DRAIN_POLL_SECONDS"
  done
  echo "drained: $(for line in "${chosen[@]}"; do read -r index _ <<<"$line"; unit_name "$index"; done | tr '\n' ' ')"
  echo "start again with: /opt/di/di-restart $which"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
