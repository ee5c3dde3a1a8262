"""Static facts about the instance types DiStack can place workers on.

Synth never calls DescribeInstanceTypes; `dictl preflight` cross-checks this table against the live API.
Sources are listed in docs/facts.md and in research notes kept with the project's design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

GIB = 1024**3
NEURON = "neuron"
GPU = "gpu"
ACCELERATORS = (NEURON, GPU)


@dataclass(frozen=True)
class InstanceType:
    """What the config checks and the launch template need to know about one instance type."""

    name: str
    # The family the Neuron docs and the DLC README name ("trn1" covers trn1n), or the EC2 family of a GPU type
    # ("p5", "p5en", "g6"): what engines and images list.
    family: str
    network_cards: int
    efa: bool
    vcpus: int
    memory_gib: int
    # Local NVMe instance store, decimal GB (4 x 1900 GB on the 32/48xlarge sizes; trn2 figure UNVERIFIED,
    # the node preflight measures what is really there).
    instance_store_gb: int
    # What the endpoints' device ranges index and which worker AMI, images and node checks apply: "neuron" (ranges
    # of logical NeuronCores: NEURON_VISIBLE_DEVICES for engine nixl's vLLM Neuron plugin, NEURON_RT_VISIBLE_CORES
    # for the legacy neuron-connector; userdata/engines/*.sh) or "gpu" (GPU indices, given to docker's --gpus, so
    # the container counts its GPUs from 0; userdata/accelerators/gpu.sh).
    accelerator: str = NEURON
    neuron_devices: int = 0
    physical_neuron_cores: int = 0
    # Logical NeuronCore Config (LNC) groups physical cores; Trn2 defaults to 2, Trn1 has no LNC (1).
    # https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-features/logical-neuroncore-config.html
    default_lnc: int = 1
    supported_lnc: tuple[int, ...] = (1,)
    hbm_gib: int = 0
    # GPU types: how many GPUs and the memory of one (as AWS lists it, GB of HBM/GDDR per GPU).
    gpus: int = 0
    gpu_memory_gib: int = 0
    # GPUDirect RDMA over EFA (the GPU's memory registered with the EFA device): what NIXL's LIBFABRIC backend
    # requires ("GDR (GPU Direct RDMA) support is currently required", ai-dynamo/nixl src/plugins/libfabric/README.md).
    # P5 and P5en have it (EC2 UG efa.html, "Supported instance types", GPUDirect RDMA column); G6 does not.
    gpudirect_rdma: bool = False
    # An endpoint's core range must start on a multiple of its TP degree: "On `trn2`, each engine's core slice must
    # start on a boundary that is a multiple of its own TP degree"; a misaligned one "loads and compiles fine and only
    # fails later, during prefill warmup", with "Collective operation REDUCE_SCATTER ... is currently not supported"
    # (aws-neuron/aws-neuron-sdk vllm-neuron/docs/tutorials/tutorial-epd-1e-1pd-xeypd.md@v2.32.0 L248-254, L757-772:
    # the TP group's reduce_scatter cannot be mapped onto trn2's 2D-torus collectives). Trn1 ranges are aligned in
    # every Neuron example but no source states the rule for it.
    aligned_core_ranges: bool = False
    # The target_bandwidth the node gives the AWS CLI's CRT S3 client for its downloads (weights, compiled artifacts):
    # the CRT knows these types itself (awslabs/aws-c-s3 source/s3_platform_info.c: trn2.48xlarge 400 Gbps,
    # trn1.32xlarge 600, trn1n.32xlarge 800) but falls back to 10 Gb/s where its bundled version does not, so it is
    # said explicitly. Empty leaves the CLI's default. Rendered as DI_S3_TARGET_BANDWIDTH (userdata/lib/s3.sh).
    s3_target_bandwidth: str = ""
    # EFA bandwidth of the instance, Gb/s (0: no EFA): bounds how long moving KV over EFA may take
    # (stacks/observability/kv_alarms.py). trn1/trn1n: the Neuron docs' Trn1 architecture table, "EFA bandwidth
    # (Gbps)" 800 / 1,600 (https://awsdocs-neuron.readthedocs-hosted.com/en/latest/general/arch/neuron-hardware/
    # trn1-arch.html). trn2.48xlarge, p5 and p5en: 3,200 as EC2's accelerated computing specifications list them
    # (https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html, "Network specifications"); UNVERIFIED where
    # this was written (the table could not be read). Too high a figure makes the handoff alarm stricter, so it
    # fires rather than stays silent.
    efa_gbps: int = 0

    def logical_cores(self, lnc: int | None = None) -> int:
        """Logical NeuronCores the runtime sees: what an endpoint's core range indexes (as NEURON_VISIBLE_DEVICES
        with engine nixl, NEURON_RT_VISIBLE_CORES with neuron-connector)."""
        return self.physical_neuron_cores // (lnc or self.default_lnc)

    def hbm_gib_per_core(self, lnc: int | None = None) -> float:
        """Device memory behind one logical NeuronCore."""
        return self.hbm_gib / self.logical_cores(lnc)

    @property
    def neuron(self) -> bool:
        """The type's devices are NeuronCores (LNC applies)."""
        return self.accelerator == NEURON

    def devices(self, lnc: int | None = None) -> int:
        """What an endpoint's range indexes, counted: logical NeuronCores (under `lnc`) or GPUs."""
        return self.logical_cores(lnc) if self.neuron else self.gpus

    def memory_gib_per_device(self, lnc: int | None = None) -> float:
        """Device memory behind one of `devices()`: HBM per logical NeuronCore, or one GPU's memory."""
        return self.hbm_gib_per_core(lnc) if self.neuron else float(self.gpu_memory_gib)

    @property
    def device_noun(self) -> str:
        """How messages name the devices: NeuronCores or GPUs."""
        return "NeuronCores" if self.neuron else "GPUs"

    @property
    def range_key(self) -> str:
        """The endpoint key that holds a device range on this type: cores or gpus."""
        return "cores" if self.neuron else "gpus"

    @property
    def nixl_backend(self) -> str:
        """NIXL's backend for KV over EFA: LIBFABRIC where the device memory is registered with EFA (Trainium:
        aws-neuron-sdk vllm-neuron/docs/tutorials/tutorial-di-1p1d-xpyd.md; GPUs with GPUDirect RDMA: ai-dynamo/nixl
        src/plugins/libfabric/README.md, "GDR ... required"), else UCX, vLLM's default NIXL backend
        (vllm docs/features/nixl_connector_usage.md: "UCX ... is the default")."""
        return "LIBFABRIC" if self.neuron or self.gpudirect_rdma else "UCX"

    @property
    def efa_interfaces(self) -> int:
        """One EFA per network card: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html"""
        return self.network_cards if self.efa else 0

    @property
    def lnc_applies(self) -> bool:
        """The Logical NeuronCore config exists here, so the node states the LNC to the runtime and the compiler:
        "LNC applies only to Trn2 and Trn3 instances" (the Neuron docs' logical-neuroncore-config page, linked above).
        Rendered as DI_LNC_APPLIES (userdata/accelerators/neuron.sh lnc_applies)."""
        return self.family in ("trn2", "trn3")


