#!/usr/bin/env bash
# Worker bootstrap (Ubuntu Neuron DLAMI or Deep Learning Base GPU AMI): Docker, preflight (the accelerator module's
# device check, EFA), image (and the engine's own check of it), model and
# compiled artifacts on local NVMe, then one di-vllm@INDEX unit per endpoint, each with a di-register@INDEX unit
# that lists it in etcd unless the engine registers it itself, and di-lifecycle, which drains the node when Auto
# Scaling takes it away. A node launched into a Stopped warm pool only prepares (worker_prepare, everything on the
# root EBS volume, which survives the stop); di-lifecycle runs the rest when it is started into service.
# Sourced by di-bootstrap; runnable alone for a re-run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/lib
DI_LIB_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/units.sh"
. "$DI_LIB_DIR/etcd.sh"
. "$DI_LIB_DIR/etcd_trust.sh"
. "$DI_LIB_DIR/report.sh"
. "$DI_LIB_DIR/secrets.sh"
. "$DI_LIB_DIR/s3.sh"
. "$DI_LIB_DIR/checksums.sh"
. "$DI_LIB_DIR/efa.sh"
. "$DI_LIB_DIR/compile.sh"
. "$DI_LIB_DIR/modules.sh"
. "$DI_LIB_DIR/containment.sh"

DI_MIN_DATA_GB=${DI_MIN_DATA_GB:-300}
DI_NVME_GLOB=${DI_NVME_GLOB:-/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*}
DI_RAID_DEVICE=${DI_RAID_DEVICE:-/dev/md/di-data}
DI_SETTLE_SECONDS=${DI_SETTLE_SECONDS:-15}
# fi_info ships with the EFA installer outside the default PATH.
PATH="$PATH:/opt/amazon/efa/bin"

install_docker() {
  if ! command -v docker >/dev/null; then
    log "installing Docker (docker.io)"
    retry apt-get update -q || fail "apt-get update failed; cannot install Docker"
    DEBIAN_FRONTEND=noninteractive retry apt-get install -y -q docker.io || fail "cannot install Docker (docker.io)"
  fi
  systemctl enable --now docker || fail "Docker does not start"
}

check_efa() {
  command -v fi_info >/dev/null || fail "EFA missing: fi_info not found (EFA installer absent from the AMI)"
  local count uverbs=("$DI_DEV_ROOT"/infiniband/uverbs*)
  count=$(efa_interface_count)
  ((count > 0)) || fail "EFA missing: fi_info -p efa finds no interface (launch template must request InterfaceType efa)"
  ((count == DI_EXPECTED_EFA_INTERFACES)) ||
    fail "EFA: $count interfaces, expected $DI_EXPECTED_EFA_INTERFACES (one per network card)"
  [[ -e ${uverbs[0]} ]] || fail "EFA missing: no /dev/infiniband/uverbs* device to pass to the container"
  log "EFA interfaces: $count, uverbs devices: ${#uverbs[@]}"
}

# instance_store_disks: the instance-store NVMe disks, one device path each. Newer udev adds a namespace-suffixed
# link (…_AWS123-ns-1) next to …_AWS123 for the same disk, so links are resolved and each disk counted once.
instance_store_disks() {
  local link
  for link in $DI_NVME_GLOB; do
    [[ -e $link && $link != *-part* ]] || continue
    readlink -f "$link"
  done | sort -u
}

