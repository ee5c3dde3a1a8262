#!/usr/bin/env bash
# What each endpoint's systemd units and container are called, and installing a unit. Sourced, never run.
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"

# unit_name INDEX: the systemd unit serving endpoint INDEX on a worker.
unit_name() { printf 'di-vllm@%s.service\n' "$1"; }

# registrar_unit INDEX: the unit keeping endpoint INDEX in etcd when nothing else does (see di-register).
registrar_unit() { printf 'di-register@%s.service\n' "$1"; }

# container_name INDEX: the container behind endpoint INDEX.
container_name() { printf 'di-vllm-%s\n' "$1"; }

# install_unit FILE: copy a unit into the systemd directory.
install_unit() { install -m 0644 "$1" "$DI_SYSTEMD_DIR/${1##*/}"; }
