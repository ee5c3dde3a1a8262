#!/usr/bin/env bash
# Containers without the instance's credentials. The endpoint containers run `--network host` (EFA and NIXL need
# the host's interfaces), and the IMDS hop limit only stops a packet that crosses a bridge, so a host-network
# container reaches 169.254.169.254 and the instance role unless the host refuses it. Every container of ours runs
# under one systemd slice (`docker run --cgroup-parent`, "Optional parent cgroup for the container",
# https://docs.docker.com/reference/cli/docker/container/run/), and an iptables OUTPUT rule refuses that slice's
# packets to IMDS: the cgroup match's `--path` "Match[es] cgroup2 membership. Each socket is associated with the v2
# cgroup of the creating process. This matches packets coming from or going to all sockets in the sub-hierarchy
# of the specified path. The path should be relative to the root of the cgroup2 hierarchy" (iptables-extensions(8),
# "cgroup"). A cgroup match rather than `--uid-owner` with `docker run --user`: the images run as root and write
# their caches under /root, so a uid change is not ours to make. The host's own processes (aws CLI, CloudWatch
# agent, di-register) keep IMDS.
# A slice's cgroup is not its bare name: "The name of the slice encodes the location in the tree ... foo-bar.slice
# is a slice that is located within foo.slice" (systemd.slice(5)), so di-containers.slice is the cgroup
# di.slice/di-containers.slice, and that is the path the rule must name (slice_cgroup_path). The control host's
# containers run in di-containers-control.slice, a child of it: the same rule covers them, and that slice's
# MemoryMax bounds them (units/di-containers-control.slice).
# UNVERIFIED on a real host: that the AMIs run cgroup v2 (Ubuntu 22.04 and Amazon Linux 2023 do by default) and
# that docker uses its systemd cgroup driver there (its default on cgroup v2 since moby/moby#40846), which places a
# container at SLICE's cgroup/docker-ID.scope; with the cgroupfs driver neither the rule nor the slice's bounds
# apply, and nothing says so: docs/security.md gives the check to run on a new AMI.
# Sourced by worker.sh, di-run and ops/bench.sh (after lib/node.sh); defines functions only.

# The slice's unit file, userdata/units/di-containers.slice.
CONTAINER_SLICE=di-containers.slice
# The control host's containers and benchmark (the legacy proxy; LLMPerf's services): a child of CONTAINER_SLICE with a
# memory bound.
# shellcheck disable=SC2034 # used by di-run and ops/bench.sh, which source this file
CONTROL_CONTAINER_SLICE=di-containers-control.slice
# IMDS over IPv4, and over IPv6 where the instance has it enabled
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html: fd00:ec2::254).
IMDS_ADDRESSES_V4=169.254.169.254/32
IMDS_ADDRESSES_V6=fd00:ec2::254/128

# contained_args [SLICE]: the `docker run` words that put a container under the slice the firewall rule matches
# (CONTAINER_SLICE, or a child of it).
contained_args() { printf '%s\n' "--cgroup-parent=${1:-$CONTAINER_SLICE}"; }

# slice_cgroup_path SLICE: the slice's cgroup relative to the cgroup2 root, by systemd.slice(5)'s naming: each
# dash-separated prefix is a parent slice (a-b-c.slice is a.slice/a-b.slice/a-b-c.slice).
slice_cgroup_path() {
  local name=${1%.slice} prefix="" path="" part
  local -a parts
  IFS=- read -ra parts <<<"$name"
  for part in "${parts[@]}"; do
    prefix=${prefix:+$prefix-}$part
    path=${path:+$path/}$prefix.slice
  done
  printf '%s\n' "$path"
}

# imds_rule ADDRESS: the OUTPUT rule's words after the chain. REJECT (not DROP) so a client fails at once, not after
# its timeout. The cgroup match resolves --path when the rule is inserted, so the slice must exist first.
imds_rule() { printf '%s\n' -d "$1" -m cgroup --path "$(slice_cgroup_path "$CONTAINER_SLICE")" -j REJECT; }

# install_slice SLICE: its unit file from the node scripts into systemd's directory, again when the scripts' copy
# changed (a new bound takes effect at the slice's next start).
install_slice() {
  cmp -s "$DI_HOME/units/$1" "$DI_SYSTEMD_DIR/$1" && return 0
  install -m 0644 "$DI_HOME/units/$1" "$DI_SYSTEMD_DIR/$1" && systemctl daemon-reload
}

# contain_imds [SLICE]: the slices started (CONTAINER_SLICE, and SLICE, a child of it, when given) and the rule in
# place (once: `-C` checks for it first; rules do not survive a reboot, so di-run calls this before every container
# start as well). Prints why and fails when it cannot.
contain_imds() {
  local rule slice
  for slice in "$CONTAINER_SLICE" ${1:+"$1"}; do
    install_slice "$slice" || { echo "cannot install $slice"; return 1; }
    systemctl start "$slice" || { echo "cannot start $slice"; return 1; }
  done
  mapfile -t rule < <(imds_rule "$IMDS_ADDRESSES_V4")
  iptables -w -C OUTPUT "${rule[@]}" 2>/dev/null || iptables -w -I OUTPUT 1 "${rule[@]}" ||
    { echo "cannot install the iptables rule that keeps containers from instance metadata"; return 1; }
  command -v ip6tables >/dev/null || return 0
  mapfile -t rule < <(imds_rule "$IMDS_ADDRESSES_V6")
  ip6tables -w -C OUTPUT "${rule[@]}" 2>/dev/null || ip6tables -w -I OUTPUT 1 "${rule[@]}" ||
    { echo "cannot install the ip6tables rule that keeps containers from instance metadata"; return 1; }
}
