#!/usr/bin/env bash
# Engine `nixl` (default): `vllm serve` with vLLM's NixlConnector, on two accelerator families (DI_ACCELERATOR):
# - neuron: the vLLM Neuron plugin (or its NeuronNixlConnector) over NIXL's LIBFABRIC backend on EFA;
# - gpu: upstream vLLM's own NixlConnector, backend DI_NIXL_BACKEND (UCX or LIBFABRIC), as vLLM's NIXL guide gives it
#   (vllm-project/vllm docs/features/nixl_connector_usage.md@026c83f974fc, "Multi-Instance Setup").
# Sourced by load_engine (lib/modules.sh); engine_* only (plus nixl_* helpers, one per family where they differ).
# Sources (aws-neuron/aws-neuron-sdk): vllm-neuron/docs/tutorials/tutorial-di-1p1d-xpyd.md (environment L105-123,
# prefill L141-169, decode L196-221), vllm-neuron/docs/design/vllm/disaggregated-inference.md (generic TP
# L248-278), vllm-neuron/docs/getting-started/setup-guide.md (DI dependencies and the backend probe L93-219).

# The DLC's ENTRYPOINT `python /usr/local/bin/vllm_entrypoint.py` runs the command with subprocess.check_call
# and forwards no signal (aws-neuron/deep-learning-containers common/vllm_entrypoint.py): `vllm` is the
# entrypoint instead, under docker's --init, whose tini forwards SIGTERM to it.
engine_entrypoint() { printf '%s\n' vllm; }

# env_if NAME VALUE: `-e NAME=VALUE` unless VALUE is empty (empty in node.env = vLLM's own default).
env_if() { [[ -z $2 ]] || printf '%s\n' -e "$1=$2"; }

# nixl_side_channel_port INDEX: endpoint INDEX's VLLM_NIXL_SIDE_CHANNEL_PORT, base + stride x INDEX. The stride
# (100, model/engines/nixl.py SIDE_CHANNEL_STRIDE) leaves room for one listener per TP rank: vLLM's NixlConnector
# has listened on VLLM_NIXL_SIDE_CHANNEL_PORT + tp_rank per worker, so endpoints one port apart collided from TP 2 on.
nixl_side_channel_port() {
  printf '%s\n' "$((${DI_NIXL_SIDE_CHANNEL_BASE_PORT:?} + ${DI_NIXL_SIDE_CHANNEL_STRIDE:-100} * $1))"
}

nixl_env_neuron() {
  local role=$1 cores=$2 index=$3 ip
  ip=$(local_ip) || die "cannot read this node's private IP from instance metadata ($DI_IMDS_URL)"
  # NeuronCore range: the plugin reads NEURON_VISIBLE_DEVICES ("exposes exactly four host-level NeuronCores to the
  # TP4 prefill process", tutorial L173; design doc L304 "Core partitioning for single-node DI").
  # NIXL handshake: the decode side connects to the address prefill reports as remote_host, so this node's
  # routable address rather than the tutorial's 0.0.0.0 (L106); colocated endpoints' ports 100 apart, as the
  # tutorial's 5559 and 5659 (troubleshooting: "use different VLLM_NIXL_SIDE_CHANNEL_PORT values"), since vLLM may
  # listen on base + TP rank (nixl_side_channel_port).
  # FI_EFA_ENABLE_SHM_TRANSFER=0: "required for single-node DI ... Without it, both servers can start
  # successfully but requests can produce inaccurate output" (L120-123), and set on both servers multi-node (L404-406).
  printf '%s\n' -e "NEURON_VISIBLE_DEVICES=$cores" \
    -e "VLLM_NIXL_SIDE_CHANNEL_HOST=$ip" \
    -e "VLLM_NIXL_SIDE_CHANNEL_PORT=$(nixl_side_channel_port "$index")" \
    -e FI_EFA_ENABLE_SHM_TRANSFER=0
  # Compilation and start-up can exceed vLLM's defaults (tutorial L109-113).
  env_if VLLM_NEURON_COMPILATION_TIMEOUT "${DI_COMPILE_TIMEOUT_SECONDS:-}"
  env_if VLLM_ENGINE_READY_TIMEOUT_S "${DI_READY_TIMEOUT_SECONDS:-}"
  env_if VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS "${DI_EXECUTE_MODEL_TIMEOUT_SECONDS:-}"
  # The runtime reads NEURON_LOGICAL_NC_CONFIG and the compiler must match it
  # (about-neuron/arch/neuron-features/logical-neuroncore-config.rst); say it so core ranges mean what the config says.
  if lnc_applies; then printf '%s\n' -e "NEURON_LOGICAL_NC_CONFIG=$DI_LNC"; fi
  # Compile cache on the NVMe array, under the key S3 syncs (the cache lives at $VLLM_CACHE_ROOT/neuron/compile_cache,
  # design/compilation/compilation_cache.md L149; "Set to local NVMe for best performance", setup guide).
  # Its entries are keyed by graph hash, so settings outside compiled_key cannot load a wrong NEFF.
  printf '%s\n' -e "VLLM_CACHE_ROOT=/data/compiled/$(compiled_key)"
}

