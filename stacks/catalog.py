"""Static facts about the instance types DiStack can place workers on.

Synth never calls DescribeInstanceTypes; `dictl preflight` cross-checks this table against the live API.
Sources are listed in the README ("Instance facts") and in research notes kept with the project's design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

GIB = 1024**3


@dataclass(frozen=True)
class InstanceType:
    """What the config checks and the launch template need to know about one instance type."""

    name: str
    # The family the Neuron docs and the DLC README name ("trn1" covers trn1n): what engines and images list.
    family: str
    network_cards: int
    efa: bool
    neuron_devices: int
    physical_neuron_cores: int
    # Logical NeuronCore Config (LNC) groups physical cores; Trn2 defaults to 2, Trn1 has no LNC (1).
    # https://awsdocs-neuron.readthedocs-hosted.com/en/latest/about-neuron/arch/neuron-features/logical-neuroncore-config.html
    default_lnc: int
    supported_lnc: tuple[int, ...]
    hbm_gib: int
    vcpus: int
    memory_gib: int
    # Local NVMe instance store, decimal GB (4 x 1900 GB on the 32/48xlarge sizes; trn2 figure UNVERIFIED,
    # the node preflight measures what is really there).
    instance_store_gb: int

    def logical_cores(self, lnc: int | None = None) -> int:
        """NeuronCores visible to the runtime (NEURON_RT_VISIBLE_CORES indexes these)."""
        return self.physical_neuron_cores // (lnc or self.default_lnc)

    def hbm_gib_per_core(self, lnc: int | None = None) -> float:
        """Device memory behind one logical NeuronCore."""
        return self.hbm_gib / self.logical_cores(lnc)

    @property
    def efa_interfaces(self) -> int:
        """One EFA per network card: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html"""
        return self.network_cards if self.efa else 0


WORKER_TYPES: Mapping[str, InstanceType] = {
    t.name: t
    for t in (
        InstanceType(
            name="trn2.48xlarge",
            family="trn2",
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
        ),
        InstanceType(
            name="trn1.32xlarge",
            family="trn1",
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
            family="trn1",
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
