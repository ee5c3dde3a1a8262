#!/usr/bin/env bash
# Shared helpers for every DiStack node script. Sourced, never run; defines functions only.
# Knobs are environment variables with defaults so tests can shrink waits and point at fakes.

DI_NODE_ENV=${DI_NODE_ENV:-/etc/di/node.env}
# Where the node scripts are (the engine modules live beside them, in engines/).
DI_SCRIPTS_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
DI_DEV_ROOT=${DI_DEV_ROOT:-/dev}
# Written by the update runbook (new image or model) and read after node.env, so it wins.
DI_OVERRIDE_ENV=${DI_OVERRIDE_ENV:-/etc/di/override.env}
RETRY_ATTEMPTS=${RETRY_ATTEMPTS:-5}
RETRY_SLEEP=${RETRY_SLEEP:-10}

log() { printf '%s [%s] %s\n' "$(date -u +%FT%TZ)" "${DI_LOG_TAG:-${0##*/}}" "$*" >&2; }

die() { log "ERROR: $*"; exit 1; }

# retry CMD...: run CMD up to RETRY_ATTEMPTS times, RETRY_SLEEP seconds apart; return its last status.
retry() {
  local attempt=1 status
  while true; do
    "$@" && return 0
    status=$?
    ((attempt >= RETRY_ATTEMPTS)) && { log "gave up after $attempt attempts: $*"; return "$status"; }
    log "attempt $attempt failed ($status), retrying in ${RETRY_SLEEP}s: $*"
    attempt=$((attempt + 1))
    sleep "$RETRY_SLEEP"
  done
}

# load_node_env: export every per-deployment value (node.env, then the update override if any).
load_node_env() {
  [[ -r $DI_NODE_ENV ]] || die "cannot read $DI_NODE_ENV (user data did not run, or not as root)"
  set -a
  # shellcheck source=/dev/null
  . "$DI_NODE_ENV"
  # shellcheck source=/dev/null
  [[ -r $DI_OVERRIDE_ENV ]] && . "$DI_OVERRIDE_ENV"
  set +a
}

# endpoints: one line per endpoint of this worker, "index role cores port" (from DI_ENDPOINTS).
endpoints() {
  local index=0 spec role cores port
  for spec in ${DI_ENDPOINTS:-}; do
    IFS=: read -r role cores port <<<"$spec"
    printf '%s %s %s %s\n' "$index" "$role" "$cores" "$port"
    index=$((index + 1))
  done
}

# compiled_key: where compiled artifacts for this model/image/TP/batch/sequence length live under compiled/.
# Any change to one of them must not reuse another's NEFFs, so all five go into the hash.
compiled_key() {
  local model=${DI_MODEL_ID:?} image=${DI_IMAGE:?} tp=${DI_TENSOR_PARALLEL:?}
  local batch=${DI_MAX_NUM_SEQS:?} seq=${DI_MAX_MODEL_LEN:?} digest
  digest=$(printf '%s|%s|%s|%s|%s' "$model" "$image" "$tp" "$batch" "$seq" | sha256sum | cut -c1-12)
  printf '%s-tp%s-b%s-s%s-%s\n' "${model##*/}" "$tp" "$batch" "$seq" "$digest"
}