# make_data_array MOUNTPOINT DISK...: RAID 0 over the disks (or the single disk), formatted and mounted on MOUNTPOINT.
make_data_array() {
  local mountpoint=$1 target=$2
  shift
  if (($# > 1)); then
    mdadm --create "$DI_RAID_DEVICE" --run --level=0 --raid-devices="$#" "$@" ||
      fail "cannot build RAID 0 over $# NVMe devices ($*)"
    target=$DI_RAID_DEVICE
  fi
  mkfs.ext4 -q -F -E nodiscard "$target" || fail "cannot format $target"
  mount "$target" "$mountpoint" || fail "cannot mount $target on $mountpoint"
  # Instance store survives a reboot (not a stop): remount it then, before the units start.
  fstab_add "$(blkid -o value -s UUID "$target")" "$mountpoint"
}

# use_instance_store MOUNTPOINT: every free instance-store NVMe disk as one array on MOUNTPOINT.
# A disk something else (the AMI) already mounted is never formatted: it is left alone, and when no free disk
# remains the boot fails naming where they are mounted.
use_instance_store() {
  local mountpoint=$1 disks=() free=() busy=() disk where
  mapfile -t disks < <(instance_store_disks)
  ((${#disks[@]} > 0)) ||
    fail "no instance-store NVMe found ($DI_NVME_GLOB) for models and compiled artifacts: use an instance type with local NVMe"
  for disk in "${disks[@]}"; do
    if where=$(findmnt -rn -o TARGET -S "$disk"); then
      log "leaving $disk alone: already mounted on ${where//$'\n'/ }"
      busy+=("$disk on ${where//$'\n'/ }")
    else
      free+=("$disk")
    fi
  done
  ((${#free[@]} > 0)) ||
    fail "instance-store NVMe all mounted elsewhere (${busy[*]}), none left for $mountpoint: unmount it in the AMI or mount it on $mountpoint"
  make_data_array "$mountpoint" "${free[@]}"
}

# Marks a data dir kept on the root EBS volume (a warm-pool node): used as it is on every later start, never mounted
# over. Instance store "does not persist when an instance is stopped" while the root volume does
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/InstanceStorage.html), and a warm pool keeps its instances Stopped.
ROOT_VOLUME_MARK=.di-root-volume

data_on_root() { [[ -e $DI_DATA_DIR/$ROOT_VOLUME_MARK ]]; }

# prepare_data_dir: local NVMe instance store at DI_DATA_DIR (RAID 0 over all of them), or what is mounted there, or
# (DI_DATA_ON_ROOT=1, a warm-pool node) a directory on the root EBS volume.
prepare_data_dir() {
  local need=$DI_MIN_DATA_GB avail
  mkdir -p "$DI_DATA_DIR"
  if ! findmnt -n "$DI_DATA_DIR" >/dev/null && [[ ${DI_DATA_ON_ROOT:-0} == 1 ]] || data_on_root; then
    touch "$DI_DATA_DIR/$ROOT_VOLUME_MARK"
    # Weights (a third of DI_MIN_DATA_GB) and half as much again for the compiled cache; no sharded copy here.
    need=$(((DI_MIN_DATA_GB + 1) / 2))
    log "data dir $DI_DATA_DIR on the root EBS volume: it survives the warm pool's stop"
  elif ! findmnt -n "$DI_DATA_DIR" >/dev/null; then
    use_instance_store "$DI_DATA_DIR"
  fi
  avail=$(df -P -BG "$DI_DATA_DIR" | awk 'NR == 2 { sub("G", "", $4); print $4 }')
  ((avail >= need)) || fail "only ${avail} GB free on $DI_DATA_DIR, need $need GB for the model"
  mkdir -p "$DI_DATA_DIR/models" "$DI_DATA_DIR/compiled"
  log "data dir $DI_DATA_DIR: ${avail} GB free"
}

# model_store_for_s3: where weights from S3 go on a node whose data dir is on the root volume. Read back from gp3 at
# its baseline 125 MiB/s, 141 GB of 70B weights take ~18 min to load; fetched from S3 by the CRT client onto the
# instance store (RAID 0 over its NVMe disks, mounted on DI_DATA_DIR/models, inside the containers' /data) they take
# about as long as the network needs. So a warm-pool node keeps image layers and compiled cache on EBS and fetches
# weights that are in S3 at every start; weights only Hugging Face has stay on EBS.
model_store_for_s3() {
  data_on_root || return 0
  findmnt -n "$DI_DATA_DIR/models" >/dev/null && return 0
  if [[ -z $(instance_store_disks) ]]; then
    log "no instance store: weights go to the root volume (loading reads them at its throughput)"
    return 0
  fi
  mkdir -p "$DI_DATA_DIR/models"
  use_instance_store "$DI_DATA_DIR/models"
  log "weights on instance store at $DI_DATA_DIR/models (fetched from S3 at every start)"
}

# write_hf_env: the Hugging Face token from Secrets Manager into a root-only env file for `docker --env-file`.
# The value only ever passes through this shell's memory and that file: never argv, never a log line.
write_hf_env() {
  local token file="$DI_RUN_DIR/hf.env"
  mkdir -p "$DI_RUN_DIR"
  : >"$file"
  chmod 0600 "$file"
  [[ -n ${DI_HF_TOKEN_SECRET:-} ]] || { log "no Hugging Face token secret configured (public model)"; return 0; }
  token=$(secret_value "$DI_HF_TOKEN_SECRET" HF_TOKEN hf_token token) || fail "$token"
  printf 'HF_TOKEN=%s\n' "$token" >"$file"
}

s3_has() { aws s3 ls --region "$DI_REGION" "s3://$DI_BUCKET/$1" >/dev/null 2>&1; }

# fetch PREFIX DIR WHAT: s3://BUCKET/PREFIX into DIR through the CRT client (lib/s3.sh s3_sync), then checked against its
# SHA256SUMS when it has one.
fetch() {
  local prefix=$1 dir=$2 what=$3 started=$SECONDS
  log "syncing $what from s3://$DI_BUCKET/$prefix"
  retry s3_sync "s3://$DI_BUCKET/$prefix" "$dir" || fail "cannot sync $what from s3://$DI_BUCKET/$prefix"
  verify_checksums "$dir" || fail "$what in $dir differ from s3://$DI_BUCKET/$prefix$CHECKSUM_LIST (files above); remove them and boot again"
  log "$what synced in $((SECONDS - started))s ($(du -sh "$dir" 2>/dev/null | cut -f1))"
}

model_dir() { printf '%s\n' "$DI_DATA_DIR/models/$DI_MODEL_ID"; }

# stage_model_s3: the weights from s3://BUCKET/models/<id>/ (a prefix that exists).
stage_model_s3() {
  local dir
  dir=$(model_dir)
  mkdir -p "$dir"
  fetch "models/$DI_MODEL_ID/" "$dir" "model $DI_MODEL_ID"
  touch "$dir/.complete"
}

# stage_model_hf: the weights from Hugging Face through the image's huggingface-cli (the image must be pulled).
stage_model_hf() {
  local dir
  dir=$(model_dir)
  mkdir -p "$dir"
  write_hf_env
  log "downloading $DI_MODEL_ID from Hugging Face"
  retry docker run --rm "--cgroup-parent=$CONTAINER_SLICE" --env-file "$DI_RUN_DIR/hf.env" -v "$DI_DATA_DIR:/data" --entrypoint huggingface-cli \
    "$DI_IMAGE" download "$DI_MODEL_ID" --local-dir "/data/models/$DI_MODEL_ID" --exclude 'original/*' ||
    fail "cannot download $DI_MODEL_ID from Hugging Face (token, licence acceptance or egress)"
  rm -f "$DI_RUN_DIR/hf.env"
  touch "$dir/.complete"
}

# model_source: where the weights come from: staged (already there), s3 or huggingface; fails for an empty s3 source.
model_source() {
  if [[ -e $(model_dir)/.complete ]]; then echo staged
  elif s3_has "models/$DI_MODEL_ID/"; then echo s3
  elif [[ $DI_MODEL_SOURCE == s3 ]]; then
    fail "model source is s3 but s3://$DI_BUCKET/models/$DI_MODEL_ID/ is empty: upload the weights there first"
  else echo huggingface
  fi
}

stage_model() {
  local source
  source=$(model_source)
  case $source in
    staged) log "model already staged in $(model_dir)" ;;
    s3) stage_model_s3 ;;
    *) stage_model_hf ;;
  esac
}

stage_compiled() {
  local key prefix dir
  key=$(compiled_key)
  prefix="compiled/$key/"
  dir="$DI_DATA_DIR/compiled/$key"
  mkdir -p "$dir"
  if s3_has "$prefix"; then
    fetch "$prefix" "$dir" "compiled artifacts"
  else
    log "no compiled artifacts at s3://$DI_BUCKET/$prefix: vLLM compiles on first start (can take an hour)"
  fi
}

pull_image() { retry docker pull "$DI_IMAGE" || fail "cannot pull $DI_IMAGE (egress to public.ecr.aws?)"; }

# pull_or_keep_image: at boot, an image already on the node (its layers stay on the root volume through a warm pool's
# stop) is used as it is when the registry does not answer; an update (ops/update.sh) always pulls.
pull_or_keep_image() {
  retry docker pull "$DI_IMAGE" && return 0
  if docker image inspect "$DI_IMAGE" >/dev/null 2>&1; then
    log "cannot pull $DI_IMAGE; using the copy already on this node"
    return 0
  fi
  fail "cannot pull $DI_IMAGE (egress to public.ecr.aws?)"
}

# stage_all: image (then the engine's check of it), weights and compiled artifacts at the same time, each download
# network-bound on its own; weights from Hugging Face come after, through the pulled image. The first failure's
# reason is the bootstrap's. A warm-pool preparation (DI_DATA_ON_ROOT=1) leaves weights that are in S3 for the start.
stage_all() {
  local pids=() source i status=0
  source=$(model_source)
  if [[ $source == s3 && ${DI_DATA_ON_ROOT:-0} == 1 ]]; then
    log "model $DI_MODEL_ID is in S3: fetched onto instance store at every start, not kept on the root volume"
    source=later
  elif [[ $source == s3 ]]; then
    model_store_for_s3
  fi
  (
    pull_or_keep_image
    engine_preflight
  ) &
  pids+=($!)
  if [[ $source == s3 ]]; then stage_model_s3 & pids+=($!); fi
  stage_compiled &
  pids+=($!)
  for i in "${pids[@]}"; do wait "$i" || status=1; done
  ((status == 0)) || fail "$(cat "$DI_RUN_DIR/bootstrap-failure" 2>/dev/null || echo "staging failed")"
  case $source in
    staged) log "model already staged in $(model_dir)" ;;
    huggingface) stage_model_hf ;;
  esac
}

# start_registrar INDEX: an endpoint nothing else lists in etcd (standard mode, or an engine whose server does not
# register itself) gets di-register, or the proxy would never find it. It waits for /health and for etcd by itself,
# so the boot does not wait for either.
start_registrar() {
  local unit
  unit=$(registrar_unit "$1")
  systemctl enable --now "$unit" || fail "$unit did not start"
}

# any_registrar: true when some endpoint of this node needs di-register.
any_registrar() {
  local role
  while read -r _ role _; do registrar_wanted "$role" && return 0; done < <(endpoints)
  return 1
}

# install_units: every unit this worker may run, then one daemon-reload.
install_units() {
  install_unit "$DI_HOME/units/di-vllm@.service"
  if any_registrar; then install_unit "$DI_HOME/units/di-register@.service"; fi
  install_unit "$DI_HOME/units/di-lifecycle.service"
  systemctl daemon-reload
}

start_endpoints() {
  local index role cores port unit
  while read -r index role cores port; do
    unit=$(unit_name "$index")
    log "starting $unit ($role, cores $cores, port $port)"
    systemctl enable --now "$unit" || fail "$unit did not start"
    if registrar_wanted "$role"; then start_registrar "$index"; fi
  done < <(endpoints)
  sleep "$DI_SETTLE_SECONDS"
  while read -r index _; do
    unit=$(unit_name "$index")
    systemctl is-active --quiet "$unit" || fail "$unit is not running: journalctl -u $unit"
  done < <(endpoints)
}

# start_lifecycle: di-lifecycle follows the Auto Scaling target state from now on and at every boot.
start_lifecycle() { systemctl enable --now di-lifecycle.service || fail "di-lifecycle.service did not start"; }

# worker_prepare: everything before the servers start.
worker_prepare() {
  load_engine
  install_docker
  # Before any container starts (the engine's probe, the download, the endpoints).
  local why
  why=$(contain_imds) || fail "$why: containers would reach instance metadata"
  accelerator_preflight
  check_efa
  prepare_data_dir
  stage_all
  install_units
}

worker_main() {
  worker_prepare
  # The registrar's etcd certificate and user, once the control plane created them (lib/etcd_trust.sh).
  etcd_worker_trust || fail "no etcd credentials in ${DI_ETCD_CLIENT_SECRET:-?}: is the control plane up? (dictl status)"
  # NeuronConnector needs etcd when vLLM starts; di-register (standard mode, nixl) waits for it by itself.
  if engine_self_registers && [[ $DI_MODE == disaggregated ]]; then
    wait_for_etcd || fail "etcd at $DI_ETCD unreachable: is the control host up? (dictl status)"
  fi
  start_endpoints
  "$DI_SCRIPTS_DIR/metrics-agent.sh" || log "metrics agent not started: this node's metrics stay empty (see metrics-agent.sh)"
  start_lifecycle
}

# Written on the root volume by a warm-pool preparation; di-lifecycle runs the bootstrap again when it finds it as
# the instance enters service, and removes it once the node serves.
warm_marker() { printf '%s\n' "$DI_STATE_DIR/warm-prepared"; }

# warn_if_docker_root_on_instance_store: the image layers are only kept through the stop where Docker keeps them on
# the root volume (its default /var/lib/docker); an AMI that moved Docker's data root onto instance store would make
# every warm start pull the image again.
warn_if_docker_root_on_instance_store() {
  local root device
  root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null) || root=/var/lib/docker
  device=$(findmnt -n -o SOURCE -T "${root:-/var/lib/docker}" 2>/dev/null) || return 0
  if [[ -n $device ]] && { instance_store_disks | grep -qxF "$device" || [[ $device == /dev/md* ]]; }; then
    log "WARNING: Docker keeps images in $root on instance store ($device): a warm start pulls $DI_IMAGE again"
  fi
}

# worker_prepare_warm: a node launched into a Stopped warm pool gets everything a start needs onto the root EBS volume
# (image layers in Docker's own directory there, weights and compiled cache in the data dir there) and starts no
# server: "As soon as an instance finishes launching into the warm pool, Amazon EC2 Auto Scaling stops or hibernates
# the instance", and user data "runs only on the first boot"
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/warm-pool-instance-lifecycle.html), so di-lifecycle, enabled
# at boot, finishes the start when the instance is started into service.
worker_prepare_warm() {
  DI_DATA_ON_ROOT=1 worker_prepare
  warn_if_docker_root_on_instance_store
  mkdir -p "$DI_STATE_DIR"
  touch "$(warm_marker)"
  start_lifecycle
}

main() {
  load_node_env
  worker_main
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
