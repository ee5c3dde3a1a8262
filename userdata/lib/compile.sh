#!/usr/bin/env bash
# Compiled artifacts: the key they are stored under (compiled/KEY in the bucket and on the NVMe), and compiling by
# serving for engines whose server compiles when it starts. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"
# shellcheck source=units.sh
. "${BASH_SOURCE[0]%/*}/units.sh"

# compiled_key: where compiled artifacts for this model/image/TP/batch/sequence length live under compiled/.
# Any change to one of them must not reuse another's NEFFs, so all five go into the hash.
compiled_key() {
  local model=${DI_MODEL_ID:?} image=${DI_IMAGE:?} tp=${DI_TENSOR_PARALLEL:?}
  local batch=${DI_MAX_NUM_SEQS:?} seq=${DI_MAX_MODEL_LEN:?} digest
  digest=$(printf '%s|%s|%s|%s|%s' "$model" "$image" "$tp" "$batch" "$seq" | sha256sum | cut -c1-12)
  printf '%s-tp%s-b%s-s%s-%s\n' "${model##*/}" "$tp" "$batch" "$seq" "$digest"
}

# compile_by_serving: for engines without a separate compile step (the server compiles its graphs when it starts and
# keeps them in VLLM_CACHE_ROOT): this node's endpoints serving once is the compilation. Wait for them as
# wait-ready.sh does, then the caller uploads the cache for every later worker.
compile_by_serving() {
  # Read here, not at source time: DI_READY_TIMEOUT_SECONDS comes from node.env, loaded after this file.
  local index wait=${COMPILE_WAIT_SECONDS:-${DI_READY_TIMEOUT_SECONDS:-3600}}
  while read -r index _; do
    systemctl is-active --quiet "$(unit_name "$index")" ||
      die "endpoint $index ($(unit_name "$index")) is not running; start it with /opt/di/di-restart $index, then compile again"
  done < <(endpoints)
  "$DI_HOME/ops/wait-ready.sh" "$wait" ||
    die "endpoints still compiling or failing after ${wait}s (journalctl -u di-vllm@INDEX)"
  log "every endpoint serves: its compile cache is complete"
}