# nixl_env_gpu ROLE RANGE INDEX: the GPU servers' environment of the guide's multi-instance example:
#   VLLM_NIXL_SIDE_CHANNEL_HOST=${IP1} VLLM_NIXL_SIDE_CHANNEL_PORT=5600 UCX_NET_DEVICES=all vllm serve ...
# "Each vLLM worker needs a unique port on its host" (base + 100 x endpoint index here, nixl_side_channel_port); the
# host is "Set when prefiller and decoder are on different machines" (always this node's private IP here). The GPUs
# come from docker's --gpus (accelerator gpu.sh), so no CUDA_VISIBLE_DEVICES. UCX_NET_DEVICES=all only with the UCX backend (a UCX setting).
nixl_env_gpu() {
  local index=$3 ip
  ip=$(local_ip) || die "cannot read this node's private IP from instance metadata ($DI_IMDS_URL)"
  printf '%s\n' -e "VLLM_NIXL_SIDE_CHANNEL_HOST=$ip" \
    -e "VLLM_NIXL_SIDE_CHANNEL_PORT=$(nixl_side_channel_port "$index")"
  [[ $(nixl_backend) != UCX ]] || printf '%s\n' -e UCX_NET_DEVICES=all
  env_if VLLM_ENGINE_READY_TIMEOUT_S "${DI_READY_TIMEOUT_SECONDS:-}"
  env_if VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS "${DI_EXECUTE_MODEL_TIMEOUT_SECONDS:-}"
  env_if PYTHONHASHSEED "${DI_PYTHONHASHSEED:-}"
  # vLLM's compile caches (torch.compile, CUDA graphs) live under VLLM_CACHE_ROOT: kept on NVMe under the key S3 syncs.
  printf '%s\n' -e "VLLM_CACHE_ROOT=/data/compiled/$(compiled_key)"
}

# nixl_backend: the NIXL backend of this deployment (LIBFABRIC when node.env leaves it empty, as on Neuron).
nixl_backend() { printf '%s\n' "${DI_NIXL_BACKEND:-LIBFABRIC}"; }

# engine_env ROLE RANGE INDEX: the family's environment (RANGE: NeuronCores or GPU indices, per DI_ACCELERATOR).
engine_env() { "nixl_env_${DI_ACCELERATOR:-neuron}" "$@"; }

# engine_server_args ROLE PORT: `vllm serve` as in the DI tutorial, model staged locally and served under its id.
# The tutorial's GPT-OSS MoE flags (--data-parallel-size, --enable-expert-parallel, --dtype, --hf-overrides,
# --no-disable-hybrid-kv-cache-manager, --max-logprobs) are model-specific; a basic server omits them (design L263-264).
engine_server_args() {
  local role=$1 port=$2
  printf '%s\n' serve "/data/models/$DI_MODEL_ID" \
    --served-model-name "$DI_MODEL_ID" \
    --port "$port" \
    --tensor-parallel-size "$DI_TENSOR_PARALLEL" \
    --max-model-len "$DI_MAX_MODEL_LEN" \
    --max-num-seqs "$DI_MAX_NUM_SEQS"
  # Empty in node.env = vLLM's own default (the stack leaves it empty on GPU).
  [[ -z ${DI_MAX_NUM_BATCHED_TOKENS:-} ]] || printf '%s\n' --max-num-batched-tokens "$DI_MAX_NUM_BATCHED_TOKENS"
  [[ -z ${DI_BLOCK_SIZE:-} ]] || printf '%s\n' --block-size "$DI_BLOCK_SIZE"
  [[ -z ${DI_OPTIMIZATION_LEVEL:-} ]] || printf '%s\n' --optimization-level "$DI_OPTIMIZATION_LEVEL"
  "nixl_args_${DI_ACCELERATOR:-neuron}" "$role"
}

# nixl_args_neuron ROLE: the plugin's neuron_config and the tutorial's KV transfer config.
nixl_args_neuron() {
  local role=$1
  # `--override-neuron-config` is gone; the plugin takes --additional-config '{"neuron_config": {...}}'.
  [[ -z ${DI_NEURON_CONFIG:-} ]] || printf '%s\n' --additional-config "{\"neuron_config\": $DI_NEURON_CONFIG}"
  [[ $role == standard ]] && return 0
  # kv_buffer_device is literally "cuda" on Neuron in every Neuron example (the plugin accepts only that value).
  printf '%s\n' --kv-transfer-config "$(printf '{"kv_connector": "%s", "kv_role": "%s", "kv_buffer_device": "cuda", "kv_connector_extra_config": {"backends": ["LIBFABRIC"]}}' \
    "${DI_KV_CONNECTOR:?}" "$(kv_role "$role")")"
}

