"""Time to serving: how long a new worker of a fleet takes from launch to every endpoint answering /health.

A model on paper, step by step, each figure with its basis: "cited" (a public AWS/Neuron/vLLM source, URL in
`source`), "measured" (where), or "estimated" (the reasoning in `source`). Cold is a new instance; warm is one
started from a Stopped warm pool whose root EBS volume already holds the image layers, the weights and the
compiled artifacts.

Used by the scaling settings (instance warm-up, launch-hook timeout) and by `bench/time_to_serving.py`.
Pure Python: never imports aws_cdk (dictl imports stacks modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stacks import catalog
from stacks.config import DeploymentConfig

Basis = Literal["cited", "measured", "estimated"]

GB = 1000**3
MB = 1000**2


@dataclass(frozen=True)
class Step:
    """One step from launch to /health."""

    name: str
    seconds: float
    source: str
    basis: Basis


@dataclass(frozen=True)
class ServingTime:
    """The steps of one fleet's worker from launch to /health, cold or warm."""

    environment: str
    fleet: str
    warm: bool
    steps: tuple[Step, ...]

    @property
    def total_seconds(self) -> float:
        """The steps run one after the other on the node, so the total is their sum."""
        return sum(step.seconds for step in self.steps)


class UnknownFleet(ValueError):
    """The environment has no fleet of that name."""


# Rough first figures (refined below as sources are read).
INSTANCE_START_COLD_S = 120.0
INSTANCE_START_WARM_S = 90.0
IMAGE_COMPRESSED_GB = 12.0
IMAGE_PULL_BYTES_PER_S = 100 * MB
HF_BYTES_PER_S = 200 * MB
S3_BYTES_PER_S = 1000 * MB
EBS_READ_BYTES_PER_S = 1000 * MB
COMPILED_GB = 5.0
LOAD_BYTES_PER_S = 1000 * MB
WARMUP_S = 120.0


def weights_bytes(config: DeploymentConfig) -> float:
    """Parameters times bytes per parameter of the configured dtype."""
    billions = config.model.parameters_billion or catalog.KNOWN_MODEL_PARAMETERS_B.get(config.model.id)
    if billions is None:
        raise ValueError(f"model {config.model.id}: unknown size; set model.parameters_billion")
    return billions * 1e9 * catalog.DTYPE_BYTES[config.model.dtype]


def estimate(config: DeploymentConfig, fleet_name: str, *, warm: bool) -> ServingTime:
    """The steps from launch to /health of one new worker of `fleet_name`, cold or from a Stopped warm pool."""
    if fleet_name not in config.fleets:
        known = ", ".join(sorted(config.fleets)) or "none"
        raise UnknownFleet(f"environment {config.name} has no fleet {fleet_name!r} (fleets: {known})")
    weights = weights_bytes(config)
    steps: list[Step] = []
    if warm:
        steps.append(Step("instance start", INSTANCE_START_WARM_S, "rough: Stopped to running, boot", "estimated"))
        steps.append(Step("image pull", 5.0, "rough: layers on EBS, manifest check only", "estimated"))
        steps.append(Step("model download", 0.0, "rough: weights on EBS", "estimated"))
        steps.append(Step("compiled-artifact sync", 0.0, "rough: compiled cache on EBS", "estimated"))
        load = weights / EBS_READ_BYTES_PER_S + WARMUP_S
        steps.append(Step("load and warm-up", load, "rough: weights read from EBS, then warm-up", "estimated"))
    else:
        steps.append(Step("instance start", INSTANCE_START_COLD_S, "rough: pending to user data", "estimated"))
        steps.append(Step("image pull", IMAGE_COMPRESSED_GB * GB / IMAGE_PULL_BYTES_PER_S,
                          "rough: compressed size / pull rate", "estimated"))
        rate = S3_BYTES_PER_S if config.model.source == "s3" else HF_BYTES_PER_S
        steps.append(Step("model download", weights / rate, "rough: weights / download rate", "estimated"))
        steps.append(Step("compiled-artifact sync", COMPILED_GB * GB / S3_BYTES_PER_S,
                          "rough: compiled size / S3 rate", "estimated"))
        load = weights / LOAD_BYTES_PER_S + WARMUP_S
        steps.append(Step("load and warm-up", load, "rough: weights into HBM, then warm-up", "estimated"))
    return ServingTime(config.name, fleet_name, warm, tuple(steps))
