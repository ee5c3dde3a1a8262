#!/usr/bin/env bash
# Metrics from this node: the CloudWatch agent (AWS's package, pinned, its signature checked) with the configuration
# the stack generated for this node kind (two SSM parameters), and on workers the accelerator module's exporter
# (accelerators/*.sh accelerator_exporter) for the agent to scrape next to each vLLM endpoint's /metrics. Run by worker.sh and control.sh at the end of the
# bootstrap; runnable alone to retry. A failure never stops serving: it is logged and sent to the nodes log group as
# "metrics agent failed: REASON", which the dashboard counts, and the script exits 1.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/lib
DI_LIB_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib
. "$DI_LIB_DIR/node.sh"
. "$DI_LIB_DIR/imds.sh"
. "$DI_LIB_DIR/report.sh"
. "$DI_LIB_DIR/modules.sh"

# The agent release (aws/amazon-cloudwatch-agent RELEASE_NOTES: 1.300071.0, 2026-07-22) and the key AWS signs its
# packages with. https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/verify-CloudWatch-Agent-Package-Signature.html
# lists the package and .sig links per platform (ubuntu/amd64, amazon_linux/amd64; `latest` or a version), the key
# (assets/amazon-cloudwatch-agent.gpg) and its fingerprint.
DI_CWAGENT_VERSION=${DI_CWAGENT_VERSION:-1.300071.0}
DI_CWAGENT_FINGERPRINT=${DI_CWAGENT_FINGERPRINT:-937616F3450B7D806CBD9725D58167303B789C72}
DI_CWAGENT_HOME=${DI_CWAGENT_HOME:-/opt/aws/amazon-cloudwatch-agent}
DI_METRICS_DIR=${DI_METRICS_DIR:-/etc/di/metrics-agent}
# The placeholder the scrape configuration carries for this instance's ID (agent_config.INSTANCE_PLACEHOLDER).
INSTANCE_PLACEHOLDER=__DI_INSTANCE_ID__
# shellcheck disable=SC2034  # read by log() in lib/log.sh
DI_LOG_TAG=metrics-agent

metrics_fail() {
  log "ERROR: $*"
  report_to_cloudwatch "metrics agent failed: $*"
  exit 1
}

# parameter PART: the SSM parameter holding this node kind's agent (`agent`) or scrape (`scrape`) configuration;
# the same name model/naming.py metrics_agent_parameter builds.
parameter() { printf '/distack/%s/metrics-agent/%s/%s\n' "${DI_DEPLOYMENT:?}" "${DI_FLEET:?}" "$1"; }

download() { retry curl -fsS --proto '=https' -o "$2" "$1"; }

installed_version() { cat "$DI_CWAGENT_HOME/bin/CWAGENT_VERSION" 2>/dev/null || true; }

