#!/usr/bin/env bash
# Worker bootstrap (Ubuntu Neuron DLAMI): Docker, preflight, image (and the engine's own check of it), model and
# compiled artifacts on local NVMe, then one di-vllm@INDEX unit per endpoint, each with a di-register@INDEX unit
# that lists it in etcd unless the engine registers it itself. Sourced by di-bootstrap; runnable alone for a re-run.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

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

check_neuron() {
  local devices=("$DI_DEV_ROOT"/neuron[0-9]*) count=0
  [[ -e ${devices[0]} ]] && count=${#devices[@]}
  ((count == DI_EXPECTED_NEURON_DEVICES)) ||
    fail "found $count Neuron devices (/dev/neuron*), expected $DI_EXPECTED_NEURON_DEVICES: driver (aws-neuronx-dkms) missing or wrong AMI"
  log "Neuron devices: $count"
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

# make_data_array DISK...: RAID 0 over the disks (or the single disk), formatted and mounted on DI_DATA_DIR.
make_data_array() {
  local target=$1
  if (($# > 1)); then
    mdadm --create "$DI_RAID_DEVICE" --run --level=0 --raid-devices="$#" "$@" ||
      fail "cannot build RAID 0 over $# NVMe devices ($*)"
    target=$DI_RAID_DEVICE
  fi
  mkfs.ext4 -q -F -E nodiscard "$target" || fail "cannot format $target"
  mount "$target" "$DI_DATA_DIR" || fail "cannot mount $target on $DI_DATA_DIR"
  # Instance store survives a reboot (not a stop): remount it then, before the units start.
  fstab_add "$(blkid -o value -s UUID "$target")" "$DI_DATA_DIR"
}

# prepare_data_dir: local NVMe instance store at DI_DATA_DIR (RAID 0 over all of them), or what is mounted there.
# A disk something else (the AMI) already mounted is never formatted: it is left alone, and when no free disk
# remains the boot fails naming where they are mounted.
prepare_data_dir() {
  mkdir -p "$DI_DATA_DIR"
  if ! findmnt -n "$DI_DATA_DIR" >/dev/null; then
    local disks=() free=() busy=() disk where
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
      fail "instance-store NVMe all mounted elsewhere (${busy[*]}), none left for $DI_DATA_DIR: unmount it in the AMI or mount it on $DI_DATA_DIR"
    make_data_array "${free[@]}"
  fi
  local avail
  avail=$(df -P -BG "$DI_DATA_DIR" | awk 'NR == 2 { sub("G", "", $4); print $4 }')
  ((avail >= DI_MIN_DATA_GB)) || fail "only ${avail} GB free on $DI_DATA_DIR, need $DI_MIN_DATA_GB GB for the model"
  mkdir -p "$DI_DATA_DIR/models" "$DI_DATA_DIR/compiled"
  log "data dir $DI_DATA_DIR: ${avail} GB free"
}

# write_hf_env: the Hugging Face token from Secrets Manager into a root-only env file for `docker --env-file`.
# The value only ever passes through this shell's memory and that file: never argv, never a log line.
write_hf_env() {
  local token file="$DI_RUN_DIR/hf.env"
  mkdir -p "$DI_RUN_DIR"
  : >"$file"
  chmod 0600 "$file"
  [[ -n ${DI_HF_TOKEN_SECRET:-} ]] || { log "no Hugging Face token secret configured (public model)"; return 0; }
  read_secret token "$DI_HF_TOKEN_SECRET" HF_TOKEN hf_token token || fail "$SECRET_ERROR"
  printf 'HF_TOKEN=%s\n' "$token" >"$file"
}

s3_has() { aws s3 ls --region "$DI_REGION" "s3://$DI_BUCKET/$1" >/dev/null 2>&1; }

stage_model() {
  local dir="$DI_DATA_DIR/models/$DI_MODEL_ID" prefix="models/$DI_MODEL_ID/"
  [[ -e $dir/.complete ]] && { log "model already staged in $dir"; return 0; }
  mkdir -p "$dir"
  if s3_has "$prefix"; then
    log "syncing model from s3://$DI_BUCKET/$prefix"
    retry aws s3 sync --only-show-errors --region "$DI_REGION" "s3://$DI_BUCKET/$prefix" "$dir" ||
      fail "cannot sync model from s3://$DI_BUCKET/$prefix"
  elif [[ $DI_MODEL_SOURCE == s3 ]]; then
    fail "model source is s3 but s3://$DI_BUCKET/$prefix is empty: upload the weights there first"
  else
    write_hf_env
    log "downloading $DI_MODEL_ID from Hugging Face"
    retry docker run --rm --env-file "$DI_RUN_DIR/hf.env" -v "$DI_DATA_DIR:/data" --entrypoint huggingface-cli \
      "$DI_IMAGE" download "$DI_MODEL_ID" --local-dir "/data/models/$DI_MODEL_ID" --exclude 'original/*' ||
      fail "cannot download $DI_MODEL_ID from Hugging Face (token, licence acceptance or egress)"
    rm -f "$DI_RUN_DIR/hf.env"
  fi
  touch "$dir/.complete"
}

stage_compiled() {
  local key prefix dir
  key=$(compiled_key)
  prefix="compiled/$key/"
  dir="$DI_DATA_DIR/compiled/$key"
  mkdir -p "$dir"
  if s3_has "$prefix"; then
    log "syncing compiled artifacts from s3://$DI_BUCKET/$prefix"
    retry aws s3 sync --only-show-errors --region "$DI_REGION" "s3://$DI_BUCKET/$prefix" "$dir" ||
      fail "cannot sync compiled artifacts from s3://$DI_BUCKET/$prefix"
  else
    log "no compiled artifacts at s3://$DI_BUCKET/$prefix: vLLM compiles on first start (can take an hour)"
  fi
}

pull_image() { retry docker pull "$DI_IMAGE" || fail "cannot pull $DI_IMAGE (egress to public.ecr.aws?)"; }

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

start_endpoints() {
  local index role cores port unit
  install_unit "$DI_HOME/units/di-vllm@.service"
  if any_registrar; then install_unit "$DI_HOME/units/di-register@.service"; fi
  systemctl daemon-reload
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

worker_main() {
  load_engine
  install_docker
  check_neuron
  check_efa
  prepare_data_dir
  pull_image
  engine_preflight
  stage_model
  stage_compiled
  # NeuronConnector needs etcd when vLLM starts; di-register (standard mode, nixl) waits for it by itself.
  if engine_self_registers && [[ $DI_MODE == disaggregated ]]; then
    wait_for_etcd || fail "etcd at $DI_ETCD unreachable: is the control host up? (dictl status)"
  fi
  start_endpoints
  "$DI_SCRIPTS_DIR/metrics-agent.sh" || log "metrics agent not started: this node's metrics stay empty (see metrics-agent.sh)"
}

main() {
  load_node_env
  worker_main
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
