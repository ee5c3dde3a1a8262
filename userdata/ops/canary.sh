#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The correctness canary on this control host: diproxy.canary from the proxy's virtualenv, with the proxy's settings
# (etcd, engine, region, the CloudWatch namespace and deployment) and the served model. Prints one JSON line per
# pair and a summary; exits 1 when a pair's answers differ or a check failed. Usage: canary.sh [PERIOD] [MAX_WAITING]
set -euo pipefail
# The node's shared functions, one file per concern, where the node unpacked them.
DI_LIB_DIR=${DI_LIB_DIR:-/opt/di/lib}
. "$DI_LIB_DIR/node.sh"

DI_PROXY_ENV=${DI_PROXY_ENV:-/etc/di/proxy.env}
DI_PROXY_PYTHON=${DI_PROXY_PYTHON:-/opt/di/proxy/venv/bin/python}

main() {
  local period=${1:-1800} max_waiting=${2:-0}
  [[ $period =~ ^[1-9][0-9]*$ && $max_waiting =~ ^[0-9]+$ ]] || die "usage: canary.sh [PERIOD] [MAX_WAITING]"
  load_node_env
  [[ $DI_ROLE == control ]] || die "the canary runs on the control host (it finds the workers in etcd)"
  [[ -r $DI_PROXY_ENV ]] || die "no $DI_PROXY_ENV: DiStack's proxy is not installed here (the canary needs proxy: distack)"
  [[ -x $DI_PROXY_PYTHON ]] || die "no $DI_PROXY_PYTHON: the proxy's virtualenv is missing"
  set -a
  # shellcheck disable=SC1090
  . "$DI_PROXY_ENV"
  set +a
  export DI_MODEL_ID
  exec "$DI_PROXY_PYTHON" -m diproxy.canary --period "$period" --max-waiting "$max_waiting"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
