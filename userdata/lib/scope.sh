#!/usr/bin/env bash
# This node's own folder in the artifacts bucket. The node role may write only PREFIX/${aws:userid}/... for each
# prefix it writes (stacks/components/node_role.py allow_own_writes); for an instance role IAM resolves
# ${aws:userid} to ROLE-ID:INSTANCE-ID (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
# #policy-vars-infotouse, principal table; model/write_scope.py). The node asks STS for the value rather than build
# it: GetCallerIdentity's UserId is that aws:userid value and needs no permission
# (https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html). An answer that is not
# AROA...:THIS-INSTANCE-ID stops the script before it writes: the policy would refuse the upload anyway, and the
# message says why. Needs imds.sh (instance_id) and log.sh (die). Sourced, never run.

# node_userid: ROLE-ID:INSTANCE-ID of this node's credentials, checked against its own instance ID. --region sends it
# to the Regional STS endpoint, which the CLI v2 uses by default
# (https://docs.aws.amazon.com/sdkref/latest/guide/feature-sts-regionalized-endpoints.html).
node_userid() {
  local userid id
  userid=$(aws sts get-caller-identity --region "$DI_REGION" --query UserId --output text) ||
    die "aws sts get-caller-identity failed: the node cannot learn its own folder PREFIX/ROLE-ID:INSTANCE-ID/ (STS must be reachable, through the NAT gateway or an sts VPC endpoint)"
  id=$(instance_id) || die "cannot read the instance id from IMDS"
  [[ $userid =~ ^AROA[A-Z0-9]+:(i-[0-9a-f]+)$ && ${BASH_REMATCH[1]} == "$id" ]] ||
    die "STS says this node is '$userid', not ROLE-ID:$id (a role assumed by this EC2 instance): it would not be allowed to write its folder, so nothing is uploaded"
  printf '%s\n' "$userid"
}

# own_prefix PREFIX: s3://BUCKET/PREFIX/ROLE-ID:INSTANCE-ID/, the only folder under PREFIX this node may write.
own_prefix() {
  local userid
  userid=$(node_userid) || exit 1
  printf 's3://%s/%s%s/\n' "$DI_BUCKET" "$1" "$userid"
}
