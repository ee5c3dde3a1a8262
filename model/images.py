"""The Neuron vLLM container images DiStack knows: what each carries and which engine may run it.

Source of every row but two: the tag table of aws-neuron/deep-learning-containers `README.md`
(section `### vllm-inference-neuronx`, tag 2.32.0, commit 2be9ed1d), whose columns give the vLLM version, Neuron
SDK, instance types and Python; the Ubuntu release is only in the tag. What an image carries beyond that comes
from its Dockerfile (`vllm/inference/<version>/Dockerfile.neuronx` in the same repository). The seed's
`0.9.1-…-sdk2.25.1` tag is not in that table; it appears only in the legacy DI tutorial
(aws-neuron-sdk `libraries/nxd-inference/tutorials/disaggregated-inference-tutorial.rst`). The 2.33.0 tag comes from
the Neuron 2.33.0 setup pages (DLC_233 below).

Each image names the host its workers boot (`host_ubuntu`), chosen per image and never derived from the container's
Ubuntu: "The host OS does not need to match the container OS" (DLC_233).

Never imports aws_cdk or the config model: the config model imports this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from model import catalog

REPOSITORY = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx"
DLC_README = "aws-neuron/deep-learning-containers README.md @ tag 2.32.0 (### vllm-inference-neuronx)"
LEGACY_TUTORIAL = ("aws-neuron/aws-neuron-sdk libraries/nxd-inference/tutorials/disaggregated-inference-tutorial.rst "
                   "(legacy DI tutorial, DiStack seed 000)")
# Neuron 2.33.0 names its vLLM DLC tag on its setup pages, not in the DLC repository's README (whose newest tag here is
# 2.32.0 at 2be9ed1d): awsdocs-neuron v2.33.0 setup/pytorch/dlc.rst ("docker pull public.ecr.aws/neuron/
# pytorch-inference-vllm-neuronx:0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04") and setup/pytorch/update-dlc.rst
# (date-modified 2026-10-16): "Starting with Neuron 2.33.0, Neuron DLC images are published on Ubuntu 26.04 only ...
# Python 3.14 ... The host OS does not need to match the container OS."
DLC_233 = ("awsdocs-neuron v2.33.0 setup/pytorch/dlc.rst and setup/pytorch/update-dlc.rst "
           "(https://awsdocs-neuron.readthedocs-hosted.com/en/v2.33.0/setup/pytorch/update-dlc.html)")

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


def dlami_parameter(ubuntu: str) -> str:
    """The Neuron base DLAMI's public SSM parameter for an Ubuntu release (documented for 22.04 and 24.04 only)."""
    return f"/aws/service/neuron/dlami/base/ubuntu-{ubuntu}/latest/image_id"


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
    # Engines whose server this image carries (model/engines/<name>.py).
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
    # The Ubuntu release of the Neuron base DLAMI its workers boot (Neuron images; GPU images boot GPU_DLAMI_PARAMETER).
    # Named per image, not read from the tag: a 2.33+ image is Ubuntu 26.04 inside and runs on the 24.04 DLAMI.
    host_ubuntu: str = field(kw_only=True)

    def __post_init__(self) -> None:
        # A catalog row whose host has no documented DLAMI would launch workers from a parameter EC2 cannot resolve:
        # refuse it when the module loads, not at the first launch.
        if self.accelerator == catalog.NEURON and self.host_ubuntu not in DOCUMENTED_DLAMI_UBUNTU:
            raise ValueError(f"image {self.tag}: no Neuron base DLAMI is documented for Ubuntu {self.host_ubuntu} "
                             f"(documented: {', '.join(DOCUMENTED_DLAMI_UBUNTU)})")

    @property
    def host_dlami(self) -> str:
        """The public SSM parameter of the AMI its workers boot."""
        return GPU_DLAMI_PARAMETER if self.accelerator == catalog.GPU else dlami_parameter(self.host_ubuntu)

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
                 refusals={"nixl": _NO_PLUGIN, "neuron-connector": _NO_NEURON_CONNECTOR}, host_ubuntu="24.04")