WORKER_TYPES: Mapping[str, InstanceType] = {
    t.name: t
    for t in (
        InstanceType(
            name="trn2.48xlarge",
            efa_gbps=3200,
            family="trn2",
            s3_target_bandwidth="400Gb/s",
            network_cards=16,
            efa=True,
            neuron_devices=16,
            physical_neuron_cores=128,
            default_lnc=2,
            supported_lnc=(1, 2),
            hbm_gib=1536,
            vcpus=192,
            memory_gib=2048,
            instance_store_gb=7600,
            aligned_core_ranges=True,
        ),
        InstanceType(
            name="trn1.32xlarge",
            efa_gbps=800,
            family="trn1",
            s3_target_bandwidth="600Gb/s",
            network_cards=8,
            efa=True,
            neuron_devices=16,
            physical_neuron_cores=32,
            default_lnc=1,
            supported_lnc=(1,),
            hbm_gib=512,
            vcpus=128,
            memory_gib=512,
            instance_store_gb=7600,
        ),
        InstanceType(
            name="trn1n.32xlarge",
            efa_gbps=1600,
            family="trn1",
            s3_target_bandwidth="800Gb/s",
            network_cards=16,
            efa=True,
            neuron_devices=16,
            physical_neuron_cores=32,
            default_lnc=1,
            supported_lnc=(1,),
            hbm_gib=512,
            vcpus=128,
            memory_gib=512,
            instance_store_gb=7600,
        ),
        # GPU types (engines nixl and lmcache). Cards and EFA interfaces: aws/amazon-vpc-cni-k8s
        # pkg/vpc/vpc_ip_resource_limit.go (NetworkCards per type) and aws-samples/aws-hpc-recipes
        # recipes/pcs/enable_efa/README.md ("p5/p5e use 32 interfaces, p5en 16"), summarized with sources in
        # /work/shared/research/aws-facts.md section 1a; one EFA per card (EC2 UG using-eni: "You can assign up to one
        # EFA per network card"). GPUs, GPU memory, vCPUs, memory and instance store: the EC2 accelerated-computing
        # specifications page, https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html
        # p5.48xlarge: 8 x H100 80 GB HBM3, 192 vCPU, 2,048 GiB, 8 x 3.84 TB NVMe, 32 network cards, EFA with
        # GPUDirect RDMA (3,200 Gbps).
        InstanceType(
            name="p5.48xlarge",
            efa_gbps=3200,
            family="p5",
            network_cards=32,
            efa=True,
            vcpus=192,
            memory_gib=2048,
            instance_store_gb=30720,
            accelerator=GPU,
            gpus=8,
            gpu_memory_gib=80,
            gpudirect_rdma=True,
        ),
        # p5en.48xlarge: 8 x H200 141 GB HBM3e, 192 vCPU, 2,048 GiB, 8 x 3.84 TB NVMe, 16 network cards (EFAv3).
        InstanceType(
            name="p5en.48xlarge",
            efa_gbps=3200,
            family="p5en",
            network_cards=16,
            efa=True,
            vcpus=192,
            memory_gib=2048,
            instance_store_gb=30720,
            accelerator=GPU,
            gpus=8,
            gpu_memory_gib=141,
            gpudirect_rdma=True,
        ),
        # The cheap single-node DI type: g6.12xlarge, 4 x NVIDIA L4 24 GB, 48 vCPU, 192 GiB, 4 x 940 GB NVMe, one
        # network card, 40 Gbps; the cheapest 4-GPU size on the EFA list (G6: 8xlarge and up; EC2 UG efa.html
        # "Supported instance types"; UNVERIFIED here against DescribeInstanceTypes, `dictl preflight` checks
        # EfaSupported). No GPUDirect RDMA: NIXL runs its UCX backend (cuda_ipc between local GPUs, as seed 004).
        InstanceType(
            name="g6.12xlarge",
            family="g6",
            network_cards=1,
            efa=True,
            vcpus=48,
            memory_gib=192,
            instance_store_gb=3760,
            accelerator=GPU,
            gpus=4,
            gpu_memory_gib=24,
        ),
        # Known so that choosing it gets a precise "no EFA" message instead of "unknown type".
        InstanceType(
            name="trn1.2xlarge",
            family="trn1",
            network_cards=1,
            efa=False,
            neuron_devices=1,
            physical_neuron_cores=2,
            default_lnc=1,
            supported_lnc=(1,),
            hbm_gib=32,
            vcpus=8,
            memory_gib=32,
            instance_store_gb=474,
        ),
    )
}

# Parameter counts (billions) of models whose size the weights-fit-HBM check knows without being told.
KNOWN_MODEL_PARAMETERS_B: Mapping[str, float] = {
    "meta-llama/Llama-3.3-70B-Instruct": 70.55,
    "meta-llama/Llama-3.1-70B-Instruct": 70.55,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": 8.03,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1.10,
    # Model card, https://huggingface.co/openai/gpt-oss-20b: "gpt-oss-120b ... (117B parameters with 5.1B active
    # parameters)", "gpt-oss-20b ... (21B parameters with 3.6B active parameters)"; every expert is in HBM.
    "openai/gpt-oss-20b": 21.0,
    "openai/gpt-oss-120b": 117.0,
}

DTYPE_BYTES: Mapping[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}
