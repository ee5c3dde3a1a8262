#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Compile the model the engine's way (engine_compile in engines/ENGINE.sh: the legacy engine runs NxDI's
# inference_demo --compile-only, nixl lets its servers compile at start), then upload the artifacts with their
# SHA256SUMS to s3://$DI_BUCKET/staging/compiled/ROLE-ID:INSTANCE-ID/$(compiled_key)/ (lib/scope.sh): nodes may write
# only their own folder there, never another node's and never compiled/ where every worker looks first: `dictl compile` checks the staged copy against its SHA256SUMS and
# promotes it with the operator's credentials (ops/promote.py), so one compromised node cannot poison the others.
# Usage: compile.sh [--force]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/s3.sh"
. "$DI_LIB_DIR/checksums.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/scope.sh"
# Named explicitly: looked up by its name in this folder, it would be this script itself, and shellcheck would
# follow it into itself over and over.
# shellcheck source=../lib/compile.sh
. "$DI_LIB_DIR/compile.sh"
. "$DI_LIB_DIR/modules.sh"

main() {
  local force=0 key prefix staging dir
  case ${1:-} in
    --force) force=1 ;;
    "") ;;
    *) die "usage: compile.sh [--force]" ;;
  esac
  load_node_env
  [[ $DI_ROLE != control ]] || die "compile runs on a worker, not the control host"
  key=$(compiled_key)
  prefix="s3://$DI_BUCKET/compiled/$key/"
  if ((!force)) && aws s3 ls --region "$DI_REGION" "$prefix" >/dev/null 2>&1; then
    echo "already compiled: $prefix (pass --force to compile again)"
    return 0
  fi
  [[ -e $DI_DATA_DIR/models/$DI_MODEL_ID/.complete ]] ||
    die "model not staged in $DI_DATA_DIR/models/$DI_MODEL_ID: let the worker finish its bootstrap first"
  dir="$DI_DATA_DIR/compiled/$key"
  mkdir -p "$dir"
  load_engine
  engine_compile "$key"
  [[ -n $(ls -A "$dir") ]] || die "the compilation wrote nothing to $dir"
  # Every worker that syncs this prefix checks its copy against the list (worker.sh fetch).
  write_checksums "$dir" || die "cannot write $dir/$CHECKSUM_LIST"
  staging="$(own_prefix staging/compiled/)$key/" || exit 1
  retry s3_sync "$dir" "$staging" || die "upload to $staging failed"
  echo "staged: $staging (dictl compile promotes it to $prefix)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
