#!/usr/bin/env bash
# Accelerator `gpu`: NVIDIA GPU workers (p5, p5en, ...) on the AWS Deep Learning Base GPU AMI (NVIDIA driver, EFA,
# Docker and the NVIDIA Container Toolkit). Sourced by load_accelerator (lib/modules.sh); accelerator_* functions only.
# An endpoint's RANGE in DI_ENDPOINTS ("role:RANGE:port") is GPU indices here, as nvidia-smi numbers them.

# gpu_count: the GPUs the driver sees, one line per GPU in `nvidia-smi --query-gpu=index --format=csv,noheader`
# (nvidia-smi(1): "--query-gpu ... Information about GPU"; "--format=csv,noheader"). 0 when nvidia-smi fails.
gpu_count() {
  local out
  out=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null) || { echo 0; return 0; }
  grep -c '[0-9]' <<<"$out" || true
}

# accelerator_preflight: nvidia-smi answers and sees DI_EXPECTED_GPUS GPUs.
accelerator_preflight() {
  local count
  command -v nvidia-smi >/dev/null ||
    fail "nvidia-smi not found: NVIDIA driver missing (use the AWS Deep Learning Base GPU AMI)"
  count=$(gpu_count)
  ((count == ${DI_EXPECTED_GPUS:?})) ||
    fail "found $count GPUs (nvidia-smi), expected $DI_EXPECTED_GPUS: driver not loaded, a GPU fell off the bus, or wrong AMI"
  log "GPUs: $count"
}

# gpu_list RANGE: "0-3" or "0,2" or "5" as docker's comma-separated device list ("0,1,2,3").
gpu_list() {
  local part out=() i
  for part in ${1//,/ }; do
    if [[ $part == *-* ]]; then
      for ((i = ${part%-*}; i <= ${part#*-}; i++)); do out+=("$i"); done
    else
      out+=("$part")
    fi
  done
  local IFS=,
  printf '%s\n' "${out[*]}"
}

# accelerator_docker_args RANGE: the endpoint's GPUs and what vLLM needs of the host.
# - GPUs: "--gpus '\"device=1,2\"'" exposes GPUs 1 and 2 (NVIDIA Container Toolkit, docker specialized configurations:
#   https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/docker-specialized.html "GPU Enumeration":
#   `docker run --rm --gpus '"device=1,2"' ...`; the inner quotes keep docker from splitting at the comma). Inside,
#   they are numbered from 0, so no CUDA_VISIBLE_DEVICES is set.
# - --ipc=host: vLLM's Docker guide runs its image with `--ipc=host` ("You can either use the ipc=host flag or
#   --shm-size flag to allow the container to access the host's shared memory. vLLM uses PyTorch, which uses shared
#   memory to share data between processes under the hood, particularly for tensor parallel inference":
#   vllm-project/vllm docs/deployment/docker.md). The common --shm-size stays as well.
# - EFA: the /dev/infiniband/uverbs* devices come from di-run for every accelerator.
accelerator_docker_args() { printf '%s\n' --gpus "\"device=$(gpu_list "$1")\"" --ipc=host; }

# accelerator_probe_args: a probe container sees every GPU.
accelerator_probe_args() { printf '%s\n' --gpus all; }

# accelerator_status_json: di-status's device fields.
accelerator_status_json() { printf '"gpus":%s,"expected_gpus":%s' "$(gpu_count)" "${DI_EXPECTED_GPUS:-0}"; }

# NVIDIA's DCGM exporter, which the CloudWatch agent scrapes like neuron-monitor on Trainium (job `dcgm`). Image and
# port must match model/observability/kv_telemetry.py (DCGM_IMAGE, DCGM_PORT; a test holds them equal). Pinned by tag
# only: the two public digests found for this tag disagree (kv_telemetry.py says which), so none is pinned. A tag
# that is gone fails the pull below, and the node reports it.
DI_DCGM_EXPORTER_IMAGE=${DI_DCGM_EXPORTER_IMAGE:-nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1-4.6.0-ubuntu22.04}
DI_DCGM_EXPORTER_PORT=${DI_DCGM_EXPORTER_PORT:-9400}

# accelerator_exporter: the DCGM exporter as its README runs it (`docker run -d --gpus all --cap-add SYS_ADMIN -p
# 9400:9400 IMAGE`, NVIDIA/dcgm-exporter README "Quickstart"), published on loopback only (the agent is local),
# restarted by docker with the node. An exporter already running is left alone.
accelerator_exporter() {
  if [[ -n $(docker ps -q --filter name=^di-dcgm-exporter$ 2>/dev/null) ]]; then
    log "DCGM exporter already running"
    return 0
  fi
  docker rm -f di-dcgm-exporter >/dev/null 2>&1 || true
  retry docker pull -q "$DI_DCGM_EXPORTER_IMAGE" >/dev/null ||
    metrics_fail "cannot pull the DCGM exporter $DI_DCGM_EXPORTER_IMAGE: no GPU metrics"
  docker run -d --name di-dcgm-exporter --restart unless-stopped --gpus all --cap-add SYS_ADMIN \
    -p "127.0.0.1:$DI_DCGM_EXPORTER_PORT:9400" "$DI_DCGM_EXPORTER_IMAGE" >/dev/null ||
    metrics_fail "the DCGM exporter did not start: no GPU metrics"
  log "DCGM exporter running on 127.0.0.1:$DI_DCGM_EXPORTER_PORT"
}
# (metrics_fail is metrics-agent.sh's, the only caller.)
