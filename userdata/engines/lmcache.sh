#!/usr/bin/env bash
# Engine `lmcache` (GPU only): seed 004's LMCache disaggregated prefill over NIXL: `vllm serve` with
# LMCacheConnectorV1, each endpoint's LMCache configuration generated on the node (engine_prepare) from node.env.
# Sources: seed 004 (/work/shared/seeds/004_*.txt: LMCache docs "XpYd", launcher commands L170-213, configs
# L96-136); LMCache/LMCache examples/disagg_prefill/xpyd/ (configs/lmcache-prefiller-config.yaml@a970cea6,
# configs/lmcache-decoder-{1,2}-config.yaml@bb3af27e/16ad9916, disagg_proxy_server_first_token_from_prefiller_xpyd.py
# @c5f9daee). Sourced by load_engine (lib/modules.sh); engine_* and lmcache_* only.
#
# Layout (contract Decisions, GPROXY and GNODE): LMCache's xpyd example, for one decoder as for several: enable_pd,
# pd_role sender|receiver. A sender learns its receiver from the request ("disagg_spec": {req_id, receiver_host,
# receiver_init_port, receiver_alloc_port} in kv_transfer_params, which the proxy always sets) and tells the proxy when
# the KV is there (pd_proxy_host/pd_proxy_port). A receiver listens on ports derived from its endpoint's HTTP port
# PORT and TP rank r, which the proxy derives the same way: init PORT + 1000 + 100 r, alloc PORT + 2000 + 100 r.
# The seed's own keys (no local CPU or disk tier, remote_serde NULL, 1 GiB buffer on "cuda") are kept.

# The DLC-style wrapper is not in LMCache's image; `vllm` is the entrypoint under docker's --init (tini forwards SIGTERM).
engine_entrypoint() { printf '%s\n' vllm; }

env_if() { [[ -z $2 ]] || printf '%s\n' -e "$1=$2"; }

# lmcache_config INDEX: where endpoint INDEX's LMCache configuration is, on the node and in the container (/data).
lmcache_config() { printf '%s\n' "$1/lmcache/endpoint-$2.yaml"; }

