"""Time to serving: how long a new worker of a fleet takes from launch to every endpoint answering /health.

A model on paper, step by step. Every figure is a `Fact` with its basis: "cited" (a public AWS/Neuron/vLLM
source, named in `source`), "measured" (where), or "estimated" (the reasoning in `source`); a step is only as
firm as its weakest fact. Cold is a new instance; warm is one started from a Stopped warm pool, which ran its
first bootstrap before it was stopped, so whatever that bootstrap left on EBS is still there.

The storage and transfer choices are a `Layout`: CURRENT is what the nodes do today (weights and compiled cache
on instance-store NVMe, the AWS CLI's own S3 client choice, gp3 at its default throughput); TARGET is the layout
this model argues for (weights and compiled cache on the root gp3 volume at 1,000 MiB/s, the CRT S3 client).
`estimate` uses TARGET unless told otherwise.

Used by the scaling settings (instance warm-up, launch-hook timeout) and by `bench/time_to_serving.py`.
Pure Python: never imports aws_cdk (dictl imports stacks modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model import catalog
from model.config import DeploymentConfig, FleetConfig

Basis = Literal["cited", "measured", "estimated"]

GB = 1000**3
MB = 1000**2
MIB = 1024**2
# Weakest first: a step built from an estimate is an estimate.
_STRENGTH = {"estimated": 0, "measured": 1, "cited": 2}


@dataclass(frozen=True)
class Fact:
    """One figure the model uses, with where it comes from."""

    value: float
    source: str
    basis: Basis


@dataclass(frozen=True)
class Step:
    """One step from launch to /health."""

    name: str
    seconds: float
    source: str
    basis: Basis
    # What the step moves or waits for in this case (sizes, where from); sources stay in `source`.
    detail: str = ""


@dataclass(frozen=True)
class ServingTime:
    """The steps of one fleet's new worker from launch to /health, cold or warm."""

    environment: str
    fleet: str
    warm: bool
    layout: str
    steps: tuple[Step, ...]

    @property
    def total_seconds(self) -> float:
        """The steps run one after the other on the node (worker.sh), so the total is their sum."""
        return sum(step.seconds for step in self.steps)

    def dominant(self) -> Step:
        """The longest step."""
        return max(self.steps, key=lambda step: step.seconds)


class UnknownFleet(ValueError):
    """The environment has no fleet of that name."""


@dataclass(frozen=True)
class Layout:
    """Where a worker keeps what it needs to serve, and how it fetches it."""

    name: str
    # Weights and the compiled cache on the root EBS volume (kept through a stop) instead of instance-store NVMe.
    data_on_ebs: bool
    # Root gp3 volume performance (the launch template's Throughput and Iops).
    ebs_throughput_mibps: int
    ebs_iops: int
    # "auto": the AWS CLI picks its transfer client itself; "crt": preferred_transfer_client = crt.
    s3_client: Literal["auto", "crt"]
    summary: str

    def __post_init__(self) -> None:
        # gp3's own limits: EC2 refuses a volume outside them at launch, so the model refuses them first.
        if not GP3_DEFAULT.value <= self.ebs_throughput_mibps <= GP3_MAX.value:
            raise ValueError(f"layout {self.name}: gp3 throughput {self.ebs_throughput_mibps} MiB/s outside "
                             f"{GP3_DEFAULT.value:g}-{GP3_MAX.value:g}")
        if self.ebs_throughput_mibps > GP3_DEFAULT.value and \
                self.ebs_throughput_mibps > self.ebs_iops * GP3_MIBPS_PER_IOPS.value:
            raise ValueError(f"layout {self.name}: {self.ebs_throughput_mibps} MiB/s needs at least "
                             f"{self.ebs_throughput_mibps / GP3_MIBPS_PER_IOPS.value:.0f} IOPS "
                             f"({GP3_MIBPS_PER_IOPS.source})")


# ---------------------------------------------------------------------------------------------------------
# Sources. Each URL or repo:path@commit was read for this model; the quote is in the Fact's source.

