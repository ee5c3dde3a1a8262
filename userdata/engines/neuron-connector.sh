#!/usr/bin/env bash
# Engine `neuron-connector` (legacy): the Neuron DI tutorial's NeuronConnector in the vLLM 0.9.1 DLC, which
# registers its endpoints in etcd itself. Sourced by load_engine (lib/modules.sh); defines the engine_* functions only.
# Source: aws-neuron-sdk libraries/nxd-inference/tutorials/disaggregated-inference-tutorial.rst (seed 000,
# prefill L112-133, decode L155-176, baseline_server.sh L257-302).

# The DLC's ENTRYPOINT is `python /usr/local/bin/vllm_entrypoint.py`, which runs the command with
# subprocess.check_call and forwards no signal (aws-neuron/deep-learning-containers common/vllm_entrypoint.py),
# so `docker stop` never reached the tutorial's `bash -c "exec python3 ..."`. The server is the entrypoint itself,
# under docker's --init (tini forwards SIGTERM to it).
engine_entrypoint() { printf '%s\n' python3; }

# engine_device_args RANGE: --privileged, as the Neuron DI tutorial runs every container of this engine (seed 000
# L60-172: `docker run -d ... --privileged --device /dev/infiniband/uverbs0 ...`); this engine is kept as the
# tutorial runs it. Its containers still run under the slice that cannot reach instance metadata (lib/containment.sh).
engine_device_args() { printf '%s\n' --privileged; }

engine_env() {
  local role=$1 cores=$2
  printf '%s\n' -e "NEURON_RT_VISIBLE_CORES=$cores" -e "NEURON_COMPILED_ARTIFACTS=/data/compiled/$(compiled_key)"
  if lnc_applies; then
    # Trn2 defaults to LNC=2; say it explicitly so the core ranges mean what the config says. The NxDI tutorials
    # export NEURON_RT_VIRTUAL_CORE_SIZE=$LNC (seed 001 L93); the runtime and compiler read NEURON_LOGICAL_NC_CONFIG,
    # and the compiler must use the runtime's value ("You must compile your Models to use the LNC configuration set
    # by the Neuron Runtime environment variable"): about-neuron/arch/neuron-features/logical-neuroncore-config.rst
    printf '%s\n' -e "NEURON_RT_VIRTUAL_CORE_SIZE=$DI_LNC" -e "NEURON_LOGICAL_NC_CONFIG=$DI_LNC"
  fi
  if [[ $role == standard ]]; then
    # The tutorial's baseline (standard inference) server: `export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=2`
    # in baseline_server.sh (seed 000 L288), so DI and baseline are compared like for like.
    printf '%s\n' -e NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=2
  fi
}

# engine_server_args ROLE PORT: the tutorial's api_server words (seed 000 L124-133), model staged locally.
engine_server_args() {
  local role=$1 port=$2
  printf '%s\n' -m vllm.entrypoints.openai.api_server \
    --model "/data/models/$DI_MODEL_ID" \
    --served-model-name "$DI_MODEL_ID" \
    --max-num-seqs "$DI_MAX_NUM_SEQS" \
    --max-model-len "$DI_MAX_MODEL_LEN" \
    --tensor-parallel-size "$DI_TENSOR_PARALLEL" \
    --device neuron
  if [[ $role != standard ]]; then
    printf '%s\n' --speculative-max-model-len "$DI_MAX_MODEL_LEN" --override-neuron-config '{}' --kv-transfer-config \
      "$(printf '{"kv_connector":"NeuronConnector","kv_role":"%s","kv_buffer_size":%s,"etcd":"%s"}' \
        "$(kv_role "$role")" "${DI_KV_BUFFER_SIZE:?}" "$DI_ETCD")"
  else
    printf '%s\n' --override-neuron-config '{}'
  fi
  printf '%s\n' --port "$port"
}

# NeuronConnector writes /workers/{prefill|decode}/IP/PORT into etcd from inside vLLM.
engine_self_registers() { true; }

# engine_kv_hold_seconds ROLE: 0. Whether NeuronConnector keeps blocks for the decode after its prefill answers is not
# documented and its source is not public; DiStack waits on vLLM's running/waiting counts only (UNVERIFIED: if it did
# keep them, a drained prefill's last requests would fail at their decode).
engine_kv_hold_seconds() { echo 0; }

# Nothing beyond the common preflight (Neuron devices, EFA, NVMe).
engine_preflight() { :; }

# Nothing engine-specific before a start (the stale runtime lock is removed for every engine by di-run).
engine_prepare() { :; }

COMPILE_PROMPT=${COMPILE_PROMPT:-What is annapurna labs?}

# inference_demo_args KEY: the data-parallel tutorial's compile flags with this deployment's shapes (seed 001).
inference_demo_args() {
  local key=$1
  printf '%s\n' --model-type llama --task-type causal-lm run \
    --model-path "/data/models/$DI_MODEL_ID" \
    --compiled-model-path "/data/compiled/$key" \
    --torch-dtype bfloat16 \
    --start_rank_id 0 \
    --local_ranks_size "$DI_TENSOR_PARALLEL" \
    --tp-degree "$DI_TENSOR_PARALLEL" \
    --batch-size "$DI_MAX_NUM_SEQS" \
    --max-context-length "$DI_MAX_MODEL_LEN" \
    --seq-len "$DI_MAX_MODEL_LEN" \
    --on-device-sampling --top-k 1 --do-sample --fused-qkv --qkv-kernel-enabled --attn-kernel-enabled \
    --mlp-kernel-enabled --pad-token-id 2 --compile-only \
    --prompt "$COMPILE_PROMPT"
}

# engine_compile KEY: NxDI's `inference_demo --compile-only` inside the image writes the NEFFs to
# /data/compiled/KEY (NEURON_COMPILED_ARTIFACTS of every endpoint), as in the data-parallel tutorial.
engine_compile() {
  local key=$1 args
  mapfile -t args < <(inference_demo_args "$key")
  log "compiling $DI_MODEL_ID: tp $DI_TENSOR_PARALLEL, batch $DI_MAX_NUM_SEQS, sequence $DI_MAX_MODEL_LEN"
  docker run --rm --privileged --network host "$(contained_args)" -v "$DI_DATA_DIR:/data" \
    -e "NEURON_RT_VIRTUAL_CORE_SIZE=${DI_LNC:-1}" \
    -e NEURON_RT_EXEC_TIMEOUT=600 -e XLA_DENSE_GATHER_FACTOR=0 -e NEURON_RT_INSPECT_ENABLE=0 \
    --entrypoint inference_demo "$DI_IMAGE" "${args[@]}" || die "inference_demo failed (docker logs above)"
}

# engine_registry_fields ROLE INDEX: nothing beyond role and port in the etcd value.
engine_registry_fields() { :; }
