#!/usr/bin/env bash
# The deployment's etcd (on the control host, DI_ETCD in node.env) through its v3 JSON gateway: health, waiting for
# it, and whether an endpoint is registered. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"

ETCD_WAIT_SECONDS=${ETCD_WAIT_SECONDS:-600}
ETCD_WAIT_SLEEP=${ETCD_WAIT_SLEEP:-5}

# etcd_url PATH: the etcd v3 JSON gateway of this deployment.
etcd_url() { printf 'http://%s%s\n' "${DI_ETCD:?}" "$1"; }

# etcd_healthy: true when etcd answers its health check.
etcd_healthy() { curl -fsS --max-time 5 "$(etcd_url /health)" 2>/dev/null | grep -q '"health": *"true"'; }

# wait_for_etcd: block until etcd is healthy, at most ETCD_WAIT_SECONDS (workers start only after it).
wait_for_etcd() {
  local deadline=$((SECONDS + ETCD_WAIT_SECONDS))
  until etcd_healthy; do
    ((SECONDS < deadline)) || { log "etcd at $DI_ETCD not healthy after ${ETCD_WAIT_SECONDS}s"; return 1; }
    log "waiting for etcd at $DI_ETCD"
    sleep "$ETCD_WAIT_SLEEP"
  done
  log "etcd at $DI_ETCD is healthy"
}

# etcd_registered ROLE IP PORT: true when NeuronConnector registered /workers/ROLE/IP/PORT.
etcd_registered() {
  local key body
  key=$(printf '/workers/%s/%s/%s' "$1" "$2" "$3" | base64 -w0)
  body=$(curl -fsS --max-time 5 -X POST -d "{\"key\":\"$key\",\"count_only\":true}" \
    "$(etcd_url /v3/kv/range)" 2>/dev/null) || return 1
  [[ $body =~ \"count\":\ *\"?([0-9]+) ]] && ((BASH_REMATCH[1] > 0))
}
