#!/usr/bin/env bash
# Control host bootstrap (Amazon Linux 2023): take over the fixed interface and the etcd volume, then run
# etcd and the proxy under systemd. Sourced by di-bootstrap; runnable alone for a re-run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/lib
DI_LIB_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/units.sh"
. "$DI_LIB_DIR/etcd.sh"
. "$DI_LIB_DIR/etcd_trust.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/report.sh"
. "$DI_LIB_DIR/metrics.sh"
. "$DI_LIB_DIR/members.sh"
. "$DI_LIB_DIR/modules.sh"

DI_ETCD_MOUNT=${DI_ETCD_MOUNT:-/var/lib/di-etcd}
DI_DISK_BY_ID=${DI_DISK_BY_ID:-/dev/disk/by-id}
DI_ETCD_DEVICE_NAME=${DI_ETCD_DEVICE_NAME:-/dev/sdf}
ATTACH_WAIT_SECONDS=${ATTACH_WAIT_SECONDS:-300}
ATTACH_WAIT_SLEEP=${ATTACH_WAIT_SLEEP:-5}
DI_PROXY_ENV=${DI_PROXY_ENV:-/etc/di/proxy.env}
DI_PROXY_SRC=${DI_PROXY_SRC:-$DI_HOME/proxy-src}
# The proxy package's own installer (venv + unit); replaceable so tests need no Python venv.
DI_PROXY_INSTALLER=${DI_PROXY_INSTALLER:-$DI_PROXY_SRC/diproxy/deploy/install.sh}
# AL2023's default python3 is 3.9; the proxy needs 3.11.
DI_PROXY_PYTHON=${DI_PROXY_PYTHON:-python3.11}
# Start-up takes about a second; the margin covers a slow first import and a Secrets Manager retry.
PROXY_WAIT_SECONDS=${PROXY_WAIT_SECONDS:-60}
PROXY_WAIT_SLEEP=${PROXY_WAIT_SLEEP:-1}

install_docker() {
  dnf_tool docker || fail "cannot install Docker with dnf"
  systemctl enable --now docker || fail "Docker does not start"
}

# wait_until SECONDS INTERVAL DESCRIPTION CMD...: poll CMD every INTERVAL seconds until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)) interval=$2 what=$3
  shift 3
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    log "waiting: $what"
    sleep "$interval"
  done
}

eni_state() {
  aws ec2 describe-network-interfaces --region "$DI_REGION" --network-interface-ids "$DI_CONTROL_ENI" \
    --query 'NetworkInterfaces[0].Attachment.[InstanceId,Status]' --output text
}

eni_attached_here() { [[ $(eni_state 2>/dev/null) == "$1"$'\t'attached ]]; }

eni_try_attach() {
  eni_attached_here "$1" && return 0
  # The previous host's attachment ends only once it has terminated; until then attaching fails.
  aws ec2 attach-network-interface --region "$DI_REGION" --network-interface-id "$DI_CONTROL_ENI" \
    --instance-id "$1" --device-index 1 >/dev/null 2>&1 || true
  eni_attached_here "$1"
}

address_present() { ip -o -4 addr show | grep -q "inet ${DI_CONTROL_ADDRESS}/"; }

attach_interface() {
  local id
  id=$(instance_id) || fail "cannot read the instance ID from instance metadata"
  wait_until "$ATTACH_WAIT_SECONDS" "$ATTACH_WAIT_SLEEP" "attach $DI_CONTROL_ENI" eni_try_attach "$id" ||
    fail "cannot attach network interface $DI_CONTROL_ENI (still attached to an old control host?)"
  # amazon-ec2-net-utils configures a hot-plugged interface by itself on Amazon Linux 2023.
  wait_until "$ATTACH_WAIT_SECONDS" "$ATTACH_WAIT_SLEEP" "address $DI_CONTROL_ADDRESS up" address_present ||
    fail "interface $DI_CONTROL_ENI attached but $DI_CONTROL_ADDRESS never came up"
  log "serving address $DI_CONTROL_ADDRESS on $DI_CONTROL_ENI"
}

# try_claim INSTANCE_ID: claim the slot whose interface is attached here, else attach the first free one.
try_claim() {
  local index eni volume address
  while read -r index eni volume address; do
    DI_CONTROL_ENI=$eni
    if eni_attached_here "$1"; then use_slot "$index" "$eni" "$volume" "$address"; return 0; fi
  done < <(slots)
  while read -r index eni volume address; do
    DI_CONTROL_ENI=$eni
    if eni_try_attach "$1"; then use_slot "$index" "$eni" "$volume" "$address"; return 0; fi
  done < <(slots)
  return 1
}

