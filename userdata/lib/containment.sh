#!/usr/bin/env bash
# Containers without the instance's credentials. The endpoint containers run `--network host` (EFA and NIXL need
# the host's interfaces), and the IMDS hop limit only stops a packet that crosses a bridge, so a host-network
# container reaches 169.254.169.254 and the instance role unless the host refuses it. Every container of ours runs
# under one systemd slice (`docker run --cgroup-parent`, "Optional parent cgroup for the container",
# https://docs.docker.com/reference/cli/docker/container/run/), and an iptables OUTPUT rule refuses that slice's
# packets to IMDS: the cgroup match's `--path` "Match[es] cgroup2 membership. Each socket is associated with the v2
# cgroup of the creating process. This matches the packet coming from or going to all sockets in the sub-hierarchy
# of the specified path" (iptables-extensions(8), "cgroup"). A cgroup match rather than `--uid-owner` with
# `docker run --user`: the images run as root and write their caches under /root, so a uid change is not ours to
# make. The host's own processes (aws CLI, CloudWatch agent, di-register) keep IMDS.
# UNVERIFIED on a real host: that the DLAMI runs cgroup v2 (Ubuntu 22.04 does by default) and docker's systemd
# cgroup driver places a container at di-containers.slice/docker-ID.scope; if either is wrong the rule does not
# match, and nothing says so: docs/security.md gives the check to run on a new AMI.
# Sourced by worker.sh and di-run (after lib/node.sh); defines functions only.

# The slice's unit file, userdata/units/di-containers.slice.
CONTAINER_SLICE=di-containers.slice
# IMDS over IPv4, and over IPv6 where the instance has it enabled
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html: fd00:ec2::254).
IMDS_ADDRESSES_V4=169.254.169.254/32
IMDS_ADDRESSES_V6=fd00:ec2::254/128

# contained_args: the `docker run` words that put a container under the slice the firewall rule matches.
contained_args() { printf '%s\n' "--cgroup-parent=$CONTAINER_SLICE"; }

# imds_rule: the OUTPUT rule's words after the chain. REJECT (not DROP) so a client fails at once, not after its
# timeout. The cgroup match resolves --path when the rule is inserted, so the slice must exist first.
imds_rule() { printf '%s\n' -d "$1" -m cgroup --path "$CONTAINER_SLICE" -j REJECT; }

# contain_imds: the slice started and the rule in place (once: `-C` checks for it first; rules do not survive a
# reboot, so di-run calls this before every container start as well). Prints why and fails when it cannot.
contain_imds() {
  local rule
  if [[ ! -f $DI_SYSTEMD_DIR/$CONTAINER_SLICE ]]; then
    install -m 0644 "$DI_HOME/units/$CONTAINER_SLICE" "$DI_SYSTEMD_DIR/$CONTAINER_SLICE"
    systemctl daemon-reload
  fi
  systemctl start "$CONTAINER_SLICE" || { echo "cannot start $CONTAINER_SLICE"; return 1; }
  mapfile -t rule < <(imds_rule "$IMDS_ADDRESSES_V4")
  iptables -w -C OUTPUT "${rule[@]}" 2>/dev/null || iptables -w -I OUTPUT 1 "${rule[@]}" ||
    { echo "cannot install the iptables rule that keeps containers from instance metadata"; return 1; }
  command -v ip6tables >/dev/null || return 0
  mapfile -t rule < <(imds_rule "$IMDS_ADDRESSES_V6")
  ip6tables -w -C OUTPUT "${rule[@]}" 2>/dev/null || ip6tables -w -I OUTPUT 1 "${rule[@]}" ||
    { echo "cannot install the ip6tables rule that keeps containers from instance metadata"; return 1; }
}