# ---------------------------------------------------------------------------------------------------------
# Paths: every location a node script touches, overridable so tests run unprivileged in a temp dir.
DI_HOME=${DI_HOME:-/opt/di}
DI_SYSTEMD_DIR=${DI_SYSTEMD_DIR:-/etc/systemd/system}
DI_RUN_DIR=${DI_RUN_DIR:-/run/di}
DI_KV_LOCK=${DI_KV_LOCK:-/tmp/nrt_kv_store_server.lock}
DI_DATA_DIR=${DI_DATA_DIR:-/mnt/di-data}
DI_IMDS_URL=${DI_IMDS_URL:-http://169.254.169.254}
ETCD_WAIT_SECONDS=${ETCD_WAIT_SECONDS:-600}
ETCD_WAIT_SLEEP=${ETCD_WAIT_SLEEP:-5}

# imds PATH: one instance-metadata value (IMDSv2 is required by the launch templates).
imds() {
  local token
  token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$DI_IMDS_URL/latest/api/token") || return 1
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "$DI_IMDS_URL/latest/meta-data/$1"
}

instance_id() { if [[ -n ${DI_INSTANCE_ID:-} ]]; then printf '%s\n' "$DI_INSTANCE_ID"; else imds instance-id; fi; }

# local_ip: the address NeuronConnector registers in etcd (the primary interface; host networking).
local_ip() { if [[ -n ${DI_LOCAL_IP:-} ]]; then printf '%s\n' "$DI_LOCAL_IP"; else imds local-ipv4; fi; }

# signal_cfn SUCCESS|FAILURE [REASON]: answer the group's CreationPolicy. SignalResource has no reason field,
# so a short form of the reason rides in the UniqueId (max 64 characters), which the stack event shows:
# https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_SignalResource.html
# After the stack is created (scale-out, replacement) CloudFormation rejects signals; that is not an error.
signal_cfn() {
  local status=$1 reason=${2:-} id unique
  [[ -n ${DI_SIGNAL_RESOURCE:-} ]] || { log "no DI_SIGNAL_RESOURCE; not signalling $status"; return 0; }
  id=$(instance_id 2>/dev/null) || id=unknown-instance
  unique=$id
  if [[ -n $reason ]]; then
    unique="$id:$(printf '%s' "$reason" | tr -cs 'A-Za-z0-9._-' '-')"
  fi
  unique=${unique:0:64}
  if aws cloudformation signal-resource --region "${DI_REGION:?}" --stack-name "${DI_STACK:?}" \
      --logical-resource-id "$DI_SIGNAL_RESOURCE" --unique-id "$unique" --status "$status" >/dev/null; then
    log "signalled $status to $DI_STACK/$DI_SIGNAL_RESOURCE as $unique"
  else
    log "could not signal $status (the stack is probably no longer waiting for this group)"
  fi
}

# unit_name INDEX: the systemd unit serving endpoint INDEX on a worker.
unit_name() { printf 'di-vllm@%s.service\n' "$1"; }

# registrar_unit INDEX: the unit keeping endpoint INDEX in etcd when nothing else does (see di-register).
registrar_unit() { printf 'di-register@%s.service\n' "$1"; }

# make_scratch PARENT NAME: a fresh directory PARENT/NAME.XXXXXX in SCRATCH, removed when the script exits
# (call it in the script's own shell, not in a $(...) subshell, so the EXIT trap and SCRATCH belong to it).
SCRATCH=""
make_scratch() {
  SCRATCH=$(mktemp -d "$1/$2.XXXXXX")
  trap remove_scratch EXIT
}
remove_scratch() { [[ -z $SCRATCH ]] || rm -rf "$SCRATCH"; }

# container_name INDEX: the container behind endpoint INDEX.
container_name() { printf 'di-vllm-%s\n' "$1"; }

# etcd_url PATH: the etcd v3 JSON gateway of this deployment.
etcd_url() { printf 'http://%s%s\n' "${DI_ETCD:?}" "$1"; }

# etcd_healthy: true when etcd answers its health check.
etcd_healthy() { curl -fsS --max-time 5 "$(etcd_url /health)" 2>/dev/null | grep -q '"health": *"true"'; }

# wait_for_etcd: block until etcd is healthy, at most ETCD_WAIT_SECONDS (workers start only after it).
wait_for_etcd() {
  local deadline=$((SECONDS + ETCD_WAIT_SECONDS))
  until etcd_healthy; do
    ((SECONDS < deadline)) || { log "etcd at $DI_ETCD not healthy after ${ETCD_WAIT_SECONDS}s"; return 1; }
    log "waiting for etcd at $DI_ETCD"
    sleep "$ETCD_WAIT_SLEEP"
  done
  log "etcd at $DI_ETCD is healthy"
}

# etcd_registered ROLE IP PORT: true when NeuronConnector registered /workers/ROLE/IP/PORT.
etcd_registered() {
  local key body
  key=$(printf '/workers/%s/%s/%s' "$1" "$2" "$3" | base64 -w0)
  body=$(curl -fsS --max-time 5 -X POST -d "{\"key\":\"$key\",\"count_only\":true}" \
    "$(etcd_url /v3/kv/range)" 2>/dev/null) || return 1
  [[ $body =~ \"count\":\ *\"?([0-9]+) ]] && ((BASH_REMATCH[1] > 0))
}

# health_code PORT: HTTP status of a local vLLM endpoint's /health (000 when nothing answers).
health_code() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1/health" 2>/dev/null) || true
  printf '%s\n' "${code:-000}"
}

# read_secret VAR ID FIELD...: the string of Secrets Manager secret ID into VAR; a JSON secret (the console's
# key/value form) gives its first FIELD that holds a string. On failure returns 1 with the reason in SECRET_ERROR.
# The value passes through this shell's memory only: never argv, never a log line.
# shellcheck disable=SC2034  # SECRET_ERROR is read by the caller
read_secret() {
  local _rs_var=$1 _rs_id=$2 _rs_value _rs_fields
  shift 2
  SECRET_ERROR=""
  _rs_value=$(aws secretsmanager get-secret-value --region "$DI_REGION" --secret-id "$_rs_id" \
    --query SecretString --output text 2>/dev/null) || {
    SECRET_ERROR="cannot read secret '$_rs_id' from Secrets Manager (missing, or the instance role lacks access)"
    return 1
  }
  if [[ $_rs_value == \{* ]]; then
    printf -v _rs_fields '%s, ' "$@"
    _rs_value=$(python3 -c 'import json, sys
d = json.load(sys.stdin)
print(next(d[k] for k in sys.argv[1:] if isinstance(d.get(k), str)))' "$@" <<<"$_rs_value" 2>/dev/null) || {
      SECRET_ERROR="secret '$_rs_id' is JSON without any of the keys ${_rs_fields%, }"
      return 1
    }
  fi
  [[ -n $_rs_value ]] || { SECRET_ERROR="secret '$_rs_id' is empty"; return 1; }
  printf -v "$_rs_var" '%s' "$_rs_value"
}

# The JSON keys a proxy API key secret may hold the key under; diproxy/auth.py reads the same ones.
# shellcheck disable=SC2034  # read by the scripts that source this library
PROXY_API_KEY_FIELDS=(api_key apiKey API_KEY key)

# fail REASON: stop the bootstrap with a reason the EXIT handler reports to CloudFormation and the logs.
# The reason goes to a file so a failure inside a subshell still reaches the handler.
fail() {
  mkdir -p "$DI_RUN_DIR"
  printf '%s\n' "$*" >"$DI_RUN_DIR/bootstrap-failure"
  die "$*"
}

# report_to_cloudwatch MESSAGE: best effort, one event in the deployment's node log group.
report_to_cloudwatch() {
  local stream events
  [[ -n ${DI_LOG_GROUP_NODES:-} ]] || return 0
  stream="${DI_FLEET:-node}/$(instance_id 2>/dev/null || echo unknown)/bootstrap"
  events=$(python3 -c 'import json,sys,time; print(json.dumps([{"timestamp": int(time.time()*1000), "message": sys.argv[1]}]))' "$1") || return 0
  aws logs create-log-stream --region "$DI_REGION" --log-group-name "$DI_LOG_GROUP_NODES" \
    --log-stream-name "$stream" >/dev/null 2>&1 || true
  aws logs put-log-events --region "$DI_REGION" --log-group-name "$DI_LOG_GROUP_NODES" \
    --log-stream-name "$stream" --log-events "$events" >/dev/null 2>&1 || true
}

# container_log_stream NAME: the stream of one service in the container log group: FLEET/INSTANCE/NAME.
container_log_stream() {
  local id
  id=$(instance_id 2>/dev/null) || id=unknown
  printf '%s\n' "${DI_FLEET:?}/$id/$1"
}

# docker_log_args NAME: send a container's output to the deployment's container log group.
docker_log_args() {
  printf '%s\n' --log-driver awslogs \
    --log-opt "awslogs-region=${DI_REGION:?}" \
    --log-opt "awslogs-group=${DI_LOG_GROUP_CONTAINERS:?}" \
    --log-opt "awslogs-stream=$(container_log_stream "$1")"
}

# efa_interface_count: EFA devices libfabric sees. One RDM domain per device; newer libfabric lists a device
# again under the efa-direct fabric, hence unique domain names.
efa_interface_count() {
  { fi_info -p efa -t FI_EP_RDM 2>/dev/null || true; } | awk '/domain:/ { print $2 }' | sort -u | wc -l
}

# fstab_add UUID MOUNTPOINT: record a mount once, with nofail so a missing disk never blocks boot.
fstab_add() {
  local fstab=${DI_FSTAB:-/etc/fstab}
  grep -q "^UUID=$1 " "$fstab" 2>/dev/null || printf 'UUID=%s %s ext4 defaults,nofail 0 2\n' "$1" "$2" >>"$fstab"
}

# uverbs_device_args: `--device /dev/infiniband/uverbsN` for every EFA device, in numeric order (uverbs2 before
# uverbs10), for the containers that use EFA (the endpoints and the NIXL probe).
uverbs_device_args() {
  local dev
  for dev in "$DI_DEV_ROOT"/infiniband/uverbs*; do
    [[ -e $dev ]] && printf '%s\n' "${dev##*/uverbs}"
  done | sort -n | while read -r dev; do printf '%s\n' --device "/dev/infiniband/uverbs$dev"; done
}

# load_accelerator: source userdata/accelerators/$DI_ACCELERATOR.sh (default neuron: node.env written before the
# accelerator existed keeps working), which defines what differs per accelerator family:
#   accelerator_preflight           boot-time device check (fail REASON when the count is wrong)
#   accelerator_docker_args RANGE   `docker run` words giving an endpoint the devices of RANGE (DI_ENDPOINTS)
#   accelerator_probe_args          `docker run` words giving a one-off probe container the devices
#   accelerator_status_json         di-status's device fields ("name":value,...)
#   accelerator_exporter            the device metrics exporter metrics-agent.sh starts on workers
# Adding an accelerator family means adding a file there; nothing else branches on DI_ACCELERATOR.
load_accelerator() {
  local file="$DI_SCRIPTS_DIR/accelerators/${DI_ACCELERATOR:-neuron}.sh" known
  if [[ ! -r $file ]]; then
    known=$(cd "$DI_SCRIPTS_DIR/accelerators" && printf '%s ' *.sh)
    die "DI_ACCELERATOR='${DI_ACCELERATOR:-}' in $DI_NODE_ENV has no module $file; known: ${known//.sh/}"
  fi
  # shellcheck source=/dev/null
  . "$file"
}

# load_engine: source userdata/engines/$DI_ENGINE.sh, which defines what differs per KV-transfer engine:
#   engine_entrypoint          the container's entrypoint (replaces the DLC's non-forwarding wrapper)
#   engine_env ROLE CORES INDEX   the container's `-e` arguments, one word per line
#   engine_server_args ROLE PORT  the server's arguments after the entrypoint, one word per line
#   engine_self_registers      true when the server registers its DI endpoints in etcd by itself
#   engine_preflight           boot-time check after the image pull (fail REASON when it fails)
#   engine_prepare INDEX       before every start of endpoint INDEX
#   engine_compile KEY         fill /data/compiled/KEY the engine's way (ops/compile.sh uploads it)
#   engine_kv_hold_seconds ROLE   how long a server may keep a finished request's KV for a peer (ops/drain.sh waits)
#   engine_registry_fields ROLE INDEX   extra JSON members of the etcd value di-register writes (",\"k\":v" or nothing)
# Adding an engine means adding a file there; nothing else branches on DI_ENGINE. The accelerator module comes first
# (an engine may run on more than one family and uses its functions).
load_engine() {
  load_accelerator
  local file="$DI_SCRIPTS_DIR/engines/${DI_ENGINE:-}.sh" known
  if [[ -z ${DI_ENGINE:-} || ! -r $file ]]; then
    known=$(cd "$DI_SCRIPTS_DIR/engines" && printf '%s ' *.sh)
    die "DI_ENGINE='${DI_ENGINE:-}' in $DI_NODE_ENV has no module $file; known: ${known//.sh/}(set engine: in config/NAME.yaml)"
  fi
  # shellcheck source=/dev/null
  . "$file"
}

# kv_role ROLE: the kv_role a DI endpoint's --kv-transfer-config gives vLLM, whichever the connector.
kv_role() {
  case $1 in
    prefill) echo kv_producer ;;
    decode) echo kv_consumer ;;
    *) die "endpoint role '$1' has no KV role" ;;
  esac
}

