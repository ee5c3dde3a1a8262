#!/usr/bin/env bash
# Instance metadata (IMDSv2, which the launch templates require): this instance's ID and address, unless node.env or
# the caller's environment already says them (tests, or a value known without asking). Sourced, never run.

DI_IMDS_URL=${DI_IMDS_URL:-http://169.254.169.254}

# imds PATH: one instance-metadata value.
imds() {
  local token
  token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$DI_IMDS_URL/latest/api/token") || return 1
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "$DI_IMDS_URL/latest/meta-data/$1"
}

instance_id() { if [[ -n ${DI_INSTANCE_ID:-} ]]; then printf '%s\n' "$DI_INSTANCE_ID"; else imds instance-id; fi; }

# local_ip: the address NeuronConnector registers in etcd (the primary interface; host networking).
local_ip() { if [[ -n ${DI_LOCAL_IP:-} ]]; then printf '%s\n' "$DI_LOCAL_IP"; else imds local-ipv4; fi; }
