"""The Neuron vLLM container images DiStack knows: what each carries and which engine may run it.

Source of every row but one: the tag table of aws-neuron/deep-learning-containers `README.md`
(section `### vllm-inference-neuronx`, tag 2.32.0, commit 2be9ed1d), whose columns give the vLLM version, Neuron
SDK, instance types and Python; the Ubuntu release is only in the tag. What an image carries beyond that comes
from its Dockerfile (`vllm/inference/<version>/Dockerfile.neuronx` in the same repository). The seed's
`0.9.1-…-sdk2.25.1` tag is not in that table; it appears only in the legacy DI tutorial
(aws-neuron-sdk `libraries/nxd-inference/tutorials/disaggregated-inference-tutorial.rst`).

Never imports aws_cdk or the config model: the config model imports this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from stacks import catalog

REPOSITORY = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx"
DLC_README = "aws-neuron/deep-learning-containers README.md @ tag 2.32.0 (### vllm-inference-neuronx)"
LEGACY_TUTORIAL = ("aws-neuron/aws-neuron-sdk libraries/nxd-inference/tutorials/disaggregated-inference-tutorial.rst "
                   "(legacy DI tutorial, DiStack seed 000)")

# Status of an image for DiStack.
SUPPORTED = "supported"      # current Neuron release line; an engine runs it by default
SUPERSEDED = "superseded"    # known, newer tag preferred; refused where it lacks what an engine needs
LEGACY = "legacy"            # past Neuron's support (vLLM V0 fork, Ubuntu 22.04); kept to reproduce seed 000
REFUSED = "refused"          # known and refused by every engine
NOT_DI = "no DI engine"      # an NxDI-based vLLM without NeuronConnector or NIXL: no DiStack engine can use it

_NO_NEURON_CONNECTOR = ("its vLLM has no NeuronConnector: only the 0.9.1 images' vLLM V0 fork has it "
                        "(later tags replaced it with the vllm-neuron plugin)")
_NO_PLUGIN = "it is the NxDI-based vLLM, without the vllm-neuron plugin or NIXL (0.24 and later carry both)"
_NO_STUB = ("it carries vllm-neuron and NIXL but no libcuda.so.1 stub, so NIXL's LIBFABRIC backend cannot load "
            "(\"createBackend: unsupported backend 'LIBFABRIC'\"); the 0.24 Dockerfile builds the stub in")
_V0_FORK = "it is the vLLM V0 fork with NeuronConnector, without the vllm-neuron plugin or NIXL"
_STATIC_1P1D = ("its NeuronConnector is static 1P1D without etcd, and its neuron-proxy-server has no --etcd, "
                "so workers cannot register or scale")


@dataclass(frozen=True)
class Image:
    """One image tag and what DiStack knows about it."""

    tag: str
    vllm: str
    sdk: str
    python: str
    ubuntu: str
    # Instance families from the README's "Supported EC2 Instance Types" column (trn1 includes trn1n).
    families: tuple[str, ...]
    # Engines whose server this image carries (stacks/engines/<name>.py).
    engines: tuple[str, ...]
    status: str
    source: str = DLC_README
    # Why an engine not in `engines` cannot use it, per engine name.
    refusals: Mapping[str, str] = field(default_factory=dict)
    repository: str = REPOSITORY
    # The devices its server drives (catalog.NEURON or catalog.GPU): picks the default image and the worker AMI.
    accelerator: str = catalog.NEURON
    # "@sha256:..." when a primary source gives the digest; empty: the tag alone (UNVERIFIED: a wrong tag fails
    # the pull at boot, loudly).
    digest: str = ""

    @property
    def uri(self) -> str:
        """The full reference a worker pulls."""
        return f"{self.repository}:{self.tag}{self.digest}"

    def refusal(self, engine: str) -> str:
        """Why `engine` cannot run this image (empty when it can)."""
        if engine in self.engines:
            return ""
        return self.refusals.get(engine, f"it carries no {engine} server")


def _nxdi(tag: str, vllm: str, sdk: str) -> Image:
    return Image(tag, vllm, sdk, "3.12", "24.04", ("trn1", "trn2", "trn3", "inf2"), (), NOT_DI,
                 refusals={"nixl": _NO_PLUGIN, "neuron-connector": _NO_NEURON_CONNECTOR})


_IMAGES = (
    Image("0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04", "0.24.0", "2.32.0", "3.13", "24.04",
          ("trn2", "trn3"), ("nixl",), SUPPORTED,
          source=f"{DLC_README}; vllm/inference/0.24.0.1.1.0/Dockerfile.neuronx L108-118 (libcuda.so.1 stub)",
          refusals={"neuron-connector": _NO_NEURON_CONNECTOR}),
    Image("0.21.0.1.0.0-neuronx-py313-sdk2.31.1-ubuntu24.04", "0.21.0", "2.31.1", "3.13", "24.04",
          ("trn2", "trn3"), (), SUPERSEDED, refusals={"nixl": _NO_STUB, "neuron-connector": _NO_NEURON_CONNECTOR}),
    Image("0.21.0.1.0.0-neuronx-py313-sdk2.31.0-ubuntu24.04", "0.21.0", "2.31.0", "3.13", "24.04",
          ("trn2", "trn3"), (), SUPERSEDED, refusals={"nixl": _NO_STUB, "neuron-connector": _NO_NEURON_CONNECTOR}),
    _nxdi("0.16.0-neuronx-py312-sdk2.31.1-ubuntu24.04", "0.16.0", "2.31.1"),
    _nxdi("0.16.0-neuronx-py312-sdk2.31.0-ubuntu24.04", "0.16.0", "2.31.0"),
    _nxdi("0.16.0-neuronx-py312-sdk2.30.0-ubuntu24.04", "0.16.0", "2.30.0"),
    _nxdi("0.16.0-neuronx-py312-sdk2.29.1-ubuntu24.04", "0.16.0", "2.29.1"),
    _nxdi("0.16.0-neuronx-py312-sdk2.29.0-ubuntu24.04", "0.16.0", "2.29.0"),
    _nxdi("0.13.0-neuronx-py312-sdk2.28.0-ubuntu24.04", "0.13.0", "2.28.0"),
    _nxdi("0.13.0-neuronx-py312-sdk2.27.1-ubuntu24.04", "0.13.0", "2.27.1"),
    _nxdi("0.11.0-neuronx-py312-sdk2.27.1-ubuntu24.04", "0.11.0", "2.27.1"),
    Image("0.9.1-neuronx-py311-sdk2.26.1-ubuntu22.04", "0.9.1", "2.26.1", "3.11", "22.04",
          ("trn1", "trn2", "inf2"), ("neuron-connector",), LEGACY, refusals={"nixl": _V0_FORK}),
    Image("0.9.1-neuronx-py310-sdk2.25.0-ubuntu22.04", "0.9.1", "2.25.0", "3.10", "22.04",
          ("trn1", "trn2", "inf2"), ("neuron-connector",), LEGACY, refusals={"nixl": _V0_FORK}),
    # The seed's tag: in the legacy DI tutorial only (pulls fine as far as the tutorial shows; not in the README).
    Image("0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04", "0.9.1", "2.25.1", "3.10", "22.04",
          ("trn1", "trn2"), ("neuron-connector",), LEGACY, source=LEGACY_TUTORIAL, refusals={"nixl": _V0_FORK}),
    Image("0.7.2-neuronx-py310-sdk2.24.1-ubuntu22.04", "0.7.2", "2.24.1", "3.10", "22.04",
          ("trn1", "trn2", "inf2"), (), REFUSED, refusals={"nixl": _V0_FORK, "neuron-connector": _STATIC_1P1D}),
)

# GPU images. No registry is reachable where DiStack was built, so no digest was read from one. vLLM's v0.11.0 is
# pinned to the digest independent public projects pin it by (Dockerfiles and scripts with `vllm/vllm-openai:v0.11.0
# @sha256:014a95f2...`; UNVERIFIED against the registry); LMCache's tag has no digest in any source found and is
# pinned by tag. Either way a wrong reference fails `docker pull` at boot and the node reports it.
# families: the GPU types of stacks/catalog.py.
_GPU_FAMILIES = ("p5", "p5en", "g6")
VLLM_REPOSITORY = "docker.io/vllm/vllm-openai"
LMCACHE_REPOSITORY = "docker.io/lmcache/vllm-openai"
_GPU_IMAGES = (
    # Upstream vLLM's OpenAI server image. Its Dockerfile installs requirements/kv_connectors.txt (lmcache and
    # nixl) into the vllm-openai target (vllm-project/vllm docker/Dockerfile, "install kv_connectors if
    # requested"; docs/features/nixl_connector_usage.md: "The specified required NIXL version can be found in
    # requirements/kv_connectors.txt"), so NixlConnector runs without an extra install. Ubuntu: the container's.
    Image("v0.11.0", "0.11.0", "", "3.12", "22.04", _GPU_FAMILIES, ("nixl",), SUPPORTED,
          source="vllm-project/vllm docker/Dockerfile (kv_connectors), docs/features/nixl_connector_usage.md",
          digest="@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c",
          refusals={"neuron-connector": "it is upstream vLLM for CUDA GPUs, not the Neuron fork",
                    "lmcache": "engine lmcache runs LMCache's own image (lmcache/vllm-openai), whose LMCache and vLLM "
                               "versions are paired"},
          repository=VLLM_REPOSITORY, accelerator=catalog.GPU),
    # LMCache's image: vLLM with LMCache and NIXL (LMCache/LMCache docs/source/getting_started/installation.rst,
    # "docker pull lmcache/vllm-openai"; pinned releases are tagged vX.Y.Z, e.g. a Dockerfile `FROM
    # lmcache/vllm-openai:v0.3.9`). Seed 004's XpYd over NIXL.
    Image("v0.3.9", "", "", "3.12", "22.04", _GPU_FAMILIES, ("lmcache",), SUPPORTED,
          source="LMCache/LMCache docs/source/getting_started/installation.rst (docker pull lmcache/vllm-openai)",
          refusals={"neuron-connector": "it is vLLM for CUDA GPUs, not the Neuron fork",
                    "nixl": "it is LMCache's build; engine nixl runs upstream vLLM's image (vllm/vllm-openai)"},
          repository=LMCACHE_REPOSITORY, accelerator=catalog.GPU),
)

IMAGES: Mapping[str, Image] = {image.uri: image for image in _IMAGES + _GPU_IMAGES}

# The AWS Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04): NVIDIA driver, EFA, Docker and the NVIDIA
# container toolkit. Its public SSM parameter, from the AMI's release notes ("Query AMI-ID with SSM Parameter"):
# https://docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-x86-base-gpu-ami-ubuntu-24-04.html
GPU_DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"

# Neuron base DLAMI per Ubuntu release: aws-neuron-sdk deploy/environments/dlami.rst ("Deep Learning Base Neuron
# AMI (Ubuntu 24.04)": /aws/service/neuron/dlami/base/ubuntu-24.04, append /latest/image_id). The 22.04 one is
# frozen: "Neuron no longer supports the Ubuntu 22.04 variant of the base Neuron AMI. Users who still need access
# to previously released versions can retrieve the last published AMI ID via SSM" (release-notes/components/
# dlamis.rst L72-78, 2.30.0), so it resolves to the last 22.04 build (2.29.x line), not to the 0.9.1 images' SDK.
DOCUMENTED_DLAMI_UBUNTU = ("22.04", "24.04")
_UBUNTU_SUFFIX = re.compile(r"-ubuntu(\d{2}\.\d{2})(@sha256:[0-9a-f]{64})?$")


def find(uri: str) -> Image | None:
    """The catalog entry of a full image reference, or None for an unlisted one."""
    return IMAGES.get(uri)


def ubuntu_of(uri: str) -> str | None:
    """The image's Ubuntu release: from the catalog, else from the tag's `-ubuntuXX.YY` suffix, else None."""
    image = find(uri)
    if image is not None:
        return image.ubuntu
    match = _UBUNTU_SUFFIX.search(uri)
    return match.group(1) if match else None


def dlami_parameter(ubuntu: str) -> str:
    """The Neuron base DLAMI's public SSM parameter for an Ubuntu release (documented for 22.04 and 24.04;
    any other release follows the same documented naming and is checked by `dictl preflight`)."""
    return f"/aws/service/neuron/dlami/base/ubuntu-{ubuntu}/latest/image_id"


def for_engine(engine: str, accelerator: str = catalog.NEURON) -> list[Image]:
    """The images an engine accepts on an accelerator, newest first."""
    return [image for image in _IMAGES + _GPU_IMAGES if engine in image.engines and image.accelerator == accelerator]


def worker_ami_parameter(uri: str, accelerator: str) -> str | None:
    """The default worker AMI's SSM parameter: the Deep Learning Base GPU AMI on GPU fleets; on Neuron ones the
    Neuron base DLAMI of the image's Ubuntu (None when that Ubuntu is unknown)."""
    if accelerator == catalog.GPU:
        return GPU_DLAMI_PARAMETER
    ubuntu = ubuntu_of(uri)
    return dlami_parameter(ubuntu) if ubuntu is not None else None
