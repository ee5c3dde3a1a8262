#!/usr/bin/env bash
# How a node reports its bootstrap: the CloudFormation signal its group's CreationPolicy waits for, the failure
# reason the bootstrap's EXIT handler picks up, and one event in the deployment's node log group. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"
# shellcheck source=imds.sh
. "${BASH_SOURCE[0]%/*}/imds.sh"

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