# claim_member: with DI_CONTROL_SLOTS, become one member (its interface attached); without, nothing to do.
claim_member() {
  [[ -n ${DI_CONTROL_SLOTS:-} ]] || return 0
  local id
  id=$(instance_id) || fail "cannot read the instance ID from instance metadata"
  wait_until "$ATTACH_WAIT_SECONDS" "$ATTACH_WAIT_SLEEP" "a free control-plane member slot" try_claim "$id" ||
    fail "no control-plane member slot is free (every member interface is attached to another host)"
  log "this host is etcd member $DI_ETCD_MEMBER at $DI_CONTROL_ADDRESS ($DI_CONTROL_ENI, $DI_ETCD_VOLUME)"
}

volume_state() {
  aws ec2 describe-volumes --region "$DI_REGION" --volume-ids "$DI_ETCD_VOLUME" \
    --query 'Volumes[0].Attachments[0].[InstanceId,State]' --output text
}

volume_attached_here() { [[ $(volume_state 2>/dev/null) == "$1"$'\t'attached ]]; }

volume_try_attach() {
  volume_attached_here "$1" && return 0
  aws ec2 attach-volume --region "$DI_REGION" --volume-id "$DI_ETCD_VOLUME" --instance-id "$1" \
    --device "$DI_ETCD_DEVICE_NAME" >/dev/null 2>&1 || true
  volume_attached_here "$1"
}

# volume_device: on Nitro instances an EBS volume shows up as NVMe; its by-id link carries the volume ID.
# https://docs.aws.amazon.com/ebs/latest/userguide/identify-nvme-ebs-device.html
volume_device() {
  local link="$DI_DISK_BY_ID/nvme-Amazon_Elastic_Block_Store_${DI_ETCD_VOLUME//-/}"
  [[ -e $link ]] && { printf '%s\n' "$link"; return 0; }
  [[ -b $DI_ETCD_DEVICE_NAME ]] && { printf '%s\n' "$DI_ETCD_DEVICE_NAME"; return 0; }
  return 1
}

attach_etcd_volume() {
  local id device uuid
  id=$(instance_id) || fail "cannot read the instance ID from instance metadata"
  wait_until "$ATTACH_WAIT_SECONDS" "$ATTACH_WAIT_SLEEP" "attach $DI_ETCD_VOLUME" volume_try_attach "$id" ||
    fail "cannot attach etcd volume $DI_ETCD_VOLUME (still attached to an old control host?)"
  wait_until "$ATTACH_WAIT_SECONDS" "$ATTACH_WAIT_SLEEP" "device of $DI_ETCD_VOLUME" volume_device ||
    fail "etcd volume $DI_ETCD_VOLUME attached but no block device appeared"
  device=$(volume_device)
  # Format only a blank volume: it holds the registry across control-host replacements.
  if ! blkid -o value -s TYPE "$device" >/dev/null 2>&1; then
    log "formatting new etcd volume $device"
    mkfs.ext4 -q -L di-etcd "$device" || fail "cannot format etcd volume $device"
  fi
  uuid=$(blkid -o value -s UUID "$device") || fail "etcd volume $device has no filesystem UUID"
  mkdir -p "$DI_ETCD_MOUNT"
  fstab_add "$uuid" "$DI_ETCD_MOUNT"
  findmnt -n "$DI_ETCD_MOUNT" >/dev/null || mount "UUID=$uuid" "$DI_ETCD_MOUNT" ||
    fail "cannot mount etcd volume on $DI_ETCD_MOUNT"
  mkdir -p "$DI_ETCD_MOUNT/data"
  chmod 0700 "$DI_ETCD_MOUNT/data"
  log "etcd data on $device ($DI_ETCD_MOUNT)"
}

