#!/usr/bin/env bash
# Who may talk to the deployment's etcd (DI_ETCD_TLS=1): one CA made at the first control host's first boot, its
# certificates, and etcd's users and roles. Nothing of it is in the template or the repository: the first member (m0,
# or the single control host) generates the CA, the passwords and the workers' client certificate with openssl and
# stores them in two secrets the stack created empty: DI_ETCD_CA_SECRET (the CA key, root's and the proxy's passwords:
# control role only) and DI_ETCD_CLIENT_SECRET (the registrar's certificate and password: the worker role may read
# it). Every control host then issues its own member certificate.
# Peers (DI_ETCD_PEER_TLS=1, several control hosts) have a CA of their own, the peer CA, in DI_ETCD_CA_SECRET only:
# it signs the members' peer certificates and nothing else, so no client certificate (a worker's, a proxy's) chains
# to what a member's peer port trusts, whatever names it carries. A control host writes the peer CA's key to its disk
# only to issue its own peer certificate and removes it then. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=etcd.sh
. "${BASH_SOURCE[0]%/*}/etcd.sh"
# shellcheck source=imds.sh
. "${BASH_SOURCE[0]%/*}/imds.sh"

ETCD_TRUST_WAIT_SECONDS=${ETCD_TRUST_WAIT_SECONDS:-900}
ETCD_TRUST_SLEEP=${ETCD_TRUST_SLEEP:-5}
# Certificates are issued once per boot (members) or once per deployment (the CA, the registrar's); ten years, so
# none expires under a running deployment. Replacing them: docs/security.md.
ETCD_CERT_DAYS=${ETCD_CERT_DAYS:-3650}
ETCD_REGISTRAR_USER=di-register
ETCD_PROXY_USER=di-proxy
# The registry prefix and its range end (the prefix with its last byte + 1), base64 for the gateway: /workers/ and
# /workers0 (https://etcd.io/docs/v3.5/op-guide/authentication/rbac/#granting-and-revoking-permissions).
ETCD_PREFIX_B64=L3dvcmtlcnMv
ETCD_PREFIX_END_B64=L3dvcmtlcnMw
# Where the proxies publish their pending KV handoffs for the workers' drain (diproxy/handoff_registry.py, ops/drain.sh):
# /handoffs/ and /handoffs0.
ETCD_HANDOFFS_B64=L2hhbmRvZmZzLw==
ETCD_HANDOFFS_END_B64=L2hhbmRvZmZzMA==

# trust_json SECRET_ID: the secret's string when it holds what the first member wrote (JSON with FIELD), else fails.
trust_json() {
  local value
  value=$(aws secretsmanager get-secret-value --region "$DI_REGION" --secret-id "$1" \
    --query SecretString --output text 2>/dev/null) || return 1
  python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if isinstance(d, dict) and d.get(sys.argv[1]) else 1)' "$2" <<<"$value" 2>/dev/null || return 1
  printf '%s\n' "$value"
}

# write_fields JSON FIELD=FILE...: each FIELD of JSON into DI_ETCD_DIR/FILE, readable by root only.
write_fields() {
  local json=$1
  shift
  install -d -m 0700 "$DI_ETCD_DIR"
  (umask 077 && python3 -c 'import json, pathlib, sys
d = json.loads(sys.stdin.read())
for pair in sys.argv[2:]:
    field, name = pair.split("=", 1)
    pathlib.Path(sys.argv[1], name).write_text(d[field])' "$DI_ETCD_DIR" "$@" <<<"$json")
}

# put_secret SECRET_ID FIELD=FILE...: the files as one JSON object into the secret (through a file, never argv).
put_secret() {
  local id=$1 doc
  shift
  doc=$(mktemp) && chmod 0600 "$doc"
  python3 -c 'import json, pathlib, sys
print(json.dumps({p.split("=", 1)[0]: pathlib.Path(p.split("=", 1)[1]).read_text() for p in sys.argv[1:]}))' "$@" \
    >"$doc" || { rm -f "$doc"; return 1; }
  aws secretsmanager put-secret-value --region "$DI_REGION" --secret-id "$id" --secret-string "file://$doc" \
    >/dev/null
  local status=$?
  rm -f "$doc"
  return "$status"
}

# make_ca DIR NAME COMMON_NAME: DIR/NAME.pem and DIR/NAME-key.pem, a self-signed P-256 CA that signs end certificates
# only (pathlen:0).
make_ca() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1/$2-key.pem" 2>/dev/null &&
    openssl req -x509 -new -key "$1/$2-key.pem" -subj "/CN=$3" -days "$ETCD_CERT_DAYS" -sha256 \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$1/$2.pem" 2>/dev/null
}