# registrar_wanted ROLE: true when endpoints of ROLE need di-register to appear in etcd: standard endpoints
# always, DI endpoints unless the engine registers them itself (NeuronConnector does; vLLM's NixlConnector not).
registrar_wanted() { [[ $1 == standard ]] || ! engine_self_registers; }

# install_unit FILE: copy a unit into the systemd directory.
install_unit() { install -m 0644 "$1" "$DI_SYSTEMD_DIR/${1##*/}"; }

# ---------------------------------------------------------------------------------------------------------
# Auto Scaling lifecycle. The node follows its own target lifecycle state in instance metadata (IMDSv2) and completes
# the group's lifecycle hooks itself: no Lambda, no queue.
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html: "When an
# instance prepares to transition to one of the preceding steady states [InService, Terminated, Detached, Standby,
# Warmed:Hibernated, Warmed:Running, Warmed:Stopped, Warmed:Terminated], Amazon EC2 Auto Scaling updates the value of
# the instance metadata item autoscaling/target-lifecycle-state."
# Where this node keeps state that must survive a stop (the root EBS volume; /run is gone after one).
DI_STATE_DIR=${DI_STATE_DIR:-/var/lib/di}
# Seconds between RecordLifecycleActionHeartbeat calls while a hook waits on this node. A hook's HeartbeatTimeout is
# 30..7200 s and each heartbeat restarts it ("extends the timeout by the length of time defined using the
# PutLifecycleHook API call": https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RecordLifecycleActionHeartbeat.html),
# so any hook timeout above this interval holds; the hook's GlobalTimeout (at most 172800 s or 100 x HeartbeatTimeout,
# API_LifecycleHook.html) still bounds the whole wait.
LIFECYCLE_HEARTBEAT_SECONDS=${LIFECYCLE_HEARTBEAT_SECONDS:-300}

