#!/usr/bin/env bash
# Accelerator `neuron` (default): Trainium/Inferentia workers on the Neuron DLAMI. Sourced by load_accelerator
# (lib/modules.sh); defines the accelerator_* functions (and the Neuron helpers the engine modules use) only.

# accelerator_preflight: the Neuron devices the driver (aws-neuronx-dkms) exposes, one /dev/neuronN per device.
accelerator_preflight() {
  local devices=("$DI_DEV_ROOT"/neuron[0-9]*) count=0
  [[ -e ${devices[0]} ]] && count=${#devices[@]}
  ((count == DI_EXPECTED_NEURON_DEVICES)) ||
    fail "found $count Neuron devices (/dev/neuron*), expected $DI_EXPECTED_NEURON_DEVICES: driver (aws-neuronx-dkms) missing or wrong AMI"
  log "Neuron devices: $count"
}

# neuron_device_args: `--device=/dev/neuronN` for each of the node's DI_EXPECTED_NEURON_DEVICES devices (the
# preflight checked that many exist), as the Neuron container tutorial runs one: `docker run -it --name pt17
# --device=/dev/neuron0 neuron-container:pytorch neuron-ls`
# (https://awsdocs-neuron.readthedocs-hosted.com/en/latest/containers/tutorials/build-run-neuron-container.html).
neuron_device_args() {
  local i
  for ((i = 0; i < ${DI_EXPECTED_NEURON_DEVICES:?}; i++)); do printf '%s\n' "--device=/dev/neuron$i"; done
}

# accelerator_docker_args RANGE: every Neuron device, not only RANGE's: the engine selects RANGE's NeuronCores by
# their node-wide numbers through its own variable (NEURON_VISIBLE_DEVICES for nixl, NEURON_RT_VISIBLE_CORES for the
# legacy neuron-connector; userdata/engines/), which a container seeing fewer devices would renumber.
accelerator_docker_args() { neuron_device_args; }

# accelerator_probe_args: what a one-off probe container needs to see the devices.
accelerator_probe_args() { neuron_device_args; }

# accelerator_status_json: di-status's device fields.
accelerator_status_json() {
  local devices=("$DI_DEV_ROOT"/neuron[0-9]*) count=0
  [[ -e ${devices[0]} ]] && count=${#devices[@]}
  printf '"neuron_devices":%s,"expected_neuron_devices":%s' "$count" "${DI_EXPECTED_NEURON_DEVICES:-0}"
}

# Where aws-neuronx-tools puts neuron-monitor and its exporter on the DLAMI (neuron-monitor-user-guide.rst).
DI_NEURON_BIN=${DI_NEURON_BIN:-/opt/aws/neuron/bin}
# Must match naming.NEURON_MONITOR_PORT, the port the generated scrape configuration reads.
DI_NEURON_MONITOR_PORT=${DI_NEURON_MONITOR_PORT:-9010}

# accelerator_exporter: `neuron-monitor | neuron-monitor-prometheus.py --port PORT` under systemd (the user guide's
# pipeline; its default port 8000 is the first vLLM endpoint's). The exporter needs prometheus_client in the host's
# Python; Ubuntu packages it.
accelerator_exporter() {
  [[ -x $DI_NEURON_BIN/neuron-monitor && -e $DI_NEURON_BIN/neuron-monitor-prometheus.py ]] ||
    metrics_fail "no neuron-monitor in $DI_NEURON_BIN (aws-neuronx-tools missing from the AMI): no Neuron metrics"
  if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive retry apt-get install -y -q python3-prometheus-client >/dev/null ||
      metrics_fail "cannot install python3-prometheus-client for neuron-monitor-prometheus.py"
  fi
  printf 'DI_NEURON_BIN=%s\nDI_NEURON_MONITOR_PORT=%s\n' "$DI_NEURON_BIN" "$DI_NEURON_MONITOR_PORT" >"$DI_METRICS_DIR/neuron-monitor.env"
  install_unit "$DI_HOME/units/di-neuron-monitor.service"
  systemctl daemon-reload
  systemctl enable --now di-neuron-monitor.service || metrics_fail "di-neuron-monitor.service did not start"
}
# (metrics_fail is metrics-agent.sh's, the only caller.)

# lnc_applies: true on the instance types where the Logical NeuronCore config exists ("LNC applies only to Trn2 and
# Trn3 instances"). The instance catalog says which (model/catalog.py InstanceType.lnc_applies, DI_LNC_APPLIES in
# node.env), so no script reads a fact from an instance type's name.
lnc_applies() { [[ ${DI_LNC_APPLIES:-0} == 1 ]]; }
