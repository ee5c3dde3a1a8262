#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# LLMPerf as in the Neuron DI and data-parallel tutorials, from the control host against the proxy on localhost;
# results to s3://$DI_BUCKET/bench/ROLE-ID:INSTANCE-ID/<run-id>/ (lib/scope.sh).
# Usage: bench.sh RUN_ID MEAN_IN STDDEV_IN MEAN_OUT STDDEV_OUT CONCURRENCY MAX_REQUESTS
#
# LLMPerf runs on the host, in a virtualenv of the host's CPython 3.11, not in the deployment's image: that image's
# Python differs by engine (3.10 to 3.14), and the DiStack proxy's control host never pulls it (tens of GB). Two
# transient systemd services (systemd-run(1)) run it, each as a user of its own (DynamicUser=), in the slice whose
# memory bound and instance-metadata rule the control host's containers share (units/di-containers-control.slice,
# lib/containment.sh), and with systemd's own address filter (IPAddressDeny=, systemd.resource-control(5)):
#   setup  makes the virtualenv from the lock, fetches LLMPerf by commit and the tokenizer it counts with (network:
#          GitHub, PyPI, Hugging Face; instance metadata refused), kept between runs under CacheDirectory=;
#   run    the benchmark itself, which talks only to this host: the proxy on localhost, and Ray's own processes,
#          which reach each other on the host's addresses. No other host reaches Ray's ports, and nothing leaves.
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
# (`git rev-parse 'v2.0^{commit}'` in ray-project/llmperf). The setup checks it got that commit.
LLMPERF_COMMIT=${LLMPERF_COMMIT:-1eac866f91773bff401f96e74c1cf20c38778329}
# Its Python dependencies by hash: userdata/llmperf/requirements.lock, which `make lock` resolves for this Python and
# platform (the Makefile's LLMPERF_LOCK_FLAGS: CPython 3.11, x86_64, Amazon Linux 2023's glibc; tests/test_llmperf_lock.py
# holds them equal). LLMPerf's pyproject.toml@1eac866f declares requires-python ">=3.8, <3.11"; it is installed with
# --ignore-requires-python on 3.11, the interpreter Amazon Linux 2023 packages beside its 3.9 (which the lock's
# requests and numpy no longer support). docs/operating.md#benchmark says what was run to check it.
LLMPERF_PYTHON=3.11
LLMPERF_PYTHON_BIN=${LLMPERF_PYTHON_BIN:-python3.11}
LLMPERF_LOCK_DIR=${LLMPERF_LOCK_DIR:-$DI_HOME/llmperf}
# Where systemd puts the services' CacheDirectory= and StateDirectory= (`di-bench` under /var/cache and /var/lib,
# systemd.exec(5)); the run's results are read from the state directory once it ends.
BENCH_STATE_DIR=${BENCH_STATE_DIR:-/var/lib/di-bench}
BENCH_WORK_DIR=${BENCH_WORK_DIR:-/tmp}
# The tokenizer token_benchmark_ray.py counts tokens with, whatever the model (L59-61; src/llmperf/utils.py L83-85).
LLMPERF_TOKENIZER=hf-internal-testing/llama-tokenizer
# The DI tutorial's sampling parameters.
DEFAULT_SAMPLING='{"top_k": 50, "top_p": 0.9, "temperature": 0.7}'
BENCH_SAMPLING=${BENCH_SAMPLING:-$DEFAULT_SAMPLING}