# lifecycle_target: the target lifecycle state (InService, Terminated, Warmed:Stopped, ...); fails when instance
# metadata has none (not launched by Auto Scaling, or not set yet).
lifecycle_target() { imds autoscaling/target-lifecycle-state 2>/dev/null; }

# find_asg: this instance's Auto Scaling group into ASG_NAME, asked at run time (once): the group's name cannot be
# written into its own launch template's user data (the template would reference the group that references it).
ASG_NAME=""
find_asg() {
  [[ -z $ASG_NAME ]] || return 0
  local id name
  id=$(instance_id) || return 1
  name=$(aws autoscaling describe-auto-scaling-instances --region "${DI_REGION:?}" --instance-ids "$id" \
    --query 'AutoScalingInstances[0].AutoScalingGroupName' --output text 2>/dev/null) || return 1
  [[ -n $name && $name != None ]] || return 1
  ASG_NAME=$name
}

# lifecycle_call VERB HOOK [ARG...]: one autoscaling lifecycle call for this instance on HOOK of its group.
lifecycle_call() {
  local verb=$1 hook=$2 id
  shift 2
  find_asg || { log "cannot find this instance's Auto Scaling group (describe-auto-scaling-instances)"; return 1; }
  id=$(instance_id) || return 1
  aws autoscaling "$verb" --region "$DI_REGION" --lifecycle-hook-name "$hook" --auto-scaling-group-name "$ASG_NAME" \
    --instance-id "$id" "$@" >/dev/null
}

