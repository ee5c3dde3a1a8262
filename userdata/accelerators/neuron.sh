#!/usr/bin/env bash
# Accelerator `neuron` (default): Trainium/Inferentia workers on the Neuron DLAMI. Sourced by load_accelerator
# (lib.sh); defines the accelerator_* functions (and the Neuron helpers the engine modules use) only.

# accelerator_preflight: the Neuron devices the driver (aws-neuronx-dkms) exposes, one /dev/neuronN per device.
accelerator_preflight() {
  local devices=("$DI_DEV_ROOT"/neuron[0-9]*) count=0
  [[ -e ${devices[0]} ]] && count=${#devices[@]}
  ((count == DI_EXPECTED_NEURON_DEVICES)) ||
    fail "found $count Neuron devices (/dev/neuron*), expected $DI_EXPECTED_NEURON_DEVICES: driver (aws-neuronx-dkms) missing or wrong AMI"
  log "Neuron devices: $count"
}

# accelerator_docker_args RANGE: nothing: the endpoint containers run --privileged, which exposes every
# /dev/neuronN, and the engine selects RANGE's NeuronCores through its own variable (NEURON_VISIBLE_DEVICES,
# NEURON_RT_VISIBLE_CORES).
accelerator_docker_args() { :; }

# accelerator_probe_args: what a one-off probe container needs to see the devices.
accelerator_probe_args() { printf '%s\n' --privileged; }

# accelerator_status_json: di-status's device fields.
accelerator_status_json() {
  local devices=("$DI_DEV_ROOT"/neuron[0-9]*) count=0
  [[ -e ${devices[0]} ]] && count=${#devices[@]}
  printf '"neuron_devices":%s,"expected_neuron_devices":%s' "$count" "${DI_EXPECTED_NEURON_DEVICES:-0}"
}

# accelerator_exporter: the device metrics exporter metrics-agent.sh starts on workers (start_neuron_exporter).
accelerator_exporter() { start_neuron_exporter; }

# lnc_applies: true on the instance families where the Logical NeuronCore config exists. "LNC applies only to
# Trn2 and Trn3 instances": https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-features/logical-neuroncore-config.html
lnc_applies() { [[ ${DI_INSTANCE_TYPE:-} == trn2* || ${DI_INSTANCE_TYPE:-} == trn3* ]]; }
