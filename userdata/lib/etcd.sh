#!/usr/bin/env bash
# The deployment's etcd (on the control host, DI_ETCD in node.env) through its v3 JSON gateway: health, waiting for
# it, and whether an endpoint is registered. With DI_ETCD_TLS=1 the members serve clients over HTTPS only and ask for
# a client certificate, and etcd's auth is on: a node presents the files of DI_ETCD_DIR (lib/etcd_trust.sh writes
# them) and, where it writes, a token for its etcd user. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"

ETCD_WAIT_SECONDS=${ETCD_WAIT_SECONDS:-600}
ETCD_WAIT_SLEEP=${ETCD_WAIT_SLEEP:-5}
# This node's etcd client files: ca.pem (the cluster's CA), client.pem and client-key.pem (the TLS client certificate
# --client-cert-auth asks for), user and password (etcd's auth; the gateway takes no certificate name as a user).
DI_ETCD_DIR=${DI_ETCD_DIR:-/etc/di/etcd}
ETCD_TOKEN=""
# The Common Name every member's peer certificate carries and the only one a member admits on its peer port
# (--peer-cert-allowed-cn, di-run etcd_peer_tls_args; lib/etcd_trust.sh issues the certificates).
# shellcheck disable=SC2034 # read by di-run and lib/etcd_trust.sh, which source this file
ETCD_PEER_CN=di-etcd-peer

# etcd_tls: true when the deployment's etcd speaks HTTPS with client certificates (every engine but NeuronConnector).
etcd_tls() { [[ ${DI_ETCD_TLS:-0} == 1 ]]; }

# etcd_scheme: https or http, for every client URL of the deployment's etcd.
etcd_scheme() { if etcd_tls; then echo https; else echo http; fi; }

# etcd_peer_tls: true when the members of a several-member control plane replicate over TLS with peer certificates
# (DI_ETCD_PEER_TLS, control hosts only; a single member, without DI_CONTROL_SLOTS, has no peers). Independent of
# DI_ETCD_TLS: the client port of engine neuron-connector stays plain HTTP (its NeuronConnector has no TLS option),
# its peer traffic does not.
etcd_peer_tls() { [[ ${DI_ETCD_PEER_TLS:-0} == 1 && -n ${DI_CONTROL_SLOTS:-} ]]; }

# etcd_peer_scheme: https or http, for every peer URL of the cluster.
etcd_peer_scheme() { if etcd_peer_tls; then echo https; else echo http; fi; }

# etcd_url PATH: the etcd v3 JSON gateway of this deployment.
etcd_url() { printf '%s://%s%s\n' "$(etcd_scheme)" "${DI_ETCD:?}" "$1"; }

# etcd_curl ARG...: curl to an etcd member, with this node's CA and client certificate when etcd asks for them.
etcd_curl() {
  if etcd_tls; then
    curl --cacert "$DI_ETCD_DIR/ca.pem" --cert "$DI_ETCD_DIR/client.pem" --key "$DI_ETCD_DIR/client-key.pem" "$@"
  else
    curl "$@"
  fi
}

# etcd_request PATH BODY [MAX_TIME]: POST one JSON request with the current token (if any); fails unless etcd answers
# 2xx. The token goes in a header file, never on argv.
etcd_request() {
  if [[ -n $ETCD_TOKEN ]]; then
    etcd_curl -fsS --max-time "${3:-5}" -X POST -H @<(printf 'Authorization: %s\n' "$ETCD_TOKEN") -d "$2" \
      "$(etcd_url "$1")" 2>/dev/null
  else
    etcd_curl -fsS --max-time "${3:-5}" -X POST -d "$2" "$(etcd_url "$1")" 2>/dev/null
  fi
}

# etcd_auth: true when this node holds an etcd user (DI_ETCD_DIR/user and password).
etcd_auth() { etcd_tls && [[ -s $DI_ETCD_DIR/user && -s $DI_ETCD_DIR/password ]]; }

# etcd_authenticate: a new token for this node's etcd user (POST /v3/auth/authenticate,
# https://etcd.io/docs/v3.5/dev-guide/api_grpc_gateway/#authentication). The password goes on curl's stdin.
# etcd_authenticate [USER PASSWORD_FILE]: the same for another user (the control host's root).
etcd_authenticate() {
  local body user password
  user=${1:-$(<"$DI_ETCD_DIR/user")} password=$(<"${2:-$DI_ETCD_DIR/password}")
  body=$(printf '{"name":"%s","password":"%s"}' "$user" "$password" |
    etcd_curl -fsS --max-time 5 -X POST --data-binary @- "$(etcd_url /v3/auth/authenticate)" 2>/dev/null) || return 1
  [[ $body =~ \"token\":\ *\"([^\"]+)\" ]] || return 1
  ETCD_TOKEN=${BASH_REMATCH[1]}
}

# etcd_call PATH BODY [MAX_TIME]: one gateway request as this node's etcd user. A token expires (--auth-token-ttl,
# 300 s by default), and etcd then answers 401: the call authenticates once more and is tried again.
etcd_call() {
  if etcd_auth && [[ -z $ETCD_TOKEN ]]; then etcd_authenticate || return 1; fi
  etcd_request "$@" && return 0
  etcd_auth || return 1
  ETCD_TOKEN=""
  etcd_authenticate && etcd_request "$@"
}

# etcd_healthy: true when etcd answers its health check.
etcd_healthy() {
  etcd_curl -fsS --max-time 5 "$(etcd_url /health)" 2>/dev/null | grep -q '"health": *"true"'
}

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
  body=$(etcd_call /v3/kv/range "{\"key\":\"$key\",\"count_only\":true}") || return 1
  [[ $body =~ \"count\":\ *\"?([0-9]+) ]] && ((BASH_REMATCH[1] > 0))
}