# complete_lifecycle HOOKS CONTINUE|ABANDON REASON: end this instance's wait on the first of HOOKS (comma-separated)
# that has one; nothing when HOOKS is empty (a group without hooks).
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/completing-lifecycle-hooks.html
COMPLETED_HOOK=""
complete_lifecycle() {
  local hooks=$1 result=$2 reason=$3
  [[ -n ${hooks//,/} ]] || return 0
  if retry complete_first "$result" "${hooks//,/ }"; then
    log "lifecycle hook $COMPLETED_HOOK completed with $result: $reason"
  else
    log "could not complete lifecycle hook ${hooks//,/ or } with $result ($reason); the hook's timeout applies its default result"
    return 1
  fi
}

# complete_first RESULT "HOOK...": complete the first hook that accepts it (into COMPLETED_HOOK).
complete_first() {
  local hook
  for hook in $2; do
    if lifecycle_call complete-lifecycle-action "$hook" --lifecycle-action-result "$1"; then
      COMPLETED_HOOK=$hook
      return 0
    fi
  done
  return 1
}

# heartbeat_lifecycle HOOK: keep HOOK's wait from timing out (best effort; nothing when HOOK is empty).
heartbeat_lifecycle() {
  [[ -n $1 ]] || return 0
  lifecycle_call record-lifecycle-action-heartbeat "$1" || log "lifecycle heartbeat for $1 failed"
}

# ---------------------------------------------------------------------------------------------------------
# S3 transfers at network speed: the AWS CLI v2's CRT transfer client, which splits objects into parts and fetches
# them in parallel (https://docs.aws.amazon.com/cli/latest/topic/s3-config.html, preferred_transfer_client and
# target_bandwidth; GA in aws/aws-cli#8360). Its own config file, so nothing else in root's AWS config changes; the
# bucket is in DI_REGION, as the CRT client requires ("Region redirects - Transfers fail").
DI_S3_CONFIG=${DI_S3_CONFIG:-}

# s3_target_bandwidth: the CRT client's target for this instance type. The CRT knows these types itself
# (awslabs/aws-c-s3 source/s3_platform_info.c: trn2.48xlarge 400 Gbps, trn1.32xlarge 600, trn1n.32xlarge 800) but
# falls back to 10 Gb/s where its bundled version does not, so it is said explicitly; empty leaves the CLI's default.
s3_target_bandwidth() {
  case ${DI_INSTANCE_TYPE:-} in
    trn2.48xlarge | trn2u.48xlarge) echo 400Gb/s ;;
    trn1.32xlarge) echo 600Gb/s ;;
    trn1n.32xlarge) echo 800Gb/s ;;
  esac
}