EBS_UG = "https://docs.aws.amazon.com/ebs/latest/userguide/general-purpose.html"
BOTOCORE_EC2 = "botocore 1.44.8 data/ec2/2016-11-15/service-2.json"
INSTANCE_STORE = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-store-lifetime.html"
STOP_API = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StopInstances.html"
CLI_S3_CONFIG = "aws/aws-cli awscli/topics/s3-config.rst@016fe6bdd2f0bfb3e9561909c1029a5d830b2d58"
CRT_PLATFORMS = "awslabs/aws-c-s3 source/s3_platform_info.c@065fe3d7de22fd75bbafc892dbb1625e14af947a"
S3_PER_CONNECTION = ("https://repost.aws/articles/AR1Jqz-WmjRzCgVGa-uVSdLQ/"
                     "maximizing-amazon-s3-transfer-throughput-to-amazon-ec2-instances")
HF_TRANSFER = "https://github.com/huggingface/hf_transfer (README)"
CHECKPOINT_LOADING = ("aws-neuron/aws-neuron-sdk vllm-neuron/docs/design/framework/checkpoint_loading.md"
                      "@a3247f5b8c305f9b70a19993acb306122e736eec")
NEURON_METRICS = ("aws-neuron/aws-neuron-sdk vllm-neuron/docs/design/vllm/metrics.md"
                  "@a3247f5b8c305f9b70a19993acb306122e736eec")
LLAMA70B_TUTORIAL = ("aws-neuron/aws-neuron-sdk vllm-neuron/docs/tutorials/tutorial-llama3-70b.md"
                     "@43a89626d2aa0f9f649b581df8dfefe85b2b603d")
DLC_DOCKERFILE = ("aws-neuron/deep-learning-containers vllm/inference/0.24.0.1.1.0/Dockerfile.neuronx"
                  "@4536c92a466b8981ed9b5f67e4fa388f601c2b40")

# EC2 --------------------------------------------------------------------------------------------------------
INSTANCE_START_COLD = Fact(
    180, "estimated: RunInstances to user data on a 48xlarge with 16 network cards in a placement group, about "
         "1-2 min to running plus the Ubuntu boot and cloud-init; the root volume is restored lazily from the AMI "
         "snapshot, so first reads are slow (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-initialize.html)",
    "estimated")
INSTANCE_START_WARM = Fact(
    120, "estimated: StartInstances of a Stopped warm-pool instance to its boot unit: no placement or AMI restore "
         "left, only the boot (cloud-init runs user data on the first boot only, so the node needs its own unit)",
    "estimated")
NODE_PREP_COLD = Fact(
    60, "estimated: worker.sh before the pull: Docker from apt when the DLAMI lacks it, accelerator and EFA checks, "
        "RAID 0 and mkfs over the NVMe disks, the Hugging Face token from Secrets Manager", "estimated")
NODE_PREP_WARM = Fact(20, "estimated: the same checks with Docker installed (and the NVMe array rebuilt when data "
                          "lives there: a stop wipes it)", "estimated")

# Image ------------------------------------------------------------------------------------------------------
IMAGE_COMPRESSED_GB = Fact(
    8, "estimated: no public size found (ECR Public not reachable from here); the Dockerfile layers Ubuntu 24.04 "
       "with build-essential, OpenJDK and ffmpeg, conda with MKL, the EFA installer, the AWS CLI, neuronx-cc and "
       f"the vLLM Neuron plugin ({DLC_DOCKERFILE}); about 40% of the unpacked size", "estimated")
IMAGE_UNPACKED_GB = Fact(
    20, "estimated: a third-party EKS guide calls the image 'large (~15-20 GB)'; measure with "
        "`docker image inspect -f '{{.Size}}'` on a worker", "estimated")
PULL_DOWNLOAD_BPS = Fact(
    250 * MB, "estimated: docker fetches 3 layers at a time (max-concurrent-downloads), one HTTPS stream each, "
              f"and S3 serves one connection at most 5 Gbps ({S3_PER_CONNECTION})", "estimated")