# nixl_args_gpu ROLE: the guide's multi-instance servers
#   --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_producer","kv_load_failure_policy":"fail"}'
# ("kv_consumer" for the decoders) with the backend chosen as "Selecting a NIXL transport backend" shows:
#   "kv_connector_extra_config":{"backends":["LIBFABRIC"]}
# kv_load_failure_policy is left out: "fail (default)" in the guide, and a vLLM that predates the key would refuse it.
nixl_args_gpu() {
  local role=$1
  [[ $role == standard ]] && return 0
  printf '%s\n' --kv-transfer-config "$(printf '{"kv_connector":"%s","kv_role":"%s","kv_connector_extra_config":{"backends":["%s"]}}' \
    "${DI_KV_CONNECTOR:-NixlConnector}" "$(kv_role "$role")" "$(nixl_backend)")"
}

# engine_kv_hold_seconds ROLE: how long a server of ROLE may keep a finished request's KV blocks for a peer (0: it
# does not). A NixlConnector prefill answers once its one token is out, then keeps the prompt's blocks until the
# decode has read them over NIXL or VLLM_NIXL_ABORT_REQUEST_TIMEOUT (default 480 s) passes: request_finished sets
# `_reqs_need_send[request_id] = time.perf_counter() + envs.VLLM_NIXL_ABORT_REQUEST_TIMEOUT` and returns
# delay_free_blocks (vllm-project/vllm vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py@002a1057e9ae,
# NixlConnectorScheduler.request_finished; the default in vllm/envs.py). Upstream has no gauge of those pending sends
# (its NIXL metrics are transfer histograms and failure/expiry counters), but the held blocks stay allocated, so
# vllm:kv_cache_usage_perc stays above 0 until the decode has read them: ops/drain.sh waits on that, at most this long.
engine_kv_hold_seconds() { if [[ $1 == prefill ]]; then echo "${VLLM_NIXL_ABORT_REQUEST_TIMEOUT:-480}"; else echo 0; fi; }

# vLLM registers nothing: di-register keeps /workers/{prefill|decode}/IP/PORT in etcd while /health answers.
engine_self_registers() { false; }

# The setup guide's backend probe (L93-219): NIXL dlopens libfabric.so.1 and the libcuda.so.1 stub; when either is
# missing "NIXL reports `createBackend: unsupported backend 'LIBFABRIC'` ... and every server worker exits".
# nixl_probe BACKEND: the same probe for any backend (on GPU: the one DI_NIXL_BACKEND names).
nixl_probe() { printf "from nixl._api import nixl_agent, nixl_agent_config; nixl_agent('probe', nixl_agent_config(backends=['%s'])); print('%s OK')" "$1" "$1"; }

# engine_preflight: run the probe in the pulled image with the EFA devices, before any endpoint starts.
engine_preflight() {
  local out words devices=() probe=() backend
  backend=$(nixl_backend)
  words=$(uverbs_device_args)
  [[ -z $words ]] || mapfile -t devices <<<"$words"
  mapfile -t probe < <(accelerator_probe_args)
  out=$(docker run --rm "$(contained_args)" "${probe[@]}" "${devices[@]}" --entrypoint python "$DI_IMAGE" -c "$(nixl_probe "$backend")" 2>&1) &&
    [[ $out == *"$backend OK"* ]] ||
    fail "NIXL $backend backend unavailable in image $DI_IMAGE (libfabric.so.1 or the libcuda.so.1 stub missing?): $(tail -n 2 <<<"$out" | tr '\n' ' ')"
  log "NIXL $backend backend loads in $DI_IMAGE"
}

engine_prepare() { mkdir -p "$DI_DATA_DIR/compiled/$(compiled_key)"; }

# engine_compile KEY: the plugin has no separate compile step (NxDI's inference_demo is not in its images): a
# server compiles its graphs when it starts and keeps them in $VLLM_CACHE_ROOT/neuron/compile_cache, here
# /data/compiled/KEY. So this node's endpoints serving once is the compilation: wait for them as wait-ready.sh
# does (di-ready polled every READY_POLL_SECONDS), then the caller uploads the cache for every later worker.
engine_compile() { compile_by_serving; }

# engine_registry_fields ROLE INDEX: nothing beyond role and port in the etcd value.
engine_registry_fields() { :; }