# lmcache_ports OFFSET PORT: a receiver's ports for TP ranks 0..TP-1: PORT + OFFSET + STRIDE r; a scalar for TP 1 as
# in the example's configs ("pd_peer_init_port: 7300"), a YAML list otherwise.
lmcache_ports() {
  local offset=$1 port=$2 stride=${DI_LMCACHE_RANK_PORT_STRIDE:-100} r out=()
  for ((r = 0; r < DI_TENSOR_PARALLEL; r++)); do out+=($((port + offset + stride * r))); done
  if ((${#out[@]} == 1)); then
    printf '%s\n' "${out[0]}"
  else
    local IFS=,
    printf '[%s]\n' "${out[*]// /}"
  fi
}

# lmcache_rpc_name ROLE INDEX: the launcher's lmcache_rpc_port, "producer1", "producer2", "consumer1": unique per
# server on a node ("Each prefiller gets a unique lmcache_rpc_port", seed L216), numbered per role from 1.
lmcache_rpc_name() {
  local name n
  if [[ $1 == prefill ]]; then name=producer; else name=consumer; fi
  n=$(endpoints | awk -v role="$1" -v index_="$2" '$2 == role { n++ } $1 == index_ { print n; exit }')
  printf '%s%s\n' "$name" "$n"
}

# lmcache_yaml ROLE PORT: the LMCache configuration of one endpoint.
lmcache_yaml() {
  local role=$1 port=$2 ip size=${DI_LMCACHE_NIXL_BUFFER_SIZE:-1073741824}
  local device=${DI_LMCACHE_NIXL_BUFFER_DEVICE:-cuda} backend=${DI_NIXL_BACKEND:-UCX}
  # Seed L100-103 (prefiller) and L125-128 (decoder): no local CPU or disk tier, no remote serde.
  printf 'local_cpu: False\nmax_local_cpu_size: 0\nmax_local_disk_size: 0\nremote_serde: NULL\n'
  [[ -z ${DI_LMCACHE_CHUNK_SIZE:-} ]] || printf 'chunk_size: %s\n' "$DI_LMCACHE_CHUNK_SIZE"
  printf '\nenable_pd: True\ntransfer_channel: "nixl"\n'
  if [[ $role == prefill ]]; then
    # xpyd lmcache-prefiller-config.yaml: pd_role "sender", pd_proxy_host/pd_proxy_port (the proxy runs on the
    # control host, etcd's address).
    printf 'pd_role: "sender"\npd_proxy_host: "%s"\npd_proxy_port: %s\n' "${DI_ETCD%:*}" "${DI_LMCACHE_PROXY_PORT:-7500}"
  else
    # xpyd lmcache-decoder-N-config.yaml: pd_role "receiver", its own host and two ports.
    ip=$(local_ip) || die "cannot read this node's private IP from instance metadata ($DI_IMDS_URL)"
    printf 'pd_role: "receiver"\npd_peer_host: "%s"\npd_peer_init_port: %s\npd_peer_alloc_port: %s\n' "$ip" \
      "$(lmcache_ports "${DI_LMCACHE_INIT_PORT_OFFSET:-1000}" "$port")" "$(lmcache_ports "${DI_LMCACHE_ALLOC_PORT_OFFSET:-2000}" "$port")"
  fi
  # Seed L109-110: "nixl_buffer_size: 1073741824 # 1GB", "nixl_buffer_device: "cuda"" (pd_* in the xpyd configs).
  printf 'pd_buffer_size: %s\npd_buffer_device: "%s"\nnixl_backends: [%s]\n' "$size" "$device" "$backend"
}

# engine_env ROLE RANGE INDEX: the launcher's environment (seed L174-178):
#   UCX_TLS=cuda_ipc,cuda_copy,tcp LMCACHE_CONFIG_FILE=... VLLM_ENABLE_V1_MULTIPROCESSING=1
#   VLLM_WORKER_MULTIPROC_METHOD=spawn CUDA_VISIBLE_DEVICES=0
# CUDA_VISIBLE_DEVICES is docker's --gpus here (accelerators/gpu.sh). PYTHONHASHSEED the same everywhere: "ensure all
# processes use the same PYTHONHASHSEED to keep the hash of the KV cache consistent across processes" (seed L87-91).
engine_env() {
  local role=$1 index=$3
  if [[ $role != standard ]]; then
    printf '%s\n' -e UCX_TLS=cuda_ipc,cuda_copy,tcp -e "LMCACHE_CONFIG_FILE=$(lmcache_config /data "$index")"
  fi
  printf '%s\n' -e VLLM_ENABLE_V1_MULTIPROCESSING=1 -e VLLM_WORKER_MULTIPROC_METHOD=spawn \
    -e "PYTHONHASHSEED=${DI_PYTHONHASHSEED:-0}"
  env_if VLLM_ENGINE_READY_TIMEOUT_S "${DI_READY_TIMEOUT_SECONDS:-}"
  printf '%s\n' -e "VLLM_CACHE_ROOT=/data/compiled/$(compiled_key)"
}

# engine_server_args ROLE PORT: the launcher's server (seed L179-183), model staged locally:
#   vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8100 --disable-log-requests --enforce-eager
#     --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_producer","kv_connector_extra_config": {"discard_partial_chunks": false, "lmcache_rpc_port": "producer1"}}'
engine_server_args() {
  local role=$1 port=$2 index
  printf '%s\n' serve "/data/models/$DI_MODEL_ID" \
    --served-model-name "$DI_MODEL_ID" \
    --port "$port" \
    --disable-log-requests \
    --enforce-eager \
    --tensor-parallel-size "$DI_TENSOR_PARALLEL" \
    --max-model-len "$DI_MAX_MODEL_LEN" \
    --max-num-seqs "$DI_MAX_NUM_SEQS"
  [[ $role == standard ]] && return 0
  index=$(endpoints | awk -v port="$port" '$4 == port { print $1; exit }')
  printf '%s\n' --kv-transfer-config "$(printf '{"kv_connector":"LMCacheConnectorV1","kv_role":"%s","kv_connector_extra_config": {"discard_partial_chunks": false, "lmcache_rpc_port": "%s"}}' \
    "$(kv_role "$role")" "$(lmcache_rpc_name "$role" "$index")")"
}

# engine_prepare INDEX: the endpoint's LMCache configuration, written before every start (node.env may have changed).
engine_prepare() {
  local index=$1 role port file
  read -r role port < <(endpoints | awk -v i="$index" '$1 == i { print $2, $4 }') || true
  mkdir -p "$DI_DATA_DIR/compiled/$(compiled_key)" "$DI_DATA_DIR/lmcache"
  [[ $role == standard || -z $role ]] && return 0
  file=$(lmcache_config "$DI_DATA_DIR" "$index")
  lmcache_yaml "$role" "$port" >"$file.tmp" && mv "$file.tmp" "$file"
  log "LMCache configuration of endpoint $index ($role) in $file"
}

# engine_registry_fields ROLE INDEX: nothing: the proxy derives a decoder's receiver ports from its HTTP port.
engine_registry_fields() { :; }

# vLLM registers nothing: di-register keeps /workers/{prefill|decode}/IP/PORT in etcd while /health answers.
engine_self_registers() { false; }

# UNVERIFIED: whether a sender keeps KV after its one-token answer is not documented; drain waits on vLLM's counts.
engine_kv_hold_seconds() { echo 0; }

# Nothing beyond the common preflight (GPUs, EFA, NVMe) and the image pull.
engine_preflight() { :; }

# engine_compile KEY: no separate compile step: the endpoints serving once fills VLLM_CACHE_ROOT (as for nixl).
engine_compile() { compile_by_serving; }