PULL_UNPACK_BPS = Fact(150 * MB, "estimated: gzip decompression, one layer at a time on one core", "estimated")
PULL_WARM = Fact(5, "estimated: the layers are on the root volume since the first boot (a stop keeps EBS, "
                    f"{STOP_API}); `docker pull` only compares the manifest", "estimated")

# The GPU image (AWS's vLLM DLC, model/images.py): upstream vllm/vllm-openai (CUDA 13 runtime, PyTorch, FlashInfer
# cubins, the KV-connector wheels) plus EFA 1.47.0 and the DLC's own packages (aws/deep-learning-containers
# docker/vllm/Dockerfile@e0ecedea6a L3, L11, L73-74). No size is published where DiStack was built.
GPU_IMAGE_COMPRESSED_GB = Fact(
    12, "estimated: no public size read (registries not reachable from here); upstream vllm/vllm-openai layers CUDA "
        "13 runtime libraries, PyTorch, FlashInfer cubins and the KV connectors, and the DLC adds EFA 1.47.0 "
        "(aws/deep-learning-containers docker/vllm/Dockerfile@e0ecedea6a L3, L11, L73-74); measure with "
        "`docker image inspect -f '{{.Size}}'` on a worker", "estimated")
GPU_IMAGE_UNPACKED_GB = Fact(
    25, "estimated: about twice the compressed size, as CUDA and PyTorch libraries compress about 2:1", "estimated")