_IMAGES = (
    # Neuron 2.33.0 (2026-10-19): vLLM Neuron 0.29.0.1.2.0 (release-notes/components/index at v2.33.0), Trn2/Trn3 only
    # (dlc.rst "Instance Type: Trn2 or Trn3"). Its Dockerfile is not in the DLC repository snapshot read here, so
    # whether it keeps the 0.24 image's libcuda.so.1 stub is UNVERIFIED; the 2.34.0 DLC page says only that "Starting
    # with Neuron 2.34.0" the vLLM DLCs "no longer include libraries for other accelerators", i.e. 2.33 still does.
    # A missing stub or libfabric fails the node's NIXL backend probe before any endpoint starts (engine_preflight).
    # Host: the Ubuntu 24.04 base DLAMI (no 26.04 DLAMI parameter is documented; the host need not match).
    Image("0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04", "0.29.0", "2.33.0", "3.14", "26.04",
          ("trn2", "trn3"), ("nixl",), SUPPORTED, source=DLC_233,
          refusals={"neuron-connector": _NO_NEURON_CONNECTOR}, host_ubuntu="24.04"),
    Image("0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04", "0.24.0", "2.32.0", "3.13", "24.04",
          ("trn2", "trn3"), ("nixl",), SUPERSEDED,
          source=f"{DLC_README}; vllm/inference/0.24.0.1.1.0/Dockerfile.neuronx L108-118 (libcuda.so.1 stub)",
          refusals={"neuron-connector": _NO_NEURON_CONNECTOR}, host_ubuntu="24.04"),
    Image("0.21.0.1.0.0-neuronx-py313-sdk2.31.1-ubuntu24.04", "0.21.0", "2.31.1", "3.13", "24.04",
          ("trn2", "trn3"), (), SUPERSEDED, refusals={"nixl": _NO_STUB, "neuron-connector": _NO_NEURON_CONNECTOR},
          host_ubuntu="24.04"),
    Image("0.21.0.1.0.0-neuronx-py313-sdk2.31.0-ubuntu24.04", "0.21.0", "2.31.0", "3.13", "24.04",
          ("trn2", "trn3"), (), SUPERSEDED, refusals={"nixl": _NO_STUB, "neuron-connector": _NO_NEURON_CONNECTOR},
          host_ubuntu="24.04"),
    _nxdi("0.16.0-neuronx-py312-sdk2.31.1-ubuntu24.04", "0.16.0", "2.31.1"),
    _nxdi("0.16.0-neuronx-py312-sdk2.31.0-ubuntu24.04", "0.16.0", "2.31.0"),
    _nxdi("0.16.0-neuronx-py312-sdk2.30.0-ubuntu24.04", "0.16.0", "2.30.0"),
    _nxdi("0.16.0-neuronx-py312-sdk2.29.1-ubuntu24.04", "0.16.0", "2.29.1"),
    _nxdi("0.16.0-neuronx-py312-sdk2.29.0-ubuntu24.04", "0.16.0", "2.29.0"),
    _nxdi("0.13.0-neuronx-py312-sdk2.28.0-ubuntu24.04", "0.13.0", "2.28.0"),
    _nxdi("0.13.0-neuronx-py312-sdk2.27.1-ubuntu24.04", "0.13.0", "2.27.1"),
    _nxdi("0.11.0-neuronx-py312-sdk2.27.1-ubuntu24.04", "0.11.0", "2.27.1"),
    Image("0.9.1-neuronx-py311-sdk2.26.1-ubuntu22.04", "0.9.1", "2.26.1", "3.11", "22.04",
          ("trn1", "trn2", "inf2"), ("neuron-connector",), LEGACY, refusals={"nixl": _V0_FORK}, host_ubuntu="22.04"),
    Image("0.9.1-neuronx-py310-sdk2.25.0-ubuntu22.04", "0.9.1", "2.25.0", "3.10", "22.04",
          ("trn1", "trn2", "inf2"), ("neuron-connector",), LEGACY, refusals={"nixl": _V0_FORK}, host_ubuntu="22.04"),
    # The seed's tag: in the legacy DI tutorial only (pulls fine as far as the tutorial shows; not in the README).
    Image("0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04", "0.9.1", "2.25.1", "3.10", "22.04",
          ("trn1", "trn2"), ("neuron-connector",), LEGACY, source=LEGACY_TUTORIAL, refusals={"nixl": _V0_FORK},
          host_ubuntu="22.04"),
    Image("0.7.2-neuronx-py310-sdk2.24.1-ubuntu22.04", "0.7.2", "2.24.1", "3.10", "22.04",
          ("trn1", "trn2", "inf2"), (), REFUSED, refusals={"nixl": _V0_FORK, "neuron-connector": _STATIC_1P1D},
          host_ubuntu="22.04"),
)

# GPU images. No registry is reachable where DiStack was built and no source gives their digests, so both are pinned
# by tag only (UNVERIFIED against the registry): a wrong tag fails `docker pull` at boot and the node reports it.
# families: the GPU types of model/catalog.py. Host: the Deep Learning Base GPU AMI (Ubuntu 24.04).
_GPU_FAMILIES = ("p5", "p5en", "g6")
VLLM_DLC_REPOSITORY = "public.ecr.aws/deep-learning-containers/vllm"
VLLM_REPOSITORY = "docker.io/vllm/vllm-openai"
LMCACHE_REPOSITORY = "docker.io/lmcache/vllm-openai"
# AWS's vLLM DLC for EC2 (Ubuntu), aws/deep-learning-containers@e0ecedea6a: README.md L35 ("vLLM v0.27.1 (Ubuntu) -
# EC2: `0.27.1-gpu-py312-ec2`"); .github/config/image/vllm/ec2-ubuntu.yml (base_image vllm/vllm-openai:v0.27.1,
# python 3.12, cuda 13.0.2, efa 1.47.0, os ubuntu22.04); docker/vllm/Dockerfile L3 (`ARG
# BASE_IMAGE=vllm/vllm-openai:v0.27.1`), L11 (`EFA_VERSION="1.47.0"`), L73-74 (install_efa.sh). Its release
# pipeline runs the NIXL LIBFABRIC checks on EFA before release (.github/workflows/vllm.pipeline.yml L197-209,
# `run-nixl-tests: true`; test/efa/scripts/nixl_libfabric_smoke.py "Catches regressions where the nixl-cu* wheel
# ships without the LIBFABRIC plugin"; test/efa/scripts/nixl_disagg_pd.sh, prefill/decode with
# `"backends":["LIBFABRIC"]`). The AL2023 sibling shows the install itself: docker/vllm/Dockerfile.amzn2023 L245-263
# (`ARG INSTALL_KV_CONNECTORS=true`, requirements/kv_connectors.txt, then nixl-cu13 on CUDA 13).
_DLC_VLLM = ("aws/deep-learning-containers@e0ecedea6a README.md L35; docker/vllm/Dockerfile L3, L11, L73-74; "
             ".github/workflows/vllm.pipeline.yml L197-209 (NIXL LIBFABRIC tests)")