# s3_config: the AWS config file the transfers use (written once).
s3_config() {
  if [[ -z $DI_S3_CONFIG || ! -e $DI_S3_CONFIG ]]; then
    local bandwidth
    mkdir -p "$DI_RUN_DIR"
    DI_S3_CONFIG=${DI_S3_CONFIG:-$DI_RUN_DIR/aws-s3.config}
    bandwidth=$(s3_target_bandwidth)
    # CLI v1 has no CRT client and ignores the setting: the transfers then run at the classic client's pace.
    [[ $(aws --version 2>&1) == aws-cli/2.* ]] ||
      log "WARNING: $(aws --version 2>&1 | head -n 1) is not AWS CLI v2: S3 downloads run without the CRT client"
    {
      printf '[default]\ns3 =\n  preferred_transfer_client = crt\n'
      [[ -z $bandwidth ]] || printf '  target_bandwidth = %s\n' "$bandwidth"
    } >"$DI_S3_CONFIG"
  fi
  printf '%s\n' "$DI_S3_CONFIG"
}

# s3_sync SRC DST: `aws s3 sync` through the CRT client. The CLI v2 checks each download against the checksum S3
# stored with the object when there is one (CRC64NVME by default for its uploads):
# https://docs.aws.amazon.com/cli/latest/topic/s3-faq.html
s3_sync() {
  local config
  config=$(s3_config)
  AWS_CONFIG_FILE=$config aws s3 sync --only-show-errors --region "$DI_REGION" "$1" "$2"
}