# llmperf_setup_script: the setup service's script (environment: LLMPERF_*, CACHE_DIRECTORY from systemd). One
# virtualenv per lock and commit, marked complete only at its end, so a setup cut short is redone, never used. The
# lock is installed with --require-hashes (every package pinned and hash-checked, its dependencies included: pip
# refuses one the lock lacks) and wheels only; then LLMPerf itself with --no-deps (its declared dependencies are wider
# than the token benchmark needs, userdata/llmperf/requirements.txt says which it imports), built by the locked
# setuptools (--no-build-isolation) with nothing fetched for it (--no-index), and editable, as its README installs it:
# it declares no package data, so a plain install leaves out the sonnet.txt its prompts are drawn from.
llmperf_setup_script() {
  cat <<'SCRIPT'
set -euo pipefail
export HOME=$CACHE_DIRECTORY
have=$("$LLMPERF_PYTHON_BIN" -c "import sys; print(sys.version_info[0], sys.version_info[1])")
[[ $have == "${LLMPERF_PYTHON/./ }" ]] || { echo "LLMPerf: its lock is for Python $LLMPERF_PYTHON," \
  "$LLMPERF_PYTHON_BIN is Python ${have/ /.}" >&2; exit 1; }
venv=$CACHE_DIRECTORY/venv-$LLMPERF_KEY
if [[ ! -e $venv/complete ]]; then
  rm -rf "$CACHE_DIRECTORY"/venv-*
  "$LLMPERF_PYTHON_BIN" -m venv "$venv"
  git init --quiet "$venv/llmperf"
  git -C "$venv/llmperf" fetch --quiet --depth 1 "$LLMPERF_REPO" "$LLMPERF_COMMIT"
  git -C "$venv/llmperf" checkout --quiet --detach FETCH_HEAD
  head=$(git -C "$venv/llmperf" rev-parse HEAD)
  [[ $head == "$LLMPERF_COMMIT" ]] || { echo "LLMPerf: fetched $head, expected $LLMPERF_COMMIT" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --require-hashes --only-binary :all: -r "$LLMPERF_LOCK"
  "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index --ignore-requires-python \
    --editable "$venv/llmperf"
  touch "$venv/complete"
fi
HF_HOME=$CACHE_DIRECTORY/hf "$venv/bin/python" -c \
  'import sys; from transformers import LlamaTokenizerFast; LlamaTokenizerFast.from_pretrained(sys.argv[1])' \
  "$LLMPERF_TOKENIZER"
SCRIPT
}

# llmperf_run_script: the run service's script (arguments: model, the six shapes, the sampling parameters). Its
# options are LLMPerf@1eac866f's own (token_benchmark_ray.py's argparse): it has no --tokenizer; the tutorials'
# patched LLMPerf took one, and argparse refuses an option it does not know. The tokenizer comes from the setup's
# cache (HF_HUB_OFFLINE: this service reaches no other host).
llmperf_run_script() {
  cat <<'SCRIPT'
set -euo pipefail
venv=$CACHE_DIRECTORY/venv-$LLMPERF_KEY
[[ -e $venv/complete ]] || { echo "LLMPerf: no complete setup at $venv" >&2; exit 1; }
rm -rf "$STATE_DIRECTORY/results" && mkdir "$STATE_DIRECTORY/results"
cd "$STATE_DIRECTORY"
export HOME=$STATE_DIRECTORY HF_HOME=$CACHE_DIRECTORY/hf HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec "$venv/bin/python" "$venv/llmperf/token_benchmark_ray.py" --model "$1" \
  --mean-input-tokens "$2" --stddev-input-tokens "$3" --mean-output-tokens "$4" --stddev-output-tokens "$5" \
  --num-concurrent-requests "$6" --max-num-completed-requests "$7" --timeout 1720000 \
  --results-dir "$STATE_DIRECTORY/results" --llm-api openai --additional-sampling-params "$8"
SCRIPT
}

# llmperf_key: names the virtualenv after the lock's content and LLMPerf's commit: a new lock or commit, a new one.
llmperf_key() {
  local lock
  lock=$(sha256sum "$LLMPERF_LOCK_DIR/requirements.lock") || return 1
  printf '%s-%s\n' "${lock:0:12}" "${LLMPERF_COMMIT:0:12}"
}

# host_addresses: this host's own IPv4 addresses (every interface's, the control plane's fixed one included), the
# ones Ray's processes use to reach each other.
host_addresses() { ip -o -4 addr show scope global | awk '{ split($4, a, "/"); print a[1] }'; }

# run_service NAME ARG...: one transient service as described at the top, waited for; its output is this script's.
run_service() {
  local name=$1
  shift
  systemd-run --unit "di-bench-$name" --wait --collect --quiet --pipe \
    -p DynamicUser=yes -p CacheDirectory=di-bench -p StateDirectory=di-bench -p PrivateTmp=yes \
    -p Slice="$CONTROL_CONTAINER_SLICE" -p IPAddressDeny="$IMDS_ADDRESSES_V4 $IMDS_ADDRESSES_V6" \
    --setenv=LLMPERF_REPO="$LLMPERF_REPO" --setenv=LLMPERF_COMMIT="$LLMPERF_COMMIT" \
    --setenv=LLMPERF_PYTHON="$LLMPERF_PYTHON" --setenv=LLMPERF_PYTHON_BIN="$(command -v "$LLMPERF_PYTHON_BIN")" \
    --setenv=LLMPERF_LOCK="$LLMPERF_LOCK_DIR/requirements.lock" --setenv=LLMPERF_KEY="$LLMPERF_KEY" \
    --setenv=LLMPERF_TOKENIZER="$LLMPERF_TOKENIZER" "$@"
}

# secrets_env_file FILE: the key the proxy asks for (LLMPerf's OpenAI client sends OPENAI_API_KEY as a Bearer token;
# EMPTY when the proxy needs none), never on a command line: systemd reads the file (EnvironmentFile=) as root.
secrets_env_file() {
  local file=$1 api_key=EMPTY
  : >"$file"
  chmod 0600 "$file"
  if [[ -n ${DI_PROXY_API_KEY_SECRET:-} ]]; then
    api_key=$(secret_value "$DI_PROXY_API_KEY_SECRET" "${PROXY_API_KEY_FIELDS[@]}") || die "$api_key"
  fi
  printf 'OPENAI_API_KEY=%s\n' "$api_key" >>"$file"
}

# host_tools: git and the Python the lock is for, from Amazon Linux 2023's repositories when missing (the legacy
# engine's control host runs no Python 3.11 of its own).
host_tools() {
  local tool
  for tool in git "$LLMPERF_PYTHON_BIN"; do
    dnf_tool "$tool" || die "cannot install $tool for LLMPerf (dnf)"
  done
}

main() {
  (($# == 7)) || die "usage: bench.sh RUN_ID MEAN_IN STDDEV_IN MEAN_OUT STDDEV_OUT CONCURRENCY MAX_REQUESTS"
  local run_id=$1 uri folder words allow=() address
  [[ $run_id =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run id '$run_id'"
  load_node_env
  [[ $DI_ROLE == control ]] || die "bench runs on the control host (it calls the proxy on localhost)"
  # Before the run: a node that may not upload its results should not spend the benchmark first.
  folder=$(own_prefix bench/) || exit 1
  [[ -s $LLMPERF_LOCK_DIR/requirements.lock ]] || die "no LLMPerf lock at $LLMPERF_LOCK_DIR/requirements.lock"
  LLMPERF_KEY=$(llmperf_key) || die "cannot read $LLMPERF_LOCK_DIR/requirements.lock"
  host_tools
  # The slice's memory bound and the firewall rule keeping it from instance metadata (units/di-containers-control.slice).
  words=$(contain_imds "$CONTROL_CONTAINER_SLICE") || die "$words: LLMPerf would reach instance metadata, not started"
  make_scratch "$BENCH_WORK_DIR" di-bench
  secrets_env_file "$SCRATCH/secrets.env"
  log "LLMPerf setup: lock and commit $LLMPERF_KEY"
  run_service setup bash -c "$(llmperf_setup_script)" || die "LLMPerf setup failed (journalctl -u di-bench-setup)"
  for address in 127.0.0.0/8 ::1/128 $(host_addresses); do allow+=(-p "IPAddressAllow=$address"); done
  ((${#allow[@]} > 2)) || die "no address of this host found (ip -4 addr): Ray's processes could not reach each other"
  log "LLMPerf run $run_id: input $2±$3, output $4±$5 tokens, concurrency $6, $7 requests"
  run_service run -p IPAddressDeny=any "${allow[@]}" -p EnvironmentFile="$SCRATCH/secrets.env" \
    --setenv=OPENAI_API_BASE="http://localhost:${DI_PROXY_PORT:-8000}/v1" \
    bash -c "$(llmperf_run_script)" llmperf "$DI_MODEL_ID" "$2" "$3" "$4" "$5" "$6" "$7" "$BENCH_SAMPLING" ||
    die "LLMPerf failed (journalctl -u di-bench-run)"
  uri="$folder$run_id/"
  retry aws s3 cp --recursive --only-show-errors --region "$DI_REGION" "$BENCH_STATE_DIR/results" "$uri" ||
    die "upload to $uri failed"
  echo "$uri"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
