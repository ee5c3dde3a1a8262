#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Take endpoints out of service without losing a request. The one path for `dictl drain`, for restarts and rollouts
# (di-restart, which update.sh calls) and for Auto Scaling scale-in and replacement (di-lifecycle). In order:
#   1. deregister: stop each endpoint's registrar, which revokes its etcd lease, or delete the key of a server that
#      registers itself; the proxy watches etcd and stops picking the endpoint;
#   2. wait until vLLM's own metrics show no request running or waiting, and, where the engine keeps a finished
#      request's KV blocks for a peer to read (a NIXL prefill), until those are read: until the proxies count no
#      handoff from the endpoint pending (they publish the counts in etcd, diproxy/handoff_registry.py), or, where no
#      proxy publishes or etcd cannot be asked, until its KV cache usage is zero; at most TIMEOUT seconds;
#   3. stop the servers (SIGTERM through the unit; SIGKILL for one still running at TIMEOUT, or DRAIN_STOP_GRACE_SECONDS
#      after the stop when less was left; TIMEOUT 0 stops hard at once);
#   4. with --lifecycle HOOKS: complete this instance's lifecycle action with CONTINUE, on the first of HOOKS
#      (comma-separated) that waits on it; an empty HOOKS (a group without hooks) completes nothing.
# Usage: drain.sh [--lifecycle HOOKS] [all|INDEX] [TIMEOUT]   (TIMEOUT: DI_DRAIN_TIMEOUT_SECONDS, else 600)
# Exit status: 0 drained; 1 bad arguments; the first step that failed otherwise: 2 deregistration not confirmed (the
# proxy may still pick the endpoint), 3 requests still in flight at TIMEOUT (the stop cut them), 4 a server had to be
# killed, 5 the lifecycle action could not be completed. Later steps still run; the last line says what applied.
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/units.sh"
. "$DI_LIB_DIR/etcd.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/metrics.sh"
. "$DI_LIB_DIR/lifecycle.sh"
. "$DI_LIB_DIR/modules.sh"

DRAIN_POLL_SECONDS=${DRAIN_POLL_SECONDS:-1}
# A request the proxy sent just before it saw the key go reaches vLLM's counters within milliseconds; an endpoint
# counts as idle only when its counters read zero this long after deregistration (one nothing listens on at once).
DRAIN_SETTLE_SECONDS=${DRAIN_SETTLE_SECONDS:-1}
# How long a deleted key or revoked lease may take to show in etcd.
DRAIN_DEREGISTER_SECONDS=${DRAIN_DEREGISTER_SECONDS:-10}
# Least time a server gets to stop after SIGTERM, even when step 2 used up TIMEOUT (vLLM with nothing in flight exits
# in seconds; the unit's own TimeoutStopSec, 120 s, bounds a stop that hangs).
DRAIN_STOP_GRACE_SECONDS=${DRAIN_STOP_GRACE_SECONDS:-10}
DEADLINE=0 # SECONDS value at which TIMEOUT ends
TIMEOUT=0
START_TIME=$EPOCHREALTIME
# KV cache usage at or below which a server holds no blocks for a peer (vLLM's get_usage is 0 with every block free).
DRAIN_KV_IDLE_USAGE=${DRAIN_KV_IDLE_USAGE:-0}
# Where the proxies publish their pending KV handoffs: beside the workers' keys (diproxy/handoff_registry.py).
DRAIN_HANDOFFS_PREFIX=${DRAIN_HANDOFFS_PREFIX:-/handoffs/}

usage() { die "usage: drain.sh [--lifecycle HOOKS] [all|INDEX] [TIMEOUT_SECONDS]"; }

INDEXES=() ROLES=() PORTS=()
IP=""