# The list of SHA-256 sums a prefix may carry (`sha256sum` output, paths relative to the prefix): ops/compile.sh
# writes it for the compiled artifacts; put one next to uploaded weights to have every file checked after download.
CHECKSUM_LIST=SHA256SUMS

# verify_checksums DIR: check DIR against DIR/SHA256SUMS when it has one, every CPU hashing a share of the files;
# prints the files that differ and fails. Without the list, the CLI's own per-object check is what there is.
verify_checksums() {
  local dir=$1 jobs tmp bad status=0
  [[ -r $dir/$CHECKSUM_LIST ]] || { log "no $CHECKSUM_LIST in $dir: relying on the AWS CLI's checksum validation"; return 0; }
  jobs=$(nproc 2>/dev/null) || jobs=4
  tmp=$(mktemp -d "$DI_RUN_DIR/verify.XXXXXX")
  split -n "r/$jobs" "$dir/$CHECKSUM_LIST" "$tmp/part."
  bad=$(cd "$dir" && find "$tmp" -name 'part.*' -size +0 -print0 |
    xargs -0 -r -n 1 -P "$jobs" sha256sum --quiet --check 2>&1) || status=1
  rm -rf "$tmp"
  if ((status)); then
    printf '%s\n' "$bad" >&2
    return 1
  fi
  log "checked $(wc -l <"$dir/$CHECKSUM_LIST") files of $dir against $CHECKSUM_LIST"
}

# write_checksums DIR: DIR/SHA256SUMS over every other file in DIR, hashed in parallel.
write_checksums() {
  local dir=$1 jobs
  jobs=$(nproc 2>/dev/null) || jobs=4
  (cd "$dir" && find . -type f ! -name "$CHECKSUM_LIST" -print0 | xargs -0 -r -n 16 -P "$jobs" sha256sum) \
    >"$dir/$CHECKSUM_LIST.tmp" && mv "$dir/$CHECKSUM_LIST.tmp" "$dir/$CHECKSUM_LIST"
}

# ---------------------------------------------------------------------------------------------------------
# vLLM's own Prometheus metrics (vllm-project/vllm vllm/v1/metrics/loggers.py@005a810bc40f, PrometheusStatLogger):
# "vllm:num_requests_running" ("Number of requests in model execution batches") and "vllm:num_requests_waiting"
# ("Number of requests waiting to be processed"), one series per engine (labels model_name, engine);
# "vllm:kv_cache_usage_perc" ("KV-cache usage. 1 means 100 percent usage"; BlockPool.get_usage in
# vllm/v1/core/block_pool.py, 0 when every block is free).

# vllm_metrics PORT: the endpoint's /metrics text. Status 7 when nothing listens there (the server is down).
vllm_metrics() { curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null; }

# metric_sum NAME: the sum of NAME over its series in the exposition text on stdin; fails when there is none.
metric_sum() {
  awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $NF; found = 1 }
    END { if (!found) exit 1; printf "%g\n", sum }'
}

# compile_by_serving: for engines without a separate compile step (the server compiles its graphs when it starts and
# keeps them in VLLM_CACHE_ROOT): this node's endpoints serving once is the compilation. Wait for them as
# wait-ready.sh does, then the caller uploads the cache for every later worker.
compile_by_serving() {
  # Read here, not at source time: DI_READY_TIMEOUT_SECONDS comes from node.env, loaded after lib.sh.
  local index wait=${COMPILE_WAIT_SECONDS:-${DI_READY_TIMEOUT_SECONDS:-3600}}
  while read -r index _; do
    systemctl is-active --quiet "$(unit_name "$index")" ||
      die "endpoint $index ($(unit_name "$index")) is not running; start it with /opt/di/di-restart $index, then compile again"
  done < <(endpoints)
  "$DI_HOME/ops/wait-ready.sh" "$wait" ||
    die "endpoints still compiling or failing after ${wait}s (journalctl -u di-vllm@INDEX)"
  log "every endpoint serves: its compile cache is complete"
}
