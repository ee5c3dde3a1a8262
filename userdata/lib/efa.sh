#!/usr/bin/env bash
# The EFA devices this node really has (what libfabric and /dev/infiniband show), measured at run time; how many
# it should have is DI_EXPECTED_EFA_INTERFACES in node.env, from the instance catalog. Sourced, never run.
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"

# efa_interface_count: EFA devices libfabric sees. One RDM domain per device; newer libfabric lists a device
# again under the efa-direct fabric, hence unique domain names.
efa_interface_count() {
  { fi_info -p efa -t FI_EP_RDM 2>/dev/null || true; } | awk '/domain:/ { print $2 }' | sort -u | wc -l
}

# uverbs_device_args: `--device /dev/infiniband/uverbsN` for every EFA device, in numeric order (uverbs2 before
# uverbs10), for the containers that use EFA (the endpoints and the NIXL probe).
uverbs_device_args() {
  local dev
  for dev in "$DI_DEV_ROOT"/infiniband/uverbs*; do
    [[ -e $dev ]] && printf '%s\n' "${dev##*/uverbs}"
  done | sort -n | while read -r dev; do printf '%s\n' --device "/dev/infiniband/uverbs$dev"; done
}
