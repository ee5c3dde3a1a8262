"""KV-transfer telemetry: what the workers' CloudWatch agents collect to show that KV moved, over EFA, and did not fail.

Three collectors, all maintained components configured here, no code of DiStack's on the nodes:

1. vLLM's NIXL connector statistics, scraped from each endpoint's /metrics by the agent's Prometheus input (the
   `vllm` job of model/observability/agent_config.py). vLLM's NixlPromMetrics registers, per engine:
   histograms vllm:nixl_xfer_time_seconds, vllm:nixl_post_time_seconds, vllm:nixl_bytes_transferred,
   vllm:nixl_num_descriptors, and counters vllm:nixl_num_failed_transfers, vllm:nixl_num_failed_notifications,
   vllm:nixl_num_kv_expired_reqs ("tracked on the P instance") (vllm-project/vllm
   vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py, class NixlPromMetrics; read at a stored revision of
   the main line, NOT at tag v0.27.1, whose tree was too large to fetch where this was written). prometheus_client
   exposes a counter as NAME_total. The agent keeps counters but drops histograms (agent_config.py), so only the
   counters reach CloudWatch this way. UNVERIFIED for the Neuron image: vllm-neuron 0.29 documents its own
   vllm_neuron:* metrics and prometheus multiprocess mode (aws-neuron-sdk vllm-neuron/docs/design/vllm/metrics.md)
   but says nothing of the connector's; a name that never appears shows as the nixl-metrics-missing alarm and an
   empty panel, not as silence.
2. The EFA driver's per-port hardware counters (/sys/class/infiniband/DEVICE/ports/PORT/hw_counters: rdma_read_bytes,
   rdma_write_bytes, ...; EC2 User Guide, "Monitor an EFA" https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-working-monitor.html),
   read by the agent's own `efa` input (agent 1.300068.0 and later, RELEASE_NOTES "Add support for collecting
   Elastic Fabric Adapter (EFA) metrics on EC2 instances"; translator/translate/otel/receiver/awsefa@v1.300071.0,
   the OpenTelemetry awsefareceiver; https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch-Agent-EFA.html).
   The agent is already pinned and signature-checked on every node, so no node_exporter is added. Those metrics go
   through PutMetricData (the agent's `metrics` section), into namespace DiStack/Efa, summed per Auto Scaling group
   (the agent's aggregation_dimensions; AutoScalingGroupName comes from the instance's aws:autoscaling:groupName tag,
   which the agent reads with ec2:DescribeTags).
3. NVIDIA's DCGM exporter on GPU workers, scraped like neuron-monitor on Trainium (job `dcgm`).

TCP fallback: NIXL moving KV over TCP still counts prompt tokens at prefill while the EFA RDMA counters stay flat;
the stack alarms on that (stacks/observability/kv_alarms.py).
"""

from __future__ import annotations

from typing import Any

from model import catalog
from model.config import DeploymentConfig

# vLLM NIXL connector counters as exposed (NAME_total) and the histograms the agent drops.
NIXL_FAILED_TRANSFERS = "vllm:nixl_num_failed_transfers_total"
NIXL_FAILED_NOTIFICATIONS = "vllm:nixl_num_failed_notifications_total"
NIXL_EXPIRED_REQUESTS = "vllm:nixl_num_kv_expired_reqs_total"
NIXL_COUNTERS = (NIXL_FAILED_TRANSFERS, NIXL_FAILED_NOTIFICATIONS, NIXL_EXPIRED_REQUESTS)
NIXL_HISTOGRAMS = ("vllm:nixl_xfer_time_seconds", "vllm:nixl_post_time_seconds", "vllm:nixl_bytes_transferred",
                   "vllm:nixl_num_descriptors")
# DI traffic at prefill: vLLM V1's prompt-token counter (vllm/v1/metrics/loggers.py, "vllm:prompt_tokens",
# model/observability/upstream.py VLLM_V1), exposed with _total.
PROMPT_TOKENS = "vllm:prompt_tokens_total"

# The agent's efa input: its measurement names (CloudWatch-Agent-EFA.html), here the bytes that show whether KV
# rides RDMA. Decode pulls KV with RDMA reads (rdma_read_bytes on the reader, rdma_read_resp_bytes on the prefill
# that answers); a push-mode connector writes (rdma_write_bytes, rdma_write_recv_bytes).
EFA_NAMESPACE = "DiStack/Efa"
EFA_RDMA_BYTES = ("efa_rdma_read_bytes", "efa_rdma_read_resp_bytes", "efa_rdma_write_bytes",
                  "efa_rdma_write_recv_bytes")
EFA_BYTES = ("efa_rx_bytes", "efa_tx_bytes")
EFA_MEASUREMENTS = EFA_RDMA_BYTES + EFA_BYTES
EFA_DIMENSION = "AutoScalingGroupName"

