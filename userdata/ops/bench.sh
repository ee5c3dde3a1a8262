#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# LLMPerf as in the Neuron DI and data-parallel tutorials, from the control host against the proxy, in the
# DLC with host networking; results to s3://$DI_BUCKET/bench/ROLE-ID:INSTANCE-ID/<run-id>/ (lib/scope.sh).
# Usage: bench.sh RUN_ID MEAN_IN STDDEV_IN MEAN_OUT STDDEV_OUT CONCURRENCY MAX_REQUESTS
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/secrets.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/scope.sh"
. "$DI_LIB_DIR/containment.sh"

LLMPERF_REPO=${LLMPERF_REPO:-https://github.com/ray-project/llmperf.git}
# LLMPerf by commit, not by its mutable tag: v2.0 is 1eac866f91773bff401f96e74c1cf20c38778329
# (`git rev-parse 'v2.0^{commit}'` in ray-project/llmperf). The clone checks it got that commit.
LLMPERF_COMMIT=${LLMPERF_COMMIT:-1eac866f91773bff401f96e74c1cf20c38778329}
LLMPERF_DIR=${LLMPERF_DIR:-/tmp/llmperf}
# Its Python dependencies by hash: userdata/llmperf/requirements.lock, which `make lock` resolves for this Python
# and platform (the Makefile's LLMPERF_LOCK_FLAGS; tests/test_llmperf_lock.py holds the two equal). LLMPerf's
# pyproject.toml@1eac866f declares requires-python ">=3.8, <3.11" and publishes no lock: its Python is 3.10, the
# legacy engine's DLC (0.9.1-neuronx-py310, ubuntu22.04, x86_64). An image with another Python is refused before
# anything is installed, naming both versions.
LLMPERF_PYTHON=3.10
LLMPERF_LOCK_DIR=${LLMPERF_LOCK_DIR:-$DI_HOME/llmperf}
BENCH_WORK_DIR=${BENCH_WORK_DIR:-/tmp}
# The DI tutorial's sampling parameters.
DEFAULT_SAMPLING='{"top_k": 50, "top_p": 0.9, "temperature": 0.7}'
BENCH_SAMPLING=${BENCH_SAMPLING:-$DEFAULT_SAMPLING}
# llmperf_script: what runs inside the container (positional arguments carry every value). The lock is installed
# with --require-hashes (every package pinned and hash-checked, its dependencies included: pip refuses one the lock
# lacks) and wheels only; then LLMPerf itself with --no-deps (its own declared dependencies are wider than the
# token benchmark needs, userdata/llmperf/requirements.txt says which it imports), built by the locked setuptools
# (--no-build-isolation) and nothing fetched for it (--no-index). Its options are LLMPerf@1eac866f's own
# (token_benchmark_ray.py's argparse): it has no --tokenizer, and counts tokens with the Llama tokenizer
# hf-internal-testing/llama-tokenizer whatever the model (token_benchmark_ray.py L59-61, src/llmperf/utils.py L83-85);
# the tutorials' patched LLMPerf took one, and argparse refuses an option it does not know.
llmperf_script() {
  cat <<'SCRIPT'
set -euo pipefail
have=$(python -c "import sys; print(sys.version_info[0], sys.version_info[1])")
[[ $have == "${LLMPERF_PYTHON/./ }" ]] || { echo "LLMPerf: its lock is for Python $LLMPERF_PYTHON" \
  "(LLMPerf@${LLMPERF_COMMIT:0:8} requires <3.11), this image has Python ${have/ /.}" >&2; exit 1; }
git init --quiet "$LLMPERF_DIR"
cd "$LLMPERF_DIR"
git fetch --quiet --depth 1 "$LLMPERF_REPO" "$LLMPERF_COMMIT"
git checkout --quiet --detach FETCH_HEAD
head=$(git rev-parse HEAD)
[[ $head == "$LLMPERF_COMMIT" ]] || { echo "LLMPerf: fetched $head, expected $LLMPERF_COMMIT" >&2; exit 1; }
python -m pip install --quiet --require-hashes --only-binary :all: -r "$LLMPERF_LOCK"
python -m pip install --quiet --no-deps --no-build-isolation --no-index .
exec python token_benchmark_ray.py --model "$1" \
  --mean-input-tokens "$2" --stddev-input-tokens "$3" --mean-output-tokens "$4" --stddev-output-tokens "$5" \
  --num-concurrent-requests "$6" --max-num-completed-requests "$7" --timeout 1720000 \
  --results-dir /results --llm-api openai --additional-sampling-params "$8"
SCRIPT
}

# image_python IMAGE: the Python a DLC tag names (`...-py310-...` is 3.10), or nothing for a tag that names none.
image_python() {
  [[ ${1##*:} =~ -py3([0-9]+)- ]] && printf '3.%s\n' "${BASH_REMATCH[1]}"
  return 0
}

# secrets_env_file FILE: the token for the gated tokenizer and the key the proxy asks for (LLMPerf's OpenAI
# client sends OPENAI_API_KEY as a Bearer token; EMPTY when the proxy needs none), never on a command line.
secrets_env_file() {
  local file=$1 token api_key=EMPTY
  : >"$file"
  chmod 0600 "$file"
  if [[ -n ${DI_HF_TOKEN_SECRET:-} ]]; then
    token=$(secret_value "$DI_HF_TOKEN_SECRET" HF_TOKEN hf_token token) || die "$token"
    printf 'HF_TOKEN=%s\n' "$token" >>"$file"
  fi
  if [[ -n ${DI_PROXY_API_KEY_SECRET:-} ]]; then
    api_key=$(secret_value "$DI_PROXY_API_KEY_SECRET" "${PROXY_API_KEY_FIELDS[@]}") || die "$api_key"
  fi
  printf 'OPENAI_API_KEY=%s\n' "$api_key" >>"$file"
}

main() {
  (($# == 7)) || die "usage: bench.sh RUN_ID MEAN_IN STDDEV_IN MEAN_OUT STDDEV_OUT CONCURRENCY MAX_REQUESTS"
  local run_id=$1 uri folder words python
  [[ $run_id =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run id '$run_id'"
  load_node_env
  [[ $DI_ROLE == control ]] || die "bench runs on the control host (it calls the proxy on localhost)"
  # Before the image is pulled (the DiStack proxy's control host never pulled it): the in-container check covers a
  # tag that names no Python.
  python=$(image_python "$DI_IMAGE")
  [[ -z $python || $python == "$LLMPERF_PYTHON" ]] || die "LLMPerf runs in the deployment's image, whose Python is" \
    "$python ($DI_IMAGE); its lock and LLMPerf@${LLMPERF_COMMIT:0:8} (requires-python <3.11) need $LLMPERF_PYTHON:" \
    "an image with Python $LLMPERF_PYTHON, the legacy engine's 0.9.1-neuronx-py310 DLC (docs/operating.md#benchmark)"
  # Before the run: a node that may not upload its results should not spend the benchmark first.
  folder=$(own_prefix bench/) || exit 1
  make_scratch "$BENCH_WORK_DIR" di-bench
  mkdir -p "$SCRATCH/results"
  secrets_env_file "$SCRATCH/secrets.env"
  [[ -s $LLMPERF_LOCK_DIR/requirements.lock ]] || die "no LLMPerf lock at $LLMPERF_LOCK_DIR/requirements.lock"
  # Like every container of ours: no instance metadata; on the control host within its slice's memory bound, so a
  # large run cannot take etcd's memory (lib/containment.sh, units/di-containers-control.slice).
  words=$(contain_imds "$CONTROL_CONTAINER_SLICE") || die "$words: LLMPerf would reach instance metadata, not started"
  log "LLMPerf run $run_id: input $2±$3, output $4±$5 tokens, concurrency $6, $7 requests"
  docker run --rm --network host "$(contained_args "$CONTROL_CONTAINER_SLICE")" \
    --env-file "$SCRATCH/secrets.env" -v "$SCRATCH/results:/results" -v "$LLMPERF_LOCK_DIR:/llmperf-lock:ro" \
    -e "OPENAI_API_BASE=http://localhost:${DI_PROXY_PORT:-8000}/v1" \
    -e "LLMPERF_REPO=$LLMPERF_REPO" -e "LLMPERF_COMMIT=$LLMPERF_COMMIT" -e "LLMPERF_DIR=$LLMPERF_DIR" \
    -e "LLMPERF_PYTHON=$LLMPERF_PYTHON" -e LLMPERF_LOCK=/llmperf-lock/requirements.lock \
    --entrypoint bash "$DI_IMAGE" -c "$(llmperf_script)" llmperf \
    "$DI_MODEL_ID" "$2" "$3" "$4" "$5" "$6" "$7" "$BENCH_SAMPLING" || die "LLMPerf failed"
  uri="$folder$run_id/"
  retry aws s3 cp --recursive --only-show-errors --region "$DI_REGION" "$SCRATCH/results" "$uri" || die "upload to $uri failed"
  echo "$uri"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
