#!/usr/bin/env bash
# Loading the per-accelerator and per-engine modules (userdata/accelerators/, userdata/engines/), and the helpers
# their interface promises them. Sourced, never run; defines functions only.
#
# A module may call log, die, retry (log.sh), fail (report.sh), endpoints, install_unit (node.sh, units.sh),
# local_ip (imds.sh), uverbs_device_args (efa.sh), contained_args (containment.sh), compiled_key and compile_by_serving (compile.sh), kv_role
# (below): they are sourced here, so a script that loads a module has them whatever it sources itself.
# shellcheck source=log.sh
. "${BASH_SOURCE[0]%/*}/log.sh"
# shellcheck source=node.sh
. "${BASH_SOURCE[0]%/*}/node.sh"
# shellcheck source=containment.sh
. "${BASH_SOURCE[0]%/*}/containment.sh"
# shellcheck source=imds.sh
. "${BASH_SOURCE[0]%/*}/imds.sh"
# shellcheck source=report.sh
. "${BASH_SOURCE[0]%/*}/report.sh"
# shellcheck source=units.sh
. "${BASH_SOURCE[0]%/*}/units.sh"
# shellcheck source=efa.sh
. "${BASH_SOURCE[0]%/*}/efa.sh"
# shellcheck source=compile.sh
. "${BASH_SOURCE[0]%/*}/compile.sh"

# load_accelerator: source userdata/accelerators/$DI_ACCELERATOR.sh (default neuron: node.env written before the
# accelerator existed keeps working), which defines what differs per accelerator family:
#   accelerator_preflight           boot-time device check (fail REASON when the count is wrong)
#   accelerator_docker_args RANGE   `docker run` words giving an endpoint the devices of RANGE (DI_ENDPOINTS)
#   accelerator_probe_args          `docker run` words giving a one-off probe container the devices
#   accelerator_status_json         di-status's device fields ("name":value,...)
#   accelerator_exporter            the device metrics exporter metrics-agent.sh starts on workers
# Adding an accelerator family means adding a file there; nothing else branches on DI_ACCELERATOR.
load_accelerator() {
  local file="$DI_SCRIPTS_DIR/accelerators/${DI_ACCELERATOR:-neuron}.sh" known
  if [[ ! -r $file ]]; then
    known=$(cd "$DI_SCRIPTS_DIR/accelerators" && printf '%s ' *.sh)
    die "DI_ACCELERATOR='${DI_ACCELERATOR:-}' in $DI_NODE_ENV has no module $file; known: ${known//.sh/}"
  fi
  # shellcheck source=/dev/null
  . "$file"
}

# load_engine: source userdata/engines/$DI_ENGINE.sh, which defines what differs per KV-transfer engine:
#   engine_entrypoint          the container's entrypoint (replaces the DLC's non-forwarding wrapper)
#   engine_env ROLE CORES INDEX   the container's `-e` arguments, one word per line
#   engine_server_args ROLE PORT  the server's arguments after the entrypoint, one word per line
#   engine_self_registers      true when the server registers its DI endpoints in etcd by itself
#   engine_preflight           boot-time check after the image pull (fail REASON when it fails)
#   engine_prepare INDEX       before every start of endpoint INDEX
#   engine_compile KEY         fill /data/compiled/KEY the engine's way (ops/compile.sh uploads it)
#   engine_kv_hold_seconds ROLE   how long a server may keep a finished request's KV for a peer (ops/drain.sh waits)
#   engine_registry_fields ROLE INDEX   extra JSON members of the etcd value di-register writes (",\"k\":v" or nothing)
# and, optionally, its control-host hooks (load_engine_hooks):
#   engine_control_start       on the control host after etcd and before the proxy, e.g. a side service its workers reach
# and, optionally, for its endpoint containers:
#   engine_device_args RANGE   `docker run` words that replace the accelerator's devices (and IPC_LOCK), e.g. --privileged
# Adding an engine means adding a file there; nothing else branches on DI_ENGINE. The accelerator module comes first
# (an engine may run on more than one family and uses its functions).
load_engine() {
  load_accelerator
  load_engine_module
}

# load_engine_module: the engine's file alone (the control host has no accelerator).
load_engine_module() {
  local file="$DI_SCRIPTS_DIR/engines/${DI_ENGINE:-}.sh" known
  if [[ -z ${DI_ENGINE:-} || ! -r $file ]]; then
    known=$(cd "$DI_SCRIPTS_DIR/engines" && printf '%s ' *.sh)
    die "DI_ENGINE='${DI_ENGINE:-}' in $DI_NODE_ENV has no module $file; known: ${known//.sh/}(set engine: in config/NAME.yaml)"
  fi
  # shellcheck source=/dev/null
  . "$file"
}

# run_engine_hook NAME ARGS...: call the engine's optional hook NAME when its module defines it.
run_engine_hook() {
  if declare -F "$1" >/dev/null; then "$@"; fi
}

# kv_role ROLE: the kv_role a DI endpoint's --kv-transfer-config gives vLLM, whichever the connector.
kv_role() {
  case $1 in
    prefill) echo kv_producer ;;
    decode) echo kv_consumer ;;
    *) die "endpoint role '$1' has no KV role" ;;
  esac
}

# registrar_wanted ROLE: true when endpoints of ROLE need di-register to appear in etcd: standard endpoints
# always, DI endpoints unless the engine registers them itself (NeuronConnector does; vLLM's NixlConnector not).
registrar_wanted() { [[ $1 == standard ]] || ! engine_self_registers; }
