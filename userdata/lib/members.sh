#!/usr/bin/env bash
# Control-plane membership: which etcd member this control host is, and how its member (re)joins the cluster.
# DI_CONTROL_SLOTS (node.env) lists every member's "interface,volume,address" in member order; a new host claims the
# first slot whose interface it can attach (control.sh claim_member; the old holder's attachment ends when it
# terminates), and with it that member's name (m0, m1, ...), address and retained etcd volume. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=etcd.sh
. "${BASH_SOURCE[0]%/*}/etcd.sh"

DI_MEMBER_ENV=${DI_MEMBER_ENV:-/etc/di/member.env}
ETCD_JOIN_TIMEOUT=${ETCD_JOIN_TIMEOUT:-10s}
# Right after a removal etcd refuses a new member ("unhealthy cluster") until the remaining members have been connected
# for its health interval (5 s); the add is retried this many times, ETCD_ADD_SLEEP seconds apart.
ETCD_ADD_ATTEMPTS=${ETCD_ADD_ATTEMPTS:-30}
ETCD_ADD_SLEEP=${ETCD_ADD_SLEEP:-2}
# A member restarting from its data asks the others for the cluster's record of it this many times (ETCD_ADD_SLEEP
# apart) before it starts with what it has: they may be electing a leader, or all be starting at once.
ETCD_LIST_ATTEMPTS=${ETCD_LIST_ATTEMPTS:-5}

# slots: one "index eni volume address" line per member.
slots() {
  local i=0 slot eni volume address
  for slot in ${DI_CONTROL_SLOTS:-}; do
    IFS=, read -r eni volume address <<<"$slot"
    printf '%s %s %s %s\n' "$i" "$eni" "$volume" "$address"
    i=$((i + 1))
  done
}

# use_slot INDEX ENI VOLUME ADDRESS: make this host that member, for this boot and for every later script.
use_slot() {
  DI_ETCD_MEMBER=m$1 DI_CONTROL_ENI=$2 DI_ETCD_VOLUME=$3 DI_CONTROL_ADDRESS=$4
  export DI_ETCD_MEMBER DI_CONTROL_ENI DI_ETCD_VOLUME DI_CONTROL_ADDRESS
  install -d -m 0755 "${DI_MEMBER_ENV%/*}"
  printf '%s\n' "DI_ETCD_MEMBER=$DI_ETCD_MEMBER" "DI_CONTROL_ENI=$2" "DI_ETCD_VOLUME=$3" "DI_CONTROL_ADDRESS=$4" \
    >"$DI_MEMBER_ENV"
}

# load_member_env: the member this host claimed at boot (nothing on a single control host).
load_member_env() {
  [[ -f $DI_MEMBER_ENV ]] || return 0
  set -a
  # shellcheck source=/dev/null
  . "$DI_MEMBER_ENV"
  set +a
}

# etcd_peer_url [ADDRESS]: a member's peer URL (https with DI_ETCD_PEER_TLS=1: lib/etcd.sh etcd_peer_scheme).
etcd_peer_url() { printf '%s://%s:%s\n' "$(etcd_peer_scheme)" "${1:-$DI_CONTROL_ADDRESS}" "${DI_ETCD_PEER_PORT:?}"; }

# etcd_initial_cluster: m0=https://A0:PEER,m1=...: every member by its stable name and address.
etcd_initial_cluster() {
  local index address out=()
  while read -r index _ _ address; do out+=("m$index=$(etcd_peer_url "$address")"); done < <(slots)
  (IFS=,; printf '%s\n' "${out[*]}")
}

# etcd_other_endpoints: the other members' client URLs, comma-separated.
etcd_other_endpoints() {
  local index address out=()
  while read -r index _ _ address; do
    [[ m$index == "$DI_ETCD_MEMBER" ]] || out+=("$(etcd_scheme)://$address:${DI_ETCD##*:}")
  done < <(slots)
  (IFS=,; printf '%s\n' "${out[*]}")
}

# di_etcdctl ARG...: etcdctl from the pinned etcd image (DI_ETCDCTL names a local binary instead, for tests). With
# DI_ETCD_TLS=1 it presents the host's member certificate and acts as root (membership changes need root once auth
# is on); root's password reaches etcdctl through its environment (ETCDCTL_USER), never argv.
di_etcdctl() {
  local tls=() env=(ETCDCTL_API=3)
  if etcd_tls; then
    tls=("--cacert=$DI_ETCD_DIR/ca.pem" "--cert=$DI_ETCD_DIR/client.pem" "--key=$DI_ETCD_DIR/client-key.pem")
    [[ -s $DI_ETCD_DIR/root-password ]] && env+=("ETCDCTL_USER=root:$(<"$DI_ETCD_DIR/root-password")")
  fi
  if [[ -n ${DI_ETCDCTL:-} ]]; then
    env "${env[@]}" "$DI_ETCDCTL" --dial-timeout="$ETCD_JOIN_TIMEOUT" --command-timeout="$ETCD_JOIN_TIMEOUT" \
      "${tls[@]}" "$@"
  else
    local passed=() pair
    for pair in "${env[@]}"; do passed+=(-e "${pair%%=*}"); done
    env "${env[@]}" docker run --rm --network host "${passed[@]}" ${tls[@]:+-v "$DI_ETCD_DIR:$DI_ETCD_DIR:ro"} \
      "${DI_ETCD_IMAGE:?}" etcdctl --dial-timeout="$ETCD_JOIN_TIMEOUT" --command-timeout="$ETCD_JOIN_TIMEOUT" \
      "${tls[@]}" "$@"
  fi
}