# select_endpoints WHICH: the endpoints to drain into INDEXES, ROLES and PORTS.
select_endpoints() {
  local which=$1 index role port
  while read -r index role _ port; do
    if [[ $which == all || $which == "$index" ]]; then INDEXES+=("$index") ROLES+=("$role") PORTS+=("$port"); fi
  done < <(endpoints)
  ((${#INDEXES[@]})) || die "no endpoint '$which' on this node (DI_ENDPOINTS='${DI_ENDPOINTS:-}')"
}

# units: the selected units, space-separated.
units() { local i list=(); for i in "${INDEXES[@]}"; do list+=("$(unit_name "$i")"); done; echo "${list[*]}"; }

# joined SEP ITEM...: ITEMs joined by SEP.
joined() { local sep=$1 out="" item; shift; for item in "$@"; do out+=${out:+$sep}$item; done; printf '%s\n' "$out"; }

# elapsed: seconds since START_TIME, to the millisecond.
elapsed() { awk -v a="$START_TIME" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

# etcd_count KEY: how many keys KEY matches (0 or 1); fails when etcd does not answer.
etcd_count() {
  local body
  body=$(etcd_call /v3/kv/range "{\"key\":\"$(printf '%s' "$1" | base64 -w0)\",\"count_only\":true}") || return 1
  if [[ $body =~ \"count\":\ *\"?([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}

etcd_delete() {
  etcd_call /v3/kv/deleterange "{\"key\":\"$(printf '%s' "$1" | base64 -w0)\"}" >/dev/null
}

endpoint_key() { printf '/workers/%s/%s/%s\n' "$1" "$IP" "$2"; }

# etcd_prefix_range PREFIX [count_only]: etcd's range answer for every key under PREFIX (which ends in "/", so the
# range ends at the same prefix with "0", the next byte); fails when etcd does not answer.
etcd_prefix_range() {
  local prefix=$1 end=${1%/}0 extra=""
  [[ ${2:-} != count_only ]] || extra=',"count_only":true'
  curl -fsS --max-time 5 -X POST \
    -d "{\"key\":\"$(printf '%s' "$prefix" | base64 -w0)\",\"range_end\":\"$(printf '%s' "$end" | base64 -w0)\"$extra}" \
    "$(etcd_url /v3/kv/range)" 2>/dev/null
}

# handoffs_pending PORT: HANDOFFS_COUNT, the handoffs from this node's endpoint on PORT that the proxies still count
# (each proxy's count is one key's value); fails, the reason in HANDOFFS_WHY, when etcd does not answer or no proxy
# publishes. Not run in a subshell: it sets both.
HANDOFFS_WHY="" HANDOFFS_COUNT=0
handoffs_pending() {
  local port=$1 body value sum=0
  [[ -n $IP ]] || { HANDOFFS_WHY="this node's IP is unknown"; return 1; }
  body=$(etcd_prefix_range "${DRAIN_HANDOFFS_PREFIX}proxies/" count_only) ||
    { HANDOFFS_WHY="etcd at $DI_ETCD does not answer"; return 1; }
  if ! [[ $body =~ \"count\":\ *\"?([1-9][0-9]*) ]]; then
    HANDOFFS_WHY="no proxy publishes its handoffs under ${DRAIN_HANDOFFS_PREFIX}proxies/"
    return 1
  fi
  body=$(etcd_prefix_range "${DRAIN_HANDOFFS_PREFIX}pending/$IP/$port/") ||
    { HANDOFFS_WHY="etcd at $DI_ETCD does not answer"; return 1; }
  while read -r value; do
    value=$(printf '%s' "$value" | base64 -d 2>/dev/null) || continue
    [[ ! $value =~ ^[0-9]+$ ]] || sum=$((sum + value))
  done < <(grep -o '"value":"[^"]*"' <<<"$body" | cut -d'"' -f4)
  HANDOFFS_COUNT=$sum
}

# deregister: step 1. Registrar endpoints lose their key with the registrar's lease (di-register revokes it when
# stopped). A server that registers itself (NeuronConnector) keeps its own lease alive, so its key is deleted, and
# deleted again in step 2 should the server write it back. Fails unless etcd shows every key gone.
deregister() {
  local n ok=0 key count deadline pending
  for n in "${!INDEXES[@]}"; do
    if registrar_wanted "${ROLES[n]}"; then
      systemctl stop "$(registrar_unit "${INDEXES[n]}")" || { log "cannot stop $(registrar_unit "${INDEXES[n]}")"; ok=1; }
    elif [[ -n $IP ]]; then
      etcd_delete "$(endpoint_key "${ROLES[n]}" "${PORTS[n]}")" || log "cannot delete $(endpoint_key "${ROLES[n]}" "${PORTS[n]}") (etcd unreachable?)"
    fi
  done
  [[ -n $IP ]] || { log "this node's IP is unknown (instance metadata): cannot check its keys in etcd"; return 1; }
  deadline=$((SECONDS + DRAIN_DEREGISTER_SECONDS))
  while true; do
    pending=()
    for n in "${!INDEXES[@]}"; do
      key=$(endpoint_key "${ROLES[n]}" "${PORTS[n]}")
      count=$(etcd_count "$key") || { pending+=("$key (etcd at $DI_ETCD unreachable)"); continue; }
      ((count == 0)) || pending+=("$key")
    done
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      log "step 1 (deregister): still in etcd after ${DRAIN_DEREGISTER_SECONDS}s: ${pending[*]}"
      return 1
    fi
    sleep "$DRAIN_POLL_SECONDS"
  done
  log "step 1 (deregister): $(units) no longer in etcd; the proxy stops picking them"
  return "$ok"
}

# keep_deregistered: a self-registering server that wrote its key back loses it again.
keep_deregistered() {
  local n key count
  [[ -n $IP ]] || return 0
  for n in "${!INDEXES[@]}"; do
    registrar_wanted "${ROLES[n]}" && continue
    key=$(endpoint_key "${ROLES[n]}" "${PORTS[n]}")
    if count=$(etcd_count "$key") && ((count > 0)); then
      log "$key was written back; deleting it again"
      etcd_delete "$key" || true
    fi
  done
}

# endpoint_busy N: true while endpoint N is not idle, the reason in WHY; false with WHY "idle" when its counters read
# zero, with WHY empty when nothing listens or its counters cannot be read. KV_IDLE_SINCE[N] is when it first showed no
# request; a wait for held KV blocks ends engine_kv_hold_seconds after that, when the server frees them itself.
# UNOBSERVED lists endpoints whose in-flight requests cannot be seen (no vLLM metrics on /metrics).
declare -A KV_IDLE_SINCE=() UNOBSERVED=() HANDOFFS_SEEN=() HANDOFFS_FALLBACK=()
WHY=""
endpoint_busy() {
  local n=$1 body status=0 running waiting usage hold
  WHY=""
  body=$(vllm_metrics "${PORTS[n]}") || status=$?
  ((status != 7)) || return 1 # nothing listens: no request can be in flight
  if ((status)) || ! running=$(metric_sum vllm:num_requests_running <<<"$body") ||
    ! waiting=$(metric_sum vllm:num_requests_waiting <<<"$body"); then
    UNOBSERVED[$n]=1
    return 1
  fi
  if awk -v r="$running" -v w="$waiting" 'BEGIN { exit !(r + w > 0) }'; then
    WHY="$running running, $waiting waiting"
    unset "KV_IDLE_SINCE[$n]"
    return 0
  fi
  WHY="idle"
  hold=$(engine_kv_hold_seconds "${ROLES[n]}")
  ((hold > 0)) || return 1
  # The proxies know which handoffs from this endpoint no decode has started on: when they can say, that decides.
  if handoffs_pending "${PORTS[n]}"; then
    if ((HANDOFFS_COUNT > 0)); then
      WHY="$HANDOFFS_COUNT KV handoffs pending at the proxies"
      return 0
    fi
    [[ -n ${HANDOFFS_SEEN[$n]:-} ]] || log "$(unit_name "${INDEXES[n]}"): the proxies count no KV handoff pending"
    HANDOFFS_SEEN[$n]=1
    return 1
  fi
  if [[ -z ${HANDOFFS_FALLBACK[$n]:-} ]]; then
    log "$(unit_name "${INDEXES[n]}"): cannot ask the proxies for pending KV handoffs ($HANDOFFS_WHY); waiting for its KV cache usage to reach zero instead (at most ${hold}s)"
    HANDOFFS_FALLBACK[$n]=1
  fi
  [[ -n ${KV_IDLE_SINCE[$n]:-} ]] || KV_IDLE_SINCE[$n]=$SECONDS
  if ((SECONDS - KV_IDLE_SINCE[$n] >= hold)); then
    log "$(unit_name "${INDEXES[n]}"): KV blocks still held after ${hold}s; the server frees them itself now"
    return 1
  fi
  if ! usage=$(metric_sum vllm:kv_cache_usage_perc <<<"$body" || metric_sum vllm:gpu_cache_usage_perc <<<"$body"); then
    WHY="no KV cache usage metric: holding up to ${hold}s for peers to read its KV blocks"
    return 0
  fi
  awk -v u="$usage" -v idle="$DRAIN_KV_IDLE_USAGE" 'BEGIN { exit !(u > idle) }' || { WHY="idle"; return 1; }
  WHY="KV blocks held for a peer to read (cache usage $usage)"
}

# wait_idle TIMEOUT HOOK: step 2. Fails when TIMEOUT passes with requests still in flight.
wait_idle() {
  local timeout=$1 hook=$2 settle_until beat n busy
  beat=$((SECONDS + LIFECYCLE_HEARTBEAT_SECONDS))
  settle_until=$(awk -v now="$EPOCHREALTIME" -v s="$DRAIN_SETTLE_SECONDS" 'BEGIN { printf "%.6f", now + s }')
  while true; do
    busy=()
    keep_deregistered
    for n in "${!INDEXES[@]}"; do
      if endpoint_busy "$n"; then
        busy+=("$(unit_name "${INDEXES[n]}"): $WHY")
      elif [[ -n $WHY ]] && awk -v now="$EPOCHREALTIME" -v limit="$settle_until" 'BEGIN { exit !(now < limit) }'; then
        busy+=("$(unit_name "${INDEXES[n]}"): idle, settling")
      fi
    done
    ((${#busy[@]})) || break
    if ((SECONDS >= DEADLINE)); then
      log "step 2 (in-flight): still busy after ${timeout}s: ${busy[*]}"
      return 1
    fi
    if [[ -n $hook ]] && ((SECONDS >= beat)); then
      heartbeat_lifecycle "$hook"
      beat=$((SECONDS + LIFECYCLE_HEARTBEAT_SECONDS))
    fi
    sleep "$DRAIN_POLL_SECONDS"
  done
  for n in "${!UNOBSERVED[@]}"; do
    log "WARNING: $(unit_name "${INDEXES[n]}") answers /metrics on :${PORTS[n]} without vllm:num_requests_running/waiting: its in-flight requests cannot be seen"
  done
  log "step 2 (in-flight): no request running or waiting on $(units) ($(elapsed)s into the drain)"
}

# stop_servers: step 3. Fails when a server had to be killed.
stop_servers() {
  local unit deadline pending grace
  for unit in $(units); do systemctl stop --no-block "$unit"; done
  # At least the grace (TIMEOUT 0 asks for no wait at all), or what is left of TIMEOUT.
  grace=$DRAIN_STOP_GRACE_SECONDS
  ((grace <= TIMEOUT)) || grace=$TIMEOUT
  deadline=$((SECONDS + grace))
  ((deadline >= DEADLINE)) || deadline=$DEADLINE
  while true; do
    pending=()
    for unit in $(units); do
      if systemctl is-active --quiet "$unit"; then pending+=("$unit"); fi
    done
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      log "step 3 (stop): still running at the drain's timeout: ${pending[*]}; killing them"
      systemctl kill --signal=SIGKILL "${pending[@]}" || true
      return 1
    fi
    sleep "$DRAIN_POLL_SECONDS"
  done
  log "step 3 (stop): $(units) stopped"
}

main() {
  local hook="" lifecycle=0 which timeout status=0 positional=() done_steps=() failed=() completed
  while (($#)); do
    case $1 in
      --lifecycle)
        (($# >= 2)) || usage
        lifecycle=1 hook=$(tr -s , <<<"$2")
        hook=${hook#,} hook=${hook%,}
        shift
        ;;
      -*) usage ;;
      *) positional+=("$1") ;;
    esac
    shift
  done
  ((${#positional[@]} <= 2)) || usage
  which=${positional[0]:-all}
  timeout=${positional[1]:-}
  load_node_env
  timeout=${timeout:-${DI_DRAIN_TIMEOUT_SECONDS:-600}}
  [[ $timeout =~ ^[0-9]+$ ]] || usage
  TIMEOUT=$timeout
  [[ $DI_ROLE != control ]] || die "drain applies to workers; stop the control host's units with di-restart"
  load_engine
  select_endpoints "$which"
  IP=$(local_ip 2>/dev/null) || IP=""
  START_TIME=$EPOCHREALTIME
  DEADLINE=$((SECONDS + timeout))
  log "draining $(units) (timeout ${timeout}s${hook:+, then lifecycle hook $hook})"

  if deregister; then done_steps+=("deregistered"); else failed+=("1 deregister"); status=2; fi
  if wait_idle "$timeout" "$hook"; then
    done_steps+=("in-flight finished after $(elapsed)s")
  else
    failed+=("2 in-flight timed out after ${timeout}s"); ((status)) || status=3
  fi
  if stop_servers; then done_steps+=("stopped"); else failed+=("3 stop: killed"); ((status)) || status=4; fi
  if [[ -n $hook ]]; then
    local result="drained"
    ((${#failed[@]} == 0)) || result="drain partly applied: failed step $(joined ", " "${failed[@]}")"
    if completed=$(complete_lifecycle "$hook" CONTINUE "$result"); then
      done_steps+=("lifecycle $completed CONTINUE")
    else
      failed+=("4 lifecycle $hook not completed"); ((status)) || status=5
    fi
  fi
  if ((${#failed[@]})); then
    echo "drain partly applied to $(units): done: $(joined ", " "${done_steps[@]}"); failed: $(joined ", " "${failed[@]}")"
  else
    echo "drained: $(units) ($(joined ", " "${done_steps[@]}"); $(elapsed)s)"
  fi
  # di-restart starts them again itself (DRAIN_HINT=0).
  ((lifecycle)) || [[ ${DRAIN_HINT:-1} == 0 ]] || echo "start again with: /opt/di/di-restart $which"
  return "$status"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
