#!/usr/bin/env bash
# Auto Scaling lifecycle. The node follows its own target lifecycle state in instance metadata (IMDSv2) and completes
# the group's lifecycle hooks itself: no Lambda, no queue. Sourced, never run.
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html: "When an
# instance prepares to transition to one of the preceding steady states [InService, Terminated, Detached, Standby,
# Warmed:Hibernated, Warmed:Running, Warmed:Stopped, Warmed:Terminated], Amazon EC2 Auto Scaling updates the value of
# the instance metadata item autoscaling/target-lifecycle-state."
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=imds.sh
. "${BASH_SOURCE[0]%/*}/imds.sh"

# Seconds between RecordLifecycleActionHeartbeat calls while a hook waits on this node. A hook's HeartbeatTimeout is
# 30..7200 s and each heartbeat restarts it ("extends the timeout by the length of time defined using the
# PutLifecycleHook API call": https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RecordLifecycleActionHeartbeat.html),
# so any hook timeout above this interval holds; the hook's GlobalTimeout (at most 172800 s or 100 x HeartbeatTimeout,
# API_LifecycleHook.html) still bounds the whole wait.
LIFECYCLE_HEARTBEAT_SECONDS=${LIFECYCLE_HEARTBEAT_SECONDS:-300}

# lifecycle_target: the target lifecycle state (InService, Terminated, Warmed:Stopped, ...); fails when instance
# metadata has none (not launched by Auto Scaling, or not set yet).
lifecycle_target() { imds autoscaling/target-lifecycle-state 2>/dev/null; }

# find_asg: look this instance's Auto Scaling group up at run time, once per shell, into ASG_NAME: the group's name
# cannot be written into its own launch template's user data (the template would reference the group that references
# it), and it never changes for an instance. ASG_NAME is a cache that only lifecycle_call reads, not a result for
# callers.
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
# that has one, and print the hook that took it; nothing when HOOKS is empty (a group without hooks).
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/completing-lifecycle-hooks.html
complete_lifecycle() {
  local hooks=$1 result=$2 reason=$3 completed
  [[ -n ${hooks//,/} ]] || return 0
  if completed=$(retry complete_first "$result" "${hooks//,/ }"); then
    log "lifecycle hook $completed completed with $result: $reason"
    printf '%s\n' "$completed"
  else
    log "could not complete lifecycle hook ${hooks//,/ or } with $result ($reason); the hook's timeout applies its default result"
    return 1
  fi
}

# complete_first RESULT "HOOK...": complete the first hook that accepts it, and print its name.
complete_first() {
  local hook
  for hook in $2; do
    if lifecycle_call complete-lifecycle-action "$hook" --lifecycle-action-result "$1"; then
      printf '%s\n' "$hook"
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