# NVIDIA DCGM exporter (github.com/NVIDIA/dcgm-exporter, README "Quickstart": `docker run -d --gpus all --cap-add
# SYS_ADMIN --rm -p 9400:9400 nvcr.io/nvidia/k8s/dcgm-exporter:TAG`; default counters etc/default-counters.csv).
# Pinned by tag only, UNVERIFIED by digest: the two public records of this tag's digest disagree, so neither is pinned.
# NVIDIA's gpu-operator release automation (commit 2b0a32058dc33f17b4c82282effc8d41d51692d8, "chore(deps): update
# nvcr.io/nvidia/k8s/dcgm-exporter", 2025-10-14, a pull-request commit not on its main) set values.yaml's dcgmExporter
# version to 4.4.1-4.6.0-ubuntu22.04 and the bundle's dcgm-exporter image to
# sha256:a1d913783fd185d78ed8b725334f75adc86eb594afe82961a73aa63c5d0ef423; an alpasim Dockerfile (NVlabs/alpasim main
# at 3032e0c, as a fork's notes quote it; the only other public record, and every copy of it is this one line) pins
# 4.4.1-4.6.0-ubuntu22.04@sha256:b7a4241c608253aa829041cc3575ea57082491251a4a626bcdddc68eaf9a3101. One may be the
# multi-arch index and the other one platform's manifest, or the tag was pushed again; no registry is reachable
# here to tell. `docker buildx imagetools inspect nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1-4.6.0-ubuntu22.04` settles
# it (docs/security.md). A tag that is gone fails the pull, which the node reports as "metrics agent failed".
# Newer: gpu-operator main (a22dbf67, 2026-08-21) runs 4.6.0-4.8.3-distroless (values.yaml dcgmExporter.version;
# 4.4.2-4.7.0 and 4.5.3-4.8.2 came between). Not moved here without a source for an ubuntu22.04 build of it.
DCGM_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1-4.6.0-ubuntu22.04"
DCGM_PORT = 9400
JOB_DCGM = "dcgm"
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # gauge, percent
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"  # gauge, MiB of frame buffer used
DCGM_XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"  # gauge, the last XID error code (0: none)
DCGM_METRICS = (DCGM_GPU_UTIL, DCGM_FB_USED, DCGM_XID_ERRORS)


def kv_over_efa(config: DeploymentConfig) -> bool:
    """Whether this deployment's KV is meant to ride EFA RDMA: engine nixl in disaggregated mode with NIXL's
    LIBFABRIC backend on every fleet (Trainium, GPUs with GPUDirect RDMA). With UCX (g6) KV between local GPUs goes
    by cuda_ipc, so flat EFA counters say nothing there."""
    if config.engine != "nixl" or config.mode != "disaggregated":
        return False
    return all(catalog.WORKER_TYPES[f.instance_type].nixl_backend == "LIBFABRIC" for f in config.fleets.values())


def nixl_engine(config: DeploymentConfig) -> bool:
    """vLLM's NixlConnector runs (engine nixl, disaggregated): its counters exist."""
    return config.engine == "nixl" and config.mode == "disaggregated"


def efa_collected(config: DeploymentConfig, fleet_name: str) -> bool:
    return catalog.WORKER_TYPES[config.fleets[fleet_name].instance_type].efa


def gpu_fleet(config: DeploymentConfig, fleet_name: str) -> bool:
    return catalog.WORKER_TYPES[config.fleets[fleet_name].instance_type].accelerator == catalog.GPU


def efa_metrics_section() -> dict[str, Any]:
    """The agent's `metrics` section for a worker with EFA: the RDMA and device byte counters, one sum per Auto
    Scaling group (the per-device series dropped: 16 to 32 devices per instance would each be a billed metric)."""
    return {"namespace": EFA_NAMESPACE,
            "append_dimensions": {EFA_DIMENSION: "${aws:AutoScalingGroupName}"},
            "aggregation_dimensions": [[EFA_DIMENSION]],
            "metrics_collected": {"efa": {"measurement": list(EFA_MEASUREMENTS),
                                          "drop_original_metrics": list(EFA_MEASUREMENTS)}}}


def efa_published(config: DeploymentConfig) -> set[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) the efa input publishes for this deployment."""
    if not any(efa_collected(config, name) for name in config.fleets):
        return set()
    return {(EFA_NAMESPACE, name, frozenset({EFA_DIMENSION})) for name in EFA_MEASUREMENTS}


# The proxy's own measure of a handoff (diproxy/handoffs.py, shipped by diproxy/shipper as KvHandoffTime): from a
# prefill's answer with kv_transfer_params to its decode's start. What the EFA bandwidth allows: one request's KV can
# be no larger than its prefill endpoint's device memory, and moving all of it at the instance's EFA bandwidth takes
# memory / bandwidth; HANDOFF_ALLOWANCE_SECONDS adds decode's scheduling and first step. A p99 above that cannot be a
# healthy transfer over EFA: KV on TCP, a decode queue, or a hung read. A loose bound on purpose: it needs no fact
# about the model (its KV bytes per token), only the catalog's.
HANDOFF_TIME = "KvHandoffTime"
HANDOFFS_PENDING = "KvHandoffsPending"
KV_RELEASES = "KvReleases"
HANDOFF_ALLOWANCE_SECONDS = 2.0


def handoff_bound_seconds(config: DeploymentConfig) -> float | None:
    """The longest a handoff over EFA may take at p99 (see above); None unless KV rides EFA and every fleet with a
    prefill endpoint has a known EFA bandwidth (model/catalog.py InstanceType.efa_gbps)."""
    if not kv_over_efa(config):
        return None
    longest = 0.0
    for fleet in config.fleets.values():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        for endpoint in fleet.resolved_endpoints:
            if endpoint.role != "prefill":
                continue
            if not itype.efa_gbps:
                return None
            devices = endpoint.last_core - endpoint.first_core + 1
            memory_bytes = devices * itype.memory_gib_per_device(fleet.lnc) * 2**30
            longest = max(longest, memory_bytes / (itype.efa_gbps * 1e9 / 8))
    return round(longest + HANDOFF_ALLOWANCE_SECONDS, 1) if longest else None
