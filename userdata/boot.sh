#!/usr/bin/env bash
# First boot: fetch the node scripts (an S3 asset; user data holds only node.env and this file) into
# /opt/di, then hand over to di-bootstrap. If the fetch itself fails, report it to CloudFormation here.
set -euo pipefail

DI_NODE_ENV=${DI_NODE_ENV:-/etc/di/node.env}
DI_HOME=${DI_HOME:-/opt/di}
DI_BOOT_TMP=${DI_BOOT_TMP:-/var/tmp}
# Seconds before download retry N is N times this (5, 10, 15, 20 s by default).
BOOT_RETRY_STEP_SECONDS=${BOOT_RETRY_STEP_SECONDS:-5}

say() { printf '%s [boot] %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

ensure_cli() {
  command -v aws >/dev/null && return 0
  say "installing the AWS CLI"
  if command -v dnf >/dev/null; then dnf install -y awscli; else apt-get update -q && apt-get install -y -q awscli; fi
}

fetch_scripts() {
  local archive="$DI_BOOT_TMP/di-scripts.zip" attempt
  for attempt in 1 2 3 4 5; do
    aws s3 cp --only-show-errors --region "$DI_REGION" "$DI_SCRIPTS_URL" "$archive" && break
    ((attempt == 5)) && return 1
    sleep $((attempt * BOOT_RETRY_STEP_SECONDS))
  done
  mkdir -p "$DI_HOME"
  python3 -m zipfile -e "$archive" "$DI_HOME"
  rm -f "$archive"
  # Zip archives do not reliably carry the executable bit; every script ships without an extension or as .sh.
  find "$DI_HOME" -type f \( -name '*.sh' -o ! -name '*.*' \) -exec chmod 0755 {} +
}

signal_failure() {
  local id token
  token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token) || true
  id=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id) || id=unknown
  aws cloudformation signal-resource --region "$DI_REGION" --stack-name "$DI_STACK" \
    --logical-resource-id "$DI_SIGNAL_RESOURCE" --unique-id "${id}:$1" --status FAILURE || true
}

main() {
  set -a
  # shellcheck source=/dev/null
  . "$DI_NODE_ENV"
  set +a
  if ! ensure_cli || ! fetch_scripts; then
    say "ERROR: could not fetch node scripts from $DI_SCRIPTS_URL"
    signal_failure scripts-download-failed
    exit 1
  fi
  exec "$DI_HOME/di-bootstrap"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