# issue_cert DIR NAME SUBJECT SANS [CA]: DIR/NAME.pem and DIR/NAME-key.pem (P-256), signed by DIR/CA.pem and
# DIR/CA-key.pem (CA: ca, the client CA, unless named), for TLS server and client use. A client certificate carries no Common Name: with --client-cert-auth
# and auth on, etcd's gateway answers 400 to any request whose certificate has one ("CommonName of client sending a
# request against gateway will be ignored", etcd server/embed/serve.go accessController.ServeHTTP, release-3.5; seen
# with etcd 3.5 here, tests/userdata/test_etcd_trust.py), so users are named by password instead.
issue_cert() {
  local dir=$1 name=$2 subject=$3 sans=$4 ca=${5:-ca}
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$name-key.pem" 2>/dev/null || return 1
  openssl req -new -key "$dir/$name-key.pem" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null || return 1
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$ETCD_CERT_DAYS" -sha256 -out "$dir/$name.pem" \
    -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth,clientAuth" ${sans:+"subjectAltName=$sans"}) 2>/dev/null || return 1
  rm -f "$dir/$name.csr"
}

# etcd_trust_create: the CAs, the passwords and, where clients use TLS, the registrar's certificate, into the secrets
# (the workers' first: the CA secret holding its fields is what tells the other control hosts that the trust exists).
etcd_trust_create() {
  local dir
  dir=$(mktemp -d) && chmod 0700 "$dir"
  log "creating the etcd CAs and credentials of deployment $DI_DEPLOYMENT"
  if make_ca "$dir" ca "DiStack etcd CA $DI_DEPLOYMENT" &&
    make_ca "$dir" peer-ca "DiStack etcd peer CA $DI_DEPLOYMENT" &&
    openssl rand -hex 32 >"$dir/root-password" && openssl rand -hex 32 >"$dir/proxy-password" &&
    openssl rand -hex 32 >"$dir/registrar-password" && printf '%s' "$ETCD_REGISTRAR_USER" >"$dir/user" &&
    { ! etcd_tls || {
      issue_cert "$dir" client "/O=DiStack/OU=$ETCD_REGISTRAR_USER" "" &&
        put_secret "$DI_ETCD_CLIENT_SECRET" ca_cert="$dir/ca.pem" cert="$dir/client.pem" key="$dir/client-key.pem" \
          user="$dir/user" password="$dir/registrar-password"
    }; } &&
    put_secret "$DI_ETCD_CA_SECRET" ca_cert="$dir/ca.pem" ca_key="$dir/ca-key.pem" \
      peer_ca_cert="$dir/peer-ca.pem" peer_ca_key="$dir/peer-ca-key.pem" \
      root_password="$dir/root-password" proxy_password="$dir/proxy-password" \
      registrar_password="$dir/registrar-password"; then
    rm -rf "$dir"
    return 0
  fi
  rm -rf "$dir"
  return 1
}

# etcd_trust_add_peer_ca JSON: a peer CA added to a CA secret written before members had one (JSON: its value), every
# other field kept as it is: the client CA, the certificates it signed and the passwords stay valid.
etcd_trust_add_peer_ca() {
  local dir fields=()
  dir=$(mktemp -d) && chmod 0700 "$dir"
  log "adding a peer CA to the etcd trust of deployment $DI_DEPLOYMENT"
  # Each field into a file of its own and FIELD=FILE into the list put_secret takes (no secret on argv).
  if python3 -c 'import json, pathlib, sys
d = json.load(sys.stdin)
for k, v in d.items():
    pathlib.Path(sys.argv[1], "field-" + k).write_text(v)
    print(f"{k}={sys.argv[1]}/field-{k}")' "$dir" <<<"$1" >"$dir/fields" && mapfile -t fields <"$dir/fields" &&
    make_ca "$dir" peer-ca "DiStack etcd peer CA $DI_DEPLOYMENT" &&
    put_secret "$DI_ETCD_CA_SECRET" "${fields[@]}" peer_ca_cert="$dir/peer-ca.pem" peer_ca_key="$dir/peer-ca-key.pem"
  then
    rm -rf "$dir"
    return 0
  fi
  rm -rf "$dir"
  return 1
}

# etcd_trust_creator: the host that creates the trust when none exists: member m0, or the single control host.
etcd_trust_creator() { [[ -z ${DI_CONTROL_SLOTS:-} || ${DI_ETCD_MEMBER:-} == m0 ]]; }