# is_pinned_version VERSION: whether an installed agent is the pinned release. A build writes its full version into
# bin/CWAGENT_VERSION, with a build number after the release (`1.300073.2b1889`: the file AWS publishes at
# https://s3.amazonaws.com/amazoncloudwatch-agent/info/latest/CWAGENT_VERSION,
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/download-cloudwatch-agent-commandline.html), so the
# pinned release matches with or without a `bNNN` suffix; a pin that carries the suffix matches only itself.
is_pinned_version() {
  [[ $1 == "$DI_CWAGENT_VERSION" ]] && return 0
  [[ $DI_CWAGENT_VERSION != *b* && $1 =~ ^${DI_CWAGENT_VERSION//./\\.}b[0-9]+$ ]]
}

# package_path: the agent package for this OS in AWS's download bucket (.rpm on AL2023, which has dnf; .deb on the
# Ubuntu DLAMI).
package_path() {
  if command -v dnf >/dev/null; then
    printf 'amazon_linux/amd64/%s/amazon-cloudwatch-agent.rpm\n' "$DI_CWAGENT_VERSION"
  else
    printf 'ubuntu/amd64/%s/amazon-cloudwatch-agent.deb\n' "$DI_CWAGENT_VERSION"
  fi
}

# verify_signature PACKAGE SIG KEY: the key must be AWS's (pinned fingerprint) and the package signed by it.
verify_signature() {
  local home fingerprint
  home=$(mktemp -d "$DI_RUN_DIR/gnupg.XXXXXX")
  fingerprint=$(gpg --homedir "$home" --batch --with-colons --show-keys "$3" 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
  if [[ $fingerprint != "$DI_CWAGENT_FINGERPRINT" ]]; then
    rm -rf "$home"
    metrics_fail "the agent's signing key has fingerprint '${fingerprint:-none}', expected $DI_CWAGENT_FINGERPRINT"
  fi
  gpg --homedir "$home" --batch --quiet --import "$3" 2>/dev/null || { rm -rf "$home"; metrics_fail "cannot import the agent's signing key"; }
  if ! gpg --homedir "$home" --batch --verify "$2" "$1" 2>/dev/null; then
    rm -rf "$home"
    metrics_fail "amazon-cloudwatch-agent $DI_CWAGENT_VERSION: the package's signature does not verify; not installed"
  fi
  rm -rf "$home"
}

install_agent() {
  local have base path dir
  have=$(installed_version)
  if [[ -n $have ]] && is_pinned_version "$have"; then log "amazon-cloudwatch-agent $have already installed"; return 0; fi
  # The Region's own copy of the bucket: reached through the VPC's S3 gateway endpoint, not the internet.
  base=${DI_CWAGENT_BASE_URL:-https://amazoncloudwatch-agent-$DI_REGION.s3.$DI_REGION.amazonaws.com}
  path=$(package_path)
  mkdir -p "$DI_RUN_DIR"
  dir=$(mktemp -d "$DI_RUN_DIR/cwagent.XXXXXX")
  log "downloading amazon-cloudwatch-agent $DI_CWAGENT_VERSION ($base/$path)"
  if ! download "$base/$path" "$dir/${path##*/}" || ! download "$base/$path.sig" "$dir/${path##*/}.sig" ||
    ! download "$base/assets/amazon-cloudwatch-agent.gpg" "$dir/agent.gpg"; then
    metrics_fail "cannot download amazon-cloudwatch-agent $DI_CWAGENT_VERSION from $base/$path (no such version, or no egress to S3)"
  fi
  verify_signature "$dir/${path##*/}" "$dir/${path##*/}.sig" "$dir/agent.gpg"
  if [[ $path == *.deb ]]; then
    dpkg -i "$dir/${path##*/}" >/dev/null || metrics_fail "dpkg cannot install amazon-cloudwatch-agent $DI_CWAGENT_VERSION"
  else
    dnf install -y -q "$dir/${path##*/}" || metrics_fail "dnf cannot install amazon-cloudwatch-agent $DI_CWAGENT_VERSION"
  fi
  rm -rf "$dir"
  have=$(installed_version)
  [[ $have == "$DI_CWAGENT_VERSION" ]] ||
    metrics_fail "installed amazon-cloudwatch-agent reports version '${have:-none}', expected $DI_CWAGENT_VERSION"
  log "amazon-cloudwatch-agent $have installed"
}

# write_scrape_config: the generated Prometheus configuration, with this instance's ID in place of the placeholder.
write_scrape_config() {
  local text id
  id=$(instance_id) || metrics_fail "cannot read the instance ID from instance metadata"
  text=$(retry aws ssm get-parameter --region "$DI_REGION" --name "$(parameter scrape)" \
    --query Parameter.Value --output text) || metrics_fail "cannot read SSM parameter $(parameter scrape)"
  [[ $text == *"$INSTANCE_PLACEHOLDER"* ]] || metrics_fail "SSM parameter $(parameter scrape) holds no scrape configuration"
  printf '%s\n' "${text//"$INSTANCE_PLACEHOLDER"/$id}" >"$DI_METRICS_DIR/prometheus.yaml"
}

start_agent() {
  "$DI_CWAGENT_HOME/bin/amazon-cloudwatch-agent-ctl" -a fetch-config -m ec2 -s -c "ssm:$(parameter agent)" >/dev/null ||
    metrics_fail "amazon-cloudwatch-agent-ctl did not apply ssm:$(parameter agent) (see $DI_CWAGENT_HOME/logs/)"
  log "amazon-cloudwatch-agent running with ssm:$(parameter agent)"
}

metrics_agent_main() {
  install_agent
  install -d -m 0755 "$DI_METRICS_DIR"
  if [[ ${DI_ROLE:?} != control ]]; then
    load_accelerator
    accelerator_exporter
  fi
  write_scrape_config
  start_agent
}

main() {
  load_node_env
  metrics_agent_main
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
