#!/usr/bin/env bash
# S3 transfers at network speed: the AWS CLI v2's CRT transfer client, which splits objects into parts and fetches
# them in parallel (https://docs.aws.amazon.com/cli/latest/topic/s3-config.html, preferred_transfer_client and
# target_bandwidth; GA in aws/aws-cli#8360). Its own config file, so nothing else in root's AWS config changes; the
# bucket is in DI_REGION, as the CRT client requires ("Region redirects - Transfers fail"). Sourced, never run.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"

DI_S3_CONFIG=${DI_S3_CONFIG:-}

# s3_config: the AWS config file the transfers use (written once). Its target bandwidth is DI_S3_TARGET_BANDWIDTH
# from node.env (the instance catalog's figure for this type, model/catalog.py); empty leaves the CLI's default.
s3_config() {
  if [[ -z $DI_S3_CONFIG || ! -e $DI_S3_CONFIG ]]; then
    local bandwidth=${DI_S3_TARGET_BANDWIDTH:-}
    mkdir -p "$DI_RUN_DIR"
    DI_S3_CONFIG=${DI_S3_CONFIG:-$DI_RUN_DIR/aws-s3.config}
    # CLI v1 has no CRT client and ignores the setting: the transfers then run at the classic client's pace.
    [[ $(aws --version 2>&1) == aws-cli/2.* ]] ||
      log "WARNING: $(aws --version 2>&1 | head -n 1) is not AWS CLI v2: S3 downloads run without the CRT client"
    {
      printf '[default]\ns3 =\n  preferred_transfer_client = crt\n'
      [[ -z $bandwidth ]] || printf '  target_bandwidth = %s\n' "$bandwidth"
    } >"$DI_S3_CONFIG"
  fi
  printf '%s\n' "$DI_S3_CONFIG"
}

# s3_sync SRC DST: `aws s3 sync` through the CRT client. The CLI v2 checks each download against the checksum S3
# stored with the object when there is one (CRC64NVME by default for its uploads):
# https://docs.aws.amazon.com/cli/latest/topic/s3-faq.html
s3_sync() {
  local config
  config=$(s3_config)
  AWS_CONFIG_FILE=$config aws s3 sync --only-show-errors --region "$DI_REGION" "$1" "$2"
}
