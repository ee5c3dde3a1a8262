#!/usr/bin/env bash
# SHA-256 lists next to what S3 holds (`sha256sum` output, paths relative to the prefix): ops/compile.sh writes one
# for the compiled artifacts; put one next to uploaded weights to have every file checked after download. Both
# directions hash on every CPU. Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"

CHECKSUM_LIST=SHA256SUMS

# verify_checksums DIR: check DIR against DIR/SHA256SUMS when it has one, every CPU hashing a share of the files;
# prints the files that differ and fails. Without the list, the CLI's own per-object check is what there is.
verify_checksums() {
  local dir=$1 jobs tmp bad status=0
  [[ -r $dir/$CHECKSUM_LIST ]] || { log "no $CHECKSUM_LIST in $dir: relying on the AWS CLI's checksum validation"; return 0; }
  jobs=$(nproc 2>/dev/null) || jobs=4
  tmp=$(mktemp -d "$DI_RUN_DIR/verify.XXXXXX")
  split -n "r/$jobs" "$dir/$CHECKSUM_LIST" "$tmp/part."
  bad=$(cd "$dir" && find "$tmp" -name 'part.*' -size +0 -print0 |
    xargs -0 -r -n 1 -P "$jobs" sha256sum --quiet --check 2>&1) || status=1
  rm -rf "$tmp"
  if ((status)); then
    printf '%s\n' "$bad" >&2
    return 1
  fi
  log "checked $(wc -l <"$dir/$CHECKSUM_LIST") files of $dir against $CHECKSUM_LIST"
}

# write_checksums DIR: DIR/SHA256SUMS over every other file in DIR, hashed in parallel. The list being written
# (SHA256SUMS.tmp, there before find runs) is left out too: listed, it would name a file that never reaches S3.
write_checksums() {
  local dir=$1 jobs
  jobs=$(nproc 2>/dev/null) || jobs=4
  (cd "$dir" && find . -type f ! -name "$CHECKSUM_LIST" ! -name "$CHECKSUM_LIST.tmp" -print0 | xargs -0 -r -n 16 -P "$jobs" sha256sum) \
    >"$dir/$CHECKSUM_LIST.tmp" && mv "$dir/$CHECKSUM_LIST.tmp" "$dir/$CHECKSUM_LIST"
}