# etcd_add_member ENDPOINTS: add this member by name and peer URL, retrying while the cluster refuses (lib/log.sh
# retry, with the membership's own attempts and pause).
etcd_add_member() {
  RETRY_ATTEMPTS=$ETCD_ADD_ATTEMPTS RETRY_SLEEP=$ETCD_ADD_SLEEP retry \
    di_etcdctl --endpoints="$1" member add "$DI_ETCD_MEMBER" --peer-urls="$(etcd_peer_url)" >/dev/null 2>&1
}

# etcd_cluster_state DATA_DIR: print "new" or "existing" for --initial-cluster-state, after making room for this
# member when it must rejoin. A member with data restarts from it (etcd then ignores the initial-cluster flags), so
# a replaced host on the retained volume rejoins as itself. A member without data (a new or wiped volume) joins a
# cluster the others still hold: its old registration is removed and added again, the documented way to replace a
# member (https://etcd.io/docs/v3.5/op-guide/runtime-configuration/#replace-a-failed-machine). When no other member
# answers, the cluster is being created: every member starts "new" with the same initial cluster and they elect a
# leader once a majority is up (https://etcd.io/docs/v3.5/op-guide/clustering/#static).
etcd_cluster_state() {
  local data=$1 others list id
  if [[ -d $data/member ]]; then
    etcd_update_peer_url || return 1
    echo existing
    return 0
  fi
  others=$(etcd_other_endpoints)
  if [[ -z $others ]] || ! list=$(di_etcdctl --endpoints="$others" member list 2>/dev/null); then
    echo new
    return 0
  fi
  # member list: "ID, STATUS, NAME, PEER ADDRS, CLIENT ADDRS, IS LEARNER"; an added but never started member has no
  # name yet, so it is found by its peer URL too.
  id=$(awk -F', ' -v name="$DI_ETCD_MEMBER" -v peer="$(etcd_peer_url)" \
    '$3 == name || $4 == peer { print $1; exit }' <<<"$list")
  if [[ -n $id ]]; then
    log "etcd member $DI_ETCD_MEMBER ($id) has no data here: removing it from the cluster to add it again"
    di_etcdctl --endpoints="$others" member remove "$id" >/dev/null || { log "cannot remove member $id"; return 1; }
  fi
  etcd_add_member "$others" || { log "cannot add member $DI_ETCD_MEMBER"; return 1; }
  log "etcd member $DI_ETCD_MEMBER added to the running cluster; it starts empty and catches up from the leader"
  echo existing
}

# etcd_update_peer_url: before a member restarts from its data, make the cluster's record of its peer URL the one it
# is about to serve: a member that served http peers and now has DI_ETCD_PEER_TLS=1 (a deployment made before peers
# spoke TLS) is updated to https first. etcd ignores --initial-advertise-peer-urls once a member has data; its peer
# URLs change only by `member update`, then a restart of that member
# (https://etcd.io/docs/v3.5/op-guide/runtime-configuration/#update-advertise-peer-urls). One member at a time, the
# cluster keeps its quorum through the mixed state: the members still on http cannot dial an https member, but it
# dials them, and raft traffic flows both ways over those connections (tests/userdata/test_etcd_cluster.py runs the
# whole change with the real etcd). Nothing to do when the record matches, or when no other member answers (the
# whole cluster restarting: each keeps the URL it has).
etcd_update_peer_url() {
  local others list id registered
  others=$(etcd_other_endpoints)
  [[ -n $others ]] || return 0
  # The list is linearizable: while the others elect a leader (this member led) etcd answers "leader changed".
  list=$(RETRY_ATTEMPTS=$ETCD_LIST_ATTEMPTS RETRY_SLEEP=$ETCD_ADD_SLEEP retry \
    di_etcdctl --endpoints="$others" member list 2>/dev/null) || return 0
  read -r id registered < <(awk -F', ' -v name="$DI_ETCD_MEMBER" '$3 == name { print $1, $4; exit }' <<<"$list") || true
  [[ -n ${id:-} && $registered != "$(etcd_peer_url)" ]] || return 0
  log "etcd member $DI_ETCD_MEMBER ($id): peer URL $registered in the cluster, now $(etcd_peer_url): updating it"
  di_etcdctl --endpoints="$others" member update "$id" --peer-urls="$(etcd_peer_url)" >/dev/null ||
    { log "cannot update the peer URL of member $id (etcdctl member update)"; return 1; }
}
