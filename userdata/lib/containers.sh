#!/usr/bin/env bash
# Where a container's output goes: the deployment's container log group, one stream per service. Sourced, never run.
# shellcheck source=imds.sh
. "${BASH_SOURCE[0]%/*}/imds.sh"

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