# san_of NAME: NAME as a subjectAltName entry (an IPv4 literal or a DNS name).
san_of() { if [[ $1 =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then echo "IP:$1"; else echo "DNS:$1"; fi; }

# etcd_control_trust: this control host's CA copy, passwords and member certificate, valid for its own address,
# loopback (its proxy) and DI_ETCD_SERVER_NAME (what workers dial: the load balancer's name, or the one host's
# address), with DI_ETCD_TLS=1; its peer certificate with DI_ETCD_PEER_TLS=1. Creates the trust first when this host
# is m0 and the secret is still empty (or adds the peer CA to a trust made without one); the others wait for it.
etcd_control_trust() {
  etcd_tls || etcd_peer_tls || return 0
  local json old need=ca_key deadline=$((SECONDS + ETCD_TRUST_WAIT_SECONDS))
  if etcd_peer_tls; then need=peer_ca_key; fi
  until json=$(trust_json "$DI_ETCD_CA_SECRET" "$need"); do
    if etcd_trust_creator; then
      # Read back what was written: the secret, not this host's copy, is what every other host uses.
      if old=$(trust_json "$DI_ETCD_CA_SECRET" ca_key); then
        etcd_trust_add_peer_ca "$old" && json=$(trust_json "$DI_ETCD_CA_SECRET" "$need") && break
      else
        etcd_trust_create && json=$(trust_json "$DI_ETCD_CA_SECRET" "$need") && break
      fi
      log "could not create the etcd CA (openssl, or PutSecretValue on $DI_ETCD_CA_SECRET)"
    else
      log "waiting for member m0 to create the etcd trust (field $need) in $DI_ETCD_CA_SECRET"
    fi
    ((SECONDS < deadline)) || { log "no etcd CA in $DI_ETCD_CA_SECRET after ${ETCD_TRUST_WAIT_SECONDS}s"; return 1; }
    sleep "$ETCD_TRUST_SLEEP"
  done
  if etcd_tls; then
    write_fields "$json" ca_cert=ca.pem ca_key=ca-key.pem root_password=root-password \
      proxy_password=proxy-password registrar_password=registrar-password || return 1
    issue_cert "$DI_ETCD_DIR" server "/CN=etcd ${DI_ETCD_MEMBER:-default}" \
      "$(san_of "${DI_CONTROL_ADDRESS:?}"),IP:127.0.0.1,DNS:localhost,$(san_of "${DI_ETCD_SERVER_NAME:?}")" || return 1
    # The host's own clients (the proxy, health checks, etcdctl, di-status): a certificate without a Common Name.
    issue_cert "$DI_ETCD_DIR" client "/O=DiStack/OU=control" "" || return 1
    log "etcd member certificate issued for $DI_CONTROL_ADDRESS and $DI_ETCD_SERVER_NAME"
  fi
  if etcd_peer_tls; then etcd_peer_cert "$json" || return 1; fi
}

# etcd_peer_cert JSON: this member's peer certificate, signed by the peer CA of JSON (the CA secret's value), then the
# peer CA's key removed from this disk. Its addresses, no DNS name: a member dials a peer by its fixed address, which
# the certificate must hold; a member accepting a peer checks that the connection comes from an address in the
# peer's certificate, and tries a DNS name only by looking it up, which a name such as m1 never resolves
# (etcd client/pkg/transport/listener_tls.go checkCertSAN, release-3.5; https://etcd.io/docs/v3.5/op-guide/security/
# #notes-for-tls-authentication). A host dials from its primary address, not the fixed one on its second interface:
# both are in the certificate. The member's name is its Organizational Unit; the Common Name is the one every peer
# shares (ETCD_PEER_CN, --peer-cert-allowed-cn).
etcd_peer_cert() {
  local primary sans
  primary=$(local_ip) ||
    { log "cannot read this host's primary address (instance metadata) for its peer certificate"; return 1; }
  sans=$(san_of "${DI_CONTROL_ADDRESS:?}")
  [[ $primary == "$DI_CONTROL_ADDRESS" ]] || sans+=",$(san_of "$primary")"
  write_fields "$1" peer_ca_cert=peer-ca.pem peer_ca_key=peer-ca-key.pem || return 1
  issue_cert "$DI_ETCD_DIR" peer "/O=DiStack/OU=${DI_ETCD_MEMBER:?}/CN=$ETCD_PEER_CN" "$sans" peer-ca
  local status=$?
  rm -f "$DI_ETCD_DIR/peer-ca-key.pem"
  ((status == 0)) || return 1
  log "etcd peer certificate issued for member $DI_ETCD_MEMBER ($sans)"
}

# etcd_worker_trust: the registrar's CA, certificate and credentials on a worker, once a control host created them.
etcd_worker_trust() {
  etcd_tls || return 0
  local json deadline=$((SECONDS + ETCD_TRUST_WAIT_SECONDS))
  until json=$(trust_json "$DI_ETCD_CLIENT_SECRET" key); do
    ((SECONDS < deadline)) || { log "no etcd credentials in $DI_ETCD_CLIENT_SECRET after ${ETCD_TRUST_WAIT_SECONDS}s"; return 1; }
    log "waiting for the control plane to create the etcd credentials in $DI_ETCD_CLIENT_SECRET"
    sleep "$ETCD_TRUST_SLEEP"
  done
  write_fields "$json" ca_cert=ca.pem cert=client.pem key=client-key.pem user=user password=password
}

# etcd_admin PATH BODY: one auth call as root (body on stdin: it may hold a password). Passes when etcd did it or
# it was done before (a user or role that exists; a second host runs the same set-up).
etcd_admin() {
  local reply
  reply=$(if [[ -n $ETCD_TOKEN ]]; then
    etcd_curl -sS --max-time 10 -X POST -H @<(printf 'Authorization: %s\n' "$ETCD_TOKEN") --data-binary @- \
      "$(etcd_url "$1")" <<<"$2"
  else
    etcd_curl -sS --max-time 10 -X POST --data-binary @- "$(etcd_url "$1")" <<<"$2"
  fi) || { log "etcd $1: no answer"; return 1; }
  [[ $reply != *'"error"'* || $reply == *"already exists"* ]] && return 0
  log "etcd $1: $reply"
  return 1
}

# etcd_auth_setup: users and roles, then auth on (https://etcd.io/docs/v3.5/op-guide/authentication/rbac/): root;
# di-register (the workers' registrar) may read and write /workers/ and read /handoffs/ (its drain); di-proxy may only
# read /workers/ and may write /handoffs/, where it publishes its pending KV handoffs. Idempotent, run
# by every control host once etcd serves; passwords are set again from the secret each time.
etcd_auth_setup() {
  etcd_tls || return 0
  local root proxy registrar user
  root=$(<"$DI_ETCD_DIR/root-password") proxy=$(<"$DI_ETCD_DIR/proxy-password")
  registrar=$(<"$DI_ETCD_DIR/registrar-password")
  ETCD_TOKEN=""
  # Fails while auth is still off ("authentication is not enabled"): the calls below then need no token.
  etcd_authenticate root "$DI_ETCD_DIR/root-password" || ETCD_TOKEN=""
  etcd_admin /v3/auth/user/add "{\"name\":\"root\",\"password\":\"$root\"}" &&
    etcd_admin /v3/auth/role/add '{"name":"root"}' &&
    etcd_admin /v3/auth/user/grant '{"user":"root","role":"root"}' &&
    etcd_admin /v3/auth/role/add "{\"name\":\"$ETCD_REGISTRAR_USER\"}" &&
    etcd_admin /v3/auth/role/grant "{\"name\":\"$ETCD_REGISTRAR_USER\",\"perm\":{\"permType\":\"READWRITE\",\
\"key\":\"$ETCD_PREFIX_B64\",\"range_end\":\"$ETCD_PREFIX_END_B64\"}}" &&
    etcd_admin /v3/auth/role/add "{\"name\":\"$ETCD_PROXY_USER\"}" &&
    etcd_admin /v3/auth/role/grant "{\"name\":\"$ETCD_PROXY_USER\",\"perm\":{\"permType\":\"READ\",\
\"key\":\"$ETCD_PREFIX_B64\",\"range_end\":\"$ETCD_PREFIX_END_B64\"}}" &&
    etcd_admin /v3/auth/role/grant "{\"name\":\"$ETCD_PROXY_USER\",\"perm\":{\"permType\":\"READWRITE\",\
\"key\":\"$ETCD_HANDOFFS_B64\",\"range_end\":\"$ETCD_HANDOFFS_END_B64\"}}" &&
    etcd_admin /v3/auth/role/grant "{\"name\":\"$ETCD_REGISTRAR_USER\",\"perm\":{\"permType\":\"READ\",\
\"key\":\"$ETCD_HANDOFFS_B64\",\"range_end\":\"$ETCD_HANDOFFS_END_B64\"}}" || return 1
  for user in "$ETCD_REGISTRAR_USER:$registrar" "$ETCD_PROXY_USER:$proxy"; do
    etcd_admin /v3/auth/user/add "{\"name\":\"${user%%:*}\",\"password\":\"${user#*:}\"}" &&
      etcd_admin /v3/auth/user/changepw "{\"name\":\"${user%%:*}\",\"password\":\"${user#*:}\"}" &&
      etcd_admin /v3/auth/user/grant "{\"user\":\"${user%%:*}\",\"role\":\"${user%%:*}\"}" || return 1
  done
  etcd_admin /v3/auth/enable '{}' || return 1
  ETCD_TOKEN=""
  log "etcd auth on: $ETCD_REGISTRAR_USER writes /workers/, $ETCD_PROXY_USER reads it and writes /handoffs/"
}