_GPU_IMAGES = (
    Image("0.27.1-gpu-py312-ec2", "0.27.1", "", "3.12", "22.04", _GPU_FAMILIES, ("nixl",), SUPPORTED,
          source=_DLC_VLLM,
          refusals={"neuron-connector": "it is vLLM for CUDA GPUs, not the Neuron fork",
                    "lmcache": "engine lmcache runs LMCache's own image (lmcache/vllm-openai), whose LMCache and vLLM "
                               "versions are paired"},
          repository=VLLM_DLC_REPOSITORY, accelerator=catalog.GPU, host_ubuntu="24.04"),
    # Upstream v0.11.0, the earlier GPU default, kept so a config naming it is refused with the reason.
    Image("v0.11.0", "0.11.0", "", "3.12", "22.04", _GPU_FAMILIES, (), REFUSED,
          source="vllm-project/vllm docker/Dockerfile (ARG INSTALL_KV_CONNECTORS=false)",
          digest="@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c",
          refusals={"nixl": "no source shows NIXL's LIBFABRIC plugin in it: vLLM's Dockerfile defaults "
                            "INSTALL_KV_CONNECTORS=false, and NIXL's wheels gained LIBFABRIC only at 0.7.0 "
                            "(contrib/Dockerfile.manylinux@0.7.0, 2025-10-24), after v0.11.0 (2025-10-02)",
                    "neuron-connector": "it is upstream vLLM for CUDA GPUs, not the Neuron fork",
                    "lmcache": "engine lmcache runs LMCache's own image (lmcache/vllm-openai), whose LMCache and vLLM "
                               "versions are paired"},
          repository=VLLM_REPOSITORY, accelerator=catalog.GPU, host_ubuntu="24.04"),
    # LMCache's image: vLLM with LMCache and NIXL (LMCache/LMCache docs/source/getting_started/installation.rst,
    # "docker pull lmcache/vllm-openai"; pinned releases are tagged vX.Y.Z, e.g. a Dockerfile `FROM
    # lmcache/vllm-openai:v0.3.9`). Seed 004's XpYd over NIXL.
    Image("v0.3.9", "", "", "3.12", "22.04", _GPU_FAMILIES, ("lmcache",), SUPPORTED,
          source="LMCache/LMCache docs/source/getting_started/installation.rst (docker pull lmcache/vllm-openai)",
          refusals={"neuron-connector": "it is vLLM for CUDA GPUs, not the Neuron fork",
                    "nixl": "it is LMCache's build; engine nixl runs AWS's vLLM DLC (deep-learning-containers/vllm)"},
          repository=LMCACHE_REPOSITORY, accelerator=catalog.GPU, host_ubuntu="24.04"),
)

IMAGES: Mapping[str, Image] = {image.uri: image for image in _IMAGES + _GPU_IMAGES}

def find(uri: str) -> Image | None:
    """The catalog entry of a full image reference, or None for an unlisted one."""
    return IMAGES.get(uri)


def for_engine(engine: str, accelerator: str = catalog.NEURON) -> list[Image]:
    """The images an engine accepts on an accelerator, newest first."""
    return [image for image in _IMAGES + _GPU_IMAGES if engine in image.engines and image.accelerator == accelerator]


def worker_ami_parameter(uri: str, accelerator: str) -> str | None:
    """The default worker AMI's SSM parameter: the host DLAMI the catalog names for the image; for an unlisted image
    the Deep Learning Base GPU AMI on GPU fleets (it carries only the driver and container toolkit the container
    needs), and None on Neuron fleets, where rules.py then refuses the config until worker_ami names the host: a
    tag's Ubuntu says nothing about the host (DLC_233), and a guessed DLAMI parameter fails only at launch."""
    image = find(uri)
    if image is not None:
        return image.host_dlami
    return GPU_DLAMI_PARAMETER if accelerator == catalog.GPU else None