# ecr_login IMAGE: log docker in to IMAGE's registry when it is a private ECR one (the deployment's pull-through
# cache, model/image_cache.py). The password goes through stdin, never onto a command line
# (https://docs.aws.amazon.com/AmazonECR/latest/userguide/registry_auth.html: get-login-password | docker login
# --username AWS --password-stdin); the token lasts 12 hours, more than a boot.
ecr_login() {
  local registry=${1%%/*}
  [[ $registry == *.dkr.ecr.*.amazonaws.com* ]] || return 0
  aws ecr get-login-password --region "$DI_REGION" |
    docker login --username AWS --password-stdin "$registry" >/dev/null
}

# pull_cached IMAGE UPSTREAM: pull IMAGE from the deployment's cache, or fail naming the upstream image it mirrors
# and how to check it: the cache imports an image on its first pull, which needs this subnet's route to the internet
# (pull-through-cache.md: "Subsequent image pulls don't require this"), and a digest upstream lacks fails there too.
pull_cached() {
  local image=$1 upstream=${2:-$1}
  retry ecr_login "$image" || fail "cannot log in to the registry of $image (aws ecr get-login-password; the ecr.api endpoint?)"
  retry docker pull "$image" && return 0
  if [[ $image == "$upstream" ]]; then
    fail "cannot pull $image: registry unreachable, or no such digest (check it: docker buildx imagetools inspect ${upstream%@*})"
  fi
  fail "cannot pull $image, the deployment's ECR pull-through cache of $upstream: the first pull imports it from" \
    "upstream (this subnet needs its NAT route then), and a tag or digest upstream lacks fails there" \
    "(check it: docker buildx imagetools inspect ${upstream%@*}; aws ecr describe-pull-through-cache-rules)"
}

start_etcd() {
  # A digest the registry does not have fails here too (model/node_values.py ETCD_IMAGE: the digest is unverified).
  pull_cached "$DI_ETCD_IMAGE" "${DI_ETCD_UPSTREAM_IMAGE:-$DI_ETCD_IMAGE}"
  install_unit "$DI_HOME/units/di-etcd.service"
  systemctl daemon-reload
  systemctl enable --now di-etcd.service || fail "di-etcd.service did not start"
  wait_for_etcd || fail "etcd does not answer on $DI_ETCD: journalctl -u di-etcd"
}

# proxy_etcd_credentials: the proxy runs as a dynamic user, which cannot read root's files: systemd hands it copies of
# the CA, the host's client certificate and its etcd password under /run/credentials/UNIT/ (LoadCredential=,
# https://www.freedesktop.org/software/systemd/man/latest/systemd.exec.html#Credentials), the paths proxy.env names
# (model/node_values.py proxy_values).
proxy_etcd_credentials() {
  etcd_tls || return 0
  local unit=${DI_PROXY_UNITS%% *}
  install -d -m 0755 "$DI_SYSTEMD_DIR/$unit.d"
  printf '%s\n' '[Service]' "LoadCredential=etcd-ca.pem:$DI_ETCD_DIR/ca.pem" \
    "LoadCredential=etcd-client.pem:$DI_ETCD_DIR/client.pem" \
    "LoadCredential=etcd-client-key.pem:$DI_ETCD_DIR/client-key.pem" \
    "LoadCredential=etcd-password:$DI_ETCD_DIR/proxy-password" >"$DI_SYSTEMD_DIR/$unit.d/etcd-credentials.conf"
}

proxy_serving() { [[ $(health_code "$DI_PROXY_PORT") == 200 ]]; }

# wait_for_distack_proxy: the unit starting is not the proxy serving: it exits at once when it cannot read its API
# key secret, for one. Wait until its own /health answers, at most PROXY_WAIT_SECONDS.
wait_for_distack_proxy() {
  wait_until "$PROXY_WAIT_SECONDS" "$PROXY_WAIT_SLEEP" "DiStack proxy /health on :$DI_PROXY_PORT" proxy_serving ||
    return 1
  log "DiStack proxy answers on :$DI_PROXY_PORT"
}

# install_distack_proxy: the proxy package (a stack asset) into a venv and its units, reading the settings that user
# data wrote (proxy.env).
install_distack_proxy() {
  [[ -n ${DI_PROXY_PACKAGE_URL:-} ]] || fail "DI_PROXY=distack but node.env has no DI_PROXY_PACKAGE_URL"
  [[ -n ${DI_PROXY_WHEELHOUSE_URL:-} ]] || fail "DI_PROXY=distack but node.env has no DI_PROXY_WHEELHOUSE_URL"
  dnf_tool "$DI_PROXY_PYTHON" || fail "cannot install $DI_PROXY_PYTHON for the proxy"
  rm -rf "$DI_PROXY_SRC" && mkdir -p "$DI_PROXY_SRC/diproxy" "$DI_PROXY_SRC/wheelhouse"
  retry aws s3 cp --only-show-errors --region "$DI_REGION" "$DI_PROXY_PACKAGE_URL" "$DI_PROXY_SRC/diproxy.zip" ||
    fail "cannot download the proxy package $DI_PROXY_PACKAGE_URL"
  unzip -q -o "$DI_PROXY_SRC/diproxy.zip" -d "$DI_PROXY_SRC/diproxy" || fail "the proxy package does not unzip"
  # The proxy's dependencies as wheels (model/wheelhouse.py), from the same assets bucket: pip reads no index.
  retry aws s3 cp --only-show-errors --region "$DI_REGION" "$DI_PROXY_WHEELHOUSE_URL" "$DI_PROXY_SRC/wheelhouse.zip" ||
    fail "cannot download the proxy's wheelhouse $DI_PROXY_WHEELHOUSE_URL"
  unzip -q -o "$DI_PROXY_SRC/wheelhouse.zip" -d "$DI_PROXY_SRC/wheelhouse" || fail "the proxy's wheelhouse does not unzip"
  # Written by user data with node.env (model/node_values.py proxy_values): installed here as it is.
  [[ -s $DI_PROXY_ENV ]] || fail "DI_PROXY=distack but there is no $DI_PROXY_ENV (user data writes it with node.env)"
  PROXY_PYTHON=$DI_PROXY_PYTHON PROXY_START=no PROXY_ENV_FILE=$DI_PROXY_ENV PROXY_UNIT_DIR=$DI_SYSTEMD_DIR \
    PROXY_WHEELHOUSE=$DI_PROXY_SRC/wheelhouse retry bash "$DI_PROXY_INSTALLER" "$DI_PROXY_SRC" ||
    fail "the proxy package did not install from its wheelhouse (a wheel whose hash is not the lock's? see pip's message above)"
}

# start_proxy: the proxy kind the config names (model/proxies.py), through its own start; DI_PROXY_UNITS lists its
# units, the serving one first.
start_proxy() {
  case $DI_PROXY in
    neuron) start_neuron_proxy ;;
    distack) start_distack_proxy ;;
    *) fail "unknown DI_PROXY '$DI_PROXY'" ;;
  esac
}

# start_neuron_proxy: the 0.9.1 image's neuron-proxy-server, in a container under the node scripts' own unit.
start_neuron_proxy() {
  local unit=${DI_PROXY_UNITS%% *}
  pull_cached "$DI_IMAGE" "${DI_UPSTREAM_IMAGE:-$DI_IMAGE}"
  install_unit "$DI_HOME/units/$unit"
  systemctl daemon-reload
  systemctl enable --now "$unit" || fail "$unit did not start"
}

# start_distack_proxy: DiStack's proxy from its package, then its metrics shipper once the proxy serves.
start_distack_proxy() {
  local units unit
  read -ra units <<<"$DI_PROXY_UNITS"
  install_distack_proxy
  proxy_etcd_credentials
  for unit in "${units[@]}"; do
    [[ -f $DI_SYSTEMD_DIR/$unit ]] || fail "the proxy installer left no $DI_SYSTEMD_DIR/$unit"
  done
  systemctl daemon-reload
  systemctl enable --now "${units[0]}" || fail "${units[0]} did not start"
  wait_for_distack_proxy ||
    fail "${units[0]} does not answer /health after ${PROXY_WAIT_SECONDS}s: journalctl -u ${units[0]%.service}"
  for unit in "${units[@]:1}"; do
    systemctl enable --now "$unit" || fail "$unit did not start: journalctl -u ${unit%.service}"
  done
}

control_main() {
  install_docker
  claim_member
  attach_interface
  attach_etcd_volume
  etcd_control_trust || fail "no etcd certificate for this host (secret $DI_ETCD_CA_SECRET; see the log above)"
  # Both modes and engines: DI workers register through NeuronConnector or di-register, standard ones through di-register.
  start_etcd
  etcd_auth_setup || fail "cannot set up etcd's users and roles (see the log above)"
  # The engine's own control-host needs, when its module has any (lib/modules.sh load_engine).
  load_engine_module
  run_engine_hook engine_control_start
  start_proxy
  "$DI_SCRIPTS_DIR/metrics-agent.sh" || log "metrics agent not started: this node's metrics stay empty (see metrics-agent.sh)"
}

main() {
  load_node_env
  control_main
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
