#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Compile the model as in the Neuron data-parallel tutorial (`inference_demo ... --compile-only`) inside the
# DLC, with this fleet's TP, batch = DI_MAX_NUM_SEQS and sequence length = DI_MAX_MODEL_LEN, then upload the
# artifacts to s3://$DI_BUCKET/compiled/$(compiled_key)/ where every worker looks first. Usage: compile.sh [--force]
set -euo pipefail
DI_LIB=${DI_LIB:-/opt/di/lib.sh}
# shellcheck source=../lib.sh
. "$DI_LIB"

COMPILE_PROMPT=${COMPILE_PROMPT:-What is annapurna labs?}

# inference_demo_args: the tutorial's flags with this deployment's shapes (container paths under /data).
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

main() {
  local force=0 key prefix dir args
  case ${1:-} in
    --force) force=1 ;;
    "") ;;
    *) die "usage: compile.sh [--force]" ;;
  esac
  load_node_env
  [[ $DI_ROLE != control ]] || die "compile runs on a worker, not the control host"
  key=$(compiled_key)
  prefix="s3://$DI_BUCKET/compiled/$key/"
  if ((!force)) && aws s3 ls --region "$DI_REGION" "$prefix" >/dev/null 2>&1; then
    echo "already compiled: $prefix (pass --force to compile again)"
    return 0
  fi
  [[ -e $DI_DATA_DIR/models/$DI_MODEL_ID/.complete ]] ||
    die "model not staged in $DI_DATA_DIR/models/$DI_MODEL_ID: let the worker finish its bootstrap first"
  dir="$DI_DATA_DIR/compiled/$key"
  mkdir -p "$dir"
  mapfile -t args < <(inference_demo_args "$key")
  log "compiling $DI_MODEL_ID: tp $DI_TENSOR_PARALLEL, batch $DI_MAX_NUM_SEQS, sequence $DI_MAX_MODEL_LEN"
  docker run --rm --privileged --network host -v "$DI_DATA_DIR:/data" \
    -e "NEURON_RT_VIRTUAL_CORE_SIZE=${DI_LNC:-1}" \
    -e NEURON_RT_EXEC_TIMEOUT=600 -e XLA_DENSE_GATHER_FACTOR=0 -e NEURON_RT_INSPECT_ENABLE=0 \
    --entrypoint inference_demo "$DI_IMAGE" "${args[@]}" || die "inference_demo failed (docker logs above)"
  [[ -n $(ls -A "$dir") ]] || die "inference_demo wrote nothing to $dir"
  retry aws s3 sync --only-show-errors --region "$DI_REGION" "$dir" "$prefix" || die "upload to $prefix failed"
  echo "compiled: $prefix"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