# S3 and Hugging Face ----------------------------------------------------------------------------------------
# The CLI's documented `auto` list. The v2 CLI really asks its bundled awscrt (awscrt.s3.is_optimized_for_system(),
# aws-cli awscli/customizations/s3/factory.py), whose aws-c-s3 table has trn2.48xlarge at 065fe3d but which build the
# DLAMI's CLI carries is unknown: the model takes the documented list, so `auto` is classic on trn2.
CLI_AUTO_CRT_TYPES = frozenset({"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "trn1n.32xlarge", "trn1.32xlarge"})
CLI_AUTO_SOURCE = (f"cited: {CLI_S3_CONFIG}: preferred_transfer_client 'auto' resolves to crt on p4d.24xlarge, "
                   "p4de.24xlarge, p5.48xlarge, trn1n.32xlarge, trn1.32xlarge; 'Otherwise, it resolves to classic' "
                   "(the CLI asks its bundled awscrt, whose newer builds also list trn2.48xlarge: unknown on the DLAMI)")
# The CRT client's target per instance type ("not all of the advertised ... bandwidth can be hit from the cpu").
CRT_TARGET_GBPS = {"trn2.48xlarge": 400, "trn2u.48xlarge": 400, "trn1.32xlarge": 600, "trn1n.32xlarge": 800}
CRT_TARGET_SOURCE = (f"cited: {CRT_PLATFORMS}: max_throughput_gbps 400 for trn2.48xlarge, 600 for trn1.32xlarge; "
                     f"an unknown type falls back to a 10 Gb/s target ({CLI_S3_CONFIG}, target_bandwidth)")
CRT_PRACTICAL_BPS = Fact(
    5 * GB, "estimated: 40 Gb/s, a tenth of the CRT client's own target on these types, for file writes and "
            "per-object overhead on ~30 safetensors files; measure it", "estimated")
CLASSIC_BPS = Fact(
    300 * MB, f"estimated: the classic client's defaults are max_concurrent_requests 10 and 8MB parts "
              f"({CLI_S3_CONFIG}), Python-bound far below the network", "estimated")
HF_BPS = Fact(
    300 * MB, "estimated: `huggingface-cli download` in the image; Python clients top out near 500 MB/s "
              f"('to go beyond ~500MB/s ... where Python cannot cap out the available bandwidth', {HF_TRANSFER})",
    "estimated")

# EBS and instance store -------------------------------------------------------------------------------------
GP3_DEFAULT = Fact(125, f"cited: {BOTOCORE_EC2} ModifyVolume Throughput: 'Otherwise, the default value is 125' "
                        "MiB/s; Iops default 3,000 (the launch template sets neither today)", "cited")
GP3_MAX = Fact(2000, f"cited: {BOTOCORE_EC2} LaunchTemplateEbsBlockDeviceRequest Throughput: 'a maximum of 2,000 "
                     "MiB/s'; gp3 Iops 3,000 - 80,000", "cited")
GP3_MIBPS_PER_IOPS = Fact(0.25, f"cited: {EBS_UG}: at most 0.25 MiB/s of throughput per provisioned IOPS", "cited")
NVME_WIPED = Fact(0, f"cited: {INSTANCE_STORE}: 'the data does not persist if the instance is stopped, hibernated, "
                    "or terminated'", "cited")
EBS_KEPT = Fact(0, f"cited: {STOP_API}: 'a stopped or hibernated instance retains its root volume and any data "
                   "volumes'", "cited")

# Loading and warm-up ----------------------------------------------------------------------------------------
# vLLM Neuron's multi-process loader: Llama3 405B (~750 GB) at TP 64 on one server in 61 s with the checkpoint
# already in the page cache (85 s cold), "For large models, bottlenecks are disk reads"; GPT-OSS 120B in 12 s,
# "For small models, we get bottlenecked by Neuron Runtime initialization".
HBM_LOAD_BPS = Fact(750 * GB / 61, f"cited: {CHECKPOINT_LOADING}: Llama3 405B (~750 GB), TP 64, 61 s from the page "
                                   "cache (12.3 GB/s per instance)", "cited")
HBM_LOAD_FLOOR = Fact(12, f"cited: {CHECKPOINT_LOADING}: GPT-OSS 120B in 12 s, bound by Neuron Runtime init",
                      "cited")
# The 0.9.1 images' single-process NxDI: "Llama3.1 405B (~750 GB) currently take around 15-20 minutes".
NXDI_LOAD_BPS = Fact(750 * GB / (17.5 * 60), f"cited: {CHECKPOINT_LOADING}: single-process NxDI loads Llama3.1 405B "
                                             "(~750 GB) in 'around 15-20 minutes' (0.71 GB/s per server)", "cited")
SERVER_START = Fact(60, "estimated: container start, vLLM and plugin imports, one process per TP rank, Neuron "
                        "Runtime init", "estimated")
WARMUP = Fact(90, "estimated: NEFFs from the compile cache onto the cores, one warm-up run per bucket, KV cache "
                  f"allocation and NIXL registration; the server reports it as vllm_neuron:startup_time_seconds "
                  f"({NEURON_METRICS})", "estimated")
COMPILE_70B = Fact(17.5 * 60, f"cited: {LLAMA70B_TUTORIAL}: the first launch compiles 'roughly 15-20 minutes for the "
                              "70B model'; later launches reuse cached NEFFs", "cited")
COMPILED_GB_BASE = 1.0
COMPILED_GB_PER_B = 0.02
COMPILED_SOURCE = ("estimated: NEFFs only, no weights (the plugin passes weights at run time; NxDI's --compile-only "
                   "without --save-sharded-checkpoint); 1 GB + 0.02 GB per billion parameters")
# GPU: no Neuron compile. vLLM's own caches (torch.compile artifacts, under VLLM_CACHE_ROOT) are what the node syncs.
GPU_COMPILED = Fact(0.5 * GB, "estimated: vLLM's torch.compile cache under VLLM_CACHE_ROOT (Inductor kernels for "
                              "the model's graph pieces; no weights), about 0.5 GB", "estimated")
GPU_SERVER_START = Fact(45, "estimated: container start, vLLM imports, one worker process per TP rank, CUDA and NCCL "
                            "initialisation", "estimated")
# Page cache to GPU memory: each rank copies its shard over its own PCIe Gen5 x16 link (64 GB/s each way on
# H100 SXM), far above what the safetensors loader's Python and tensor handling keep up with.
GPU_LOAD_BPS = Fact(4 * GB, "estimated: vLLM's default safetensors loader at about 4 GB/s per instance from the page "
                            "cache, well under PCIe Gen5 x16 per GPU; the loader, not the bus, sets the pace",
                    "estimated")
GPU_LOAD_FLOOR = Fact(5, "estimated: opening the checkpoint and allocating the shards takes seconds even for a "
                         "small model", "estimated")
GPU_WARMUP = Fact(60, "estimated: torch.compile loading its cached artifacts, CUDA graph capture over the batch sizes, "
                      "KV cache allocation and NIXL memory registration; vLLM logs each part's seconds at start",
                  "estimated")

CURRENT = Layout(
    "current", data_on_ebs=False, ebs_throughput_mibps=int(GP3_DEFAULT.value), ebs_iops=3000, s3_client="auto",
    summary="today: weights and compiled cache on instance-store NVMe (wiped by a stop), the AWS CLI's own "
            "client choice (classic on trn2), gp3 root at its 125 MiB/s default")
TARGET = Layout(
    "target", data_on_ebs=True, ebs_throughput_mibps=1000, ebs_iops=4000, s3_client="crt",
    summary="weights and compiled cache on the root gp3 volume at 1,000 MiB/s and 4,000 IOPS (kept by a stop), "
            "S3 through the CRT client (preferred_transfer_client = crt)")
LAYOUTS = {layout.name: layout for layout in (CURRENT, TARGET)}


# ---------------------------------------------------------------------------------------------------------
def weights_bytes(config: DeploymentConfig) -> float:
    """Parameters times bytes per parameter of the configured dtype."""
    billions = model_billions(config)
    return billions * 1e9 * catalog.DTYPE_BYTES[config.model.dtype]


def model_billions(config: DeploymentConfig) -> float:
    """The model's size in billions of parameters (config, else the catalog)."""
    billions = config.model.parameters_billion or catalog.KNOWN_MODEL_PARAMETERS_B.get(config.model.id)
    if billions is None:
        raise ValueError(f"model {config.model.id}: unknown size; set model.parameters_billion")
    return billions


def _gpu(config: DeploymentConfig) -> bool:
    return config.accelerator == catalog.GPU


def compiled_bytes(config: DeploymentConfig) -> float:
    """Estimated size of the compiled artifacts a worker syncs (NEFFs on Neuron; vLLM's compile cache on GPU)."""
    if _gpu(config):
        return GPU_COMPILED.value
    return (COMPILED_GB_BASE + COMPILED_GB_PER_B * model_billions(config)) * GB


def _compiled_fact(config: DeploymentConfig) -> Fact:
    return GPU_COMPILED if _gpu(config) else Fact(compiled_bytes(config), COMPILED_SOURCE, "estimated")


def _weakest(*facts: Fact) -> Basis:
    return min((fact.basis for fact in facts), key=_STRENGTH.__getitem__)


def _step(name: str, seconds: float, *facts: Fact, detail: str = "") -> Step:
    sources = list(dict.fromkeys(fact.source for fact in facts))
    return Step(name, round(seconds, 1), " | ".join(sources), _weakest(*facts), detail)


def _ebs_bps(layout: Layout) -> float:
    return layout.ebs_throughput_mibps * MIB


def _ebs_fact(layout: Layout) -> Fact:
    if layout.ebs_throughput_mibps == GP3_DEFAULT.value:
        return GP3_DEFAULT
    return Fact(layout.ebs_throughput_mibps,
                f"cited: gp3 provisioned at {layout.ebs_throughput_mibps} MiB/s and {layout.ebs_iops} IOPS ("
                f"{GP3_MAX.source}; {GP3_MIBPS_PER_IOPS.source})", "cited")


def s3_rate(fleet: FleetConfig, layout: Layout) -> tuple[float, list[Fact]]:
    """Bytes per second an `aws s3 sync` reaches on this fleet's instances under this layout."""
    uses_crt = layout.s3_client == "crt" or fleet.instance_type in CLI_AUTO_CRT_TYPES
    client = Fact(1, CLI_AUTO_SOURCE if layout.s3_client == "auto" else
                  f"cited: preferred_transfer_client = crt forces the CRT client ({CLI_S3_CONFIG})", "cited")
    if not uses_crt:
        return CLASSIC_BPS.value, [client, CLASSIC_BPS]
    target_bps = CRT_TARGET_GBPS.get(fleet.instance_type, 10) * 1e9 / 8
    target = Fact(target_bps, CRT_TARGET_SOURCE, "cited")
    return min(target_bps, CRT_PRACTICAL_BPS.value), [client, target, CRT_PRACTICAL_BPS]


def _download(config: DeploymentConfig, fleet: FleetConfig, layout: Layout, size: float,
              from_hf: bool) -> tuple[float, list[Fact]]:
    """Seconds to bring `size` bytes onto the node's data dir, and the facts used."""
    if from_hf:
        rate, facts = HF_BPS.value, [HF_BPS]
    else:
        rate, facts = s3_rate(fleet, layout)
    if layout.data_on_ebs and _ebs_bps(layout) < rate:
        rate, facts = _ebs_bps(layout), facts + [_ebs_fact(layout)]
    return size / rate, facts


def _image_pull(config: DeploymentConfig, layout: Layout, warm: bool) -> Step:
    if warm:
        return _step("image pull", PULL_WARM.value, PULL_WARM, detail="layers already on the root volume")
    compressed, unpacked = ((GPU_IMAGE_COMPRESSED_GB, GPU_IMAGE_UNPACKED_GB) if _gpu(config)
                            else (IMAGE_COMPRESSED_GB, IMAGE_UNPACKED_GB))
    # Layers download in parallel with unpacking; the slower of the two sets the pace. Unpacking writes to the
    # root volume (/var/lib/docker), so its throughput caps it.
    download = compressed.value * GB / PULL_DOWNLOAD_BPS.value
    unpack_rate = min(PULL_UNPACK_BPS.value, _ebs_bps(layout))
    unpack = unpacked.value * GB / unpack_rate
    facts = [compressed, PULL_DOWNLOAD_BPS, unpacked, PULL_UNPACK_BPS]
    if _ebs_bps(layout) < PULL_UNPACK_BPS.value:
        facts.append(_ebs_fact(layout))
    return _step("image pull", max(download, unpack), *facts,
                 detail=f"~{compressed.value:g} GB compressed, ~{unpacked.value:g} GB unpacked")


def _weights_to_hbm(config: DeploymentConfig, fleet: FleetConfig) -> tuple[float, list[Fact]]:
    """Seconds for every endpoint of the node to load the weights into HBM once they are in the page cache."""
    weights = weights_bytes(config)
    if _gpu(config):
        # Each endpoint loads its own copy over its GPUs; the node's loader rate is shared by all of them.
        total = weights * len(fleet.resolved_endpoints)
        return max(GPU_LOAD_FLOOR.value, total / GPU_LOAD_BPS.value), [GPU_LOAD_BPS, GPU_LOAD_FLOOR]
    if config.engine_module.weights_load == "per-server":
        # One NxDI process per server, servers side by side: each reads the whole checkpoint at its own pace.
        return weights / NXDI_LOAD_BPS.value, [NXDI_LOAD_BPS]
    # Each endpoint is its own server holding all the weights, sharded over its TP ranks; the instance's load
    # rate is shared by all of them.
    total = weights * len(fleet.resolved_endpoints)
    return max(HBM_LOAD_FLOOR.value, total / HBM_LOAD_BPS.value), [HBM_LOAD_BPS, HBM_LOAD_FLOOR]


def _load_and_warmup(config: DeploymentConfig, fleet: FleetConfig, layout: Layout, warm: bool) -> Step:
    hbm_seconds, facts = _weights_to_hbm(config, fleet)
    disk_seconds = 0.0
    if warm and layout.data_on_ebs:
        # After a stop the page cache is empty: the endpoints read the checkpoint from EBS once (they share the
        # page cache), and the loader pipelines reads with device writes, so the slower of the two sets the pace.
        disk_seconds = weights_bytes(config) / _ebs_bps(layout)
        facts.append(_ebs_fact(layout))
        detail = "weights read from EBS (empty page cache after the stop), pipelined with the device writes"
    else:
        detail = "weights still in the page cache from the download (host memory holds them)"
    start, warmup = (GPU_SERVER_START, GPU_WARMUP) if _gpu(config) else (SERVER_START, WARMUP)
    seconds = start.value + max(disk_seconds, hbm_seconds) + warmup.value
    return _step("load and warm-up", seconds, start, *facts, warmup, detail=detail)


def estimate(config: DeploymentConfig, fleet_name: str, *, warm: bool, layout: Layout = TARGET) -> ServingTime:
    """The steps from launch to /health of one new worker of `fleet_name`, cold (a new instance) or warm (started
    from a Stopped warm pool), with the compiled artifacts already in S3 (`dictl compile`)."""
    fleet = config.fleets.get(fleet_name)
    if fleet is None:
        known = ", ".join(sorted(config.fleets)) or "none"
        raise UnknownFleet(f"environment {config.name} has no fleet {fleet_name!r} (fleets: {known})")
    from_hf = config.model.source == "huggingface"
    kept = warm and layout.data_on_ebs
    steps = [
        _step("instance start", (INSTANCE_START_WARM if warm else INSTANCE_START_COLD).value,
              INSTANCE_START_WARM if warm else INSTANCE_START_COLD),
        _step("node preparation", (NODE_PREP_WARM if warm else NODE_PREP_COLD).value,
              NODE_PREP_WARM if warm else NODE_PREP_COLD),
        _image_pull(config, layout, warm),
    ]
    where = "Hugging Face" if from_hf else "S3 (models/<id>/)"
    if kept:
        steps.append(_step("model download", 0, EBS_KEPT, detail="weights on EBS since the first boot"))
        steps.append(_step("compiled-artifact sync", 0, EBS_KEPT, detail="compile cache on EBS since the first boot"))
    else:
        wiped = [NVME_WIPED] if warm else []
        again = " again: the stop emptied the instance-store NVMe" if warm else ""
        seconds, facts = _download(config, fleet, layout, weights_bytes(config), from_hf)
        steps.append(_step("model download", seconds, *facts, *wiped,
                           detail=f"{weights_bytes(config) / GB:.0f} GB from {where}{again}"))
        seconds, facts = _download(config, fleet, layout, compiled_bytes(config), False)
        steps.append(_step("compiled-artifact sync", seconds, *facts, *wiped, _compiled_fact(config),
                           detail=f"~{compiled_bytes(config) / GB:.1f} GB from S3 (compiled/<key>/){again}"))
    steps.append(_load_and_warmup(config, fleet, layout, warm))
    return ServingTime(config.name, fleet_name, warm, layout.name, tuple(steps))


def warm_weights_options(config: DeploymentConfig, fleet_name: str) -> list[tuple[str, float, Basis]]:
    """Where the weights can wait for a warm start, and the seconds each costs before the load can finish:
    the trade-off behind TARGET, in numbers. Reading from EBS overlaps the HBM load; refilling NVMe does not."""
    fleet = config.fleets[fleet_name]
    weights = weights_bytes(config)
    hbm, _ = _weights_to_hbm(config, fleet)
    options: list[tuple[str, float, Basis]] = []
    for mibps, iops in ((125, 3000), (1000, 4000), (2000, 8000)):
        read = weights / (mibps * MIB)
        options.append((f"root gp3 at {mibps} MiB/s, {iops} IOPS", max(read, hbm), "cited"))
    crt, facts = s3_rate(fleet, TARGET)
    options.append(("instance-store NVMe, refilled from S3 by the CRT client", weights / crt + hbm,
                    _weakest(*facts)))
    classic, facts = s3_rate(fleet, CURRENT)
    options.append(("instance-store NVMe, refilled from S3 by the CLI's default client", weights / classic + hbm,
                    _weakest(*facts)))
    options.append(("instance-store NVMe, refilled from Hugging Face", weights / HF_BPS.value + hbm, "estimated"))
    return options
