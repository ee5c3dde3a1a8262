"""`dictl rollout` runs the config rules on the config as the rollout changes it, and refuses before any AWS call
with the loader's report (exit 2)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
from botocore.exceptions import NoCredentialsError

from ops.cli import main
from model import images
from model.loader import CONFIG_DIR

UNLISTED = images.REPOSITORY + ":0.30.0.1.3.0-neuronx-py314-sdk2.34.0-ubuntu26.04"
UNLISTED_GPU = images.VLLM_DLC_REPOSITORY + ":0.28.0-gpu-py312-ec2"
LEGACY_IMAGE = images.REPOSITORY + ":0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"
# The prefill fleet's tensor_parallel line in config/prod.yaml, where the weights-fit problem points.
PREFILL_TP_LINE = next(number for number, line in enumerate((CONFIG_DIR / "prod.yaml").read_text().splitlines(), 1)
                       if line.strip().startswith("tensor_parallel:"))


class NoAws:
    """Clients that fail the test on first use: a refused rollout must not reach AWS."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rollout touched AWS ({name}) before its config check")


def _dictl(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(list(argv), clients_factory=lambda region, profile: NoAws())
    return code, err.getvalue()


@pytest.mark.parametrize("flags, expected", [
    (["--model", "meta-llama/Llama-3.1-405B-Instruct"],
     "config/prod.yaml (--model): model.id: the size of meta-llama/Llama-3.1-405B-Instruct is unknown"),
    (["--model", "meta-llama/Llama-3.1-405B-Instruct", "--parameters-billion", "405.85"],
     f"config/prod.yaml:{PREFILL_TP_LINE}: fleets.prefill.tensor_parallel: meta-llama/Llama-3.1-405B-Instruct needs "
     "756 GiB for bfloat16 weights but 16 cores of trn2.48xlarge hold 384 GiB of HBM"),
    (["--image", UNLISTED], "config/prod.yaml (--image): image: '" + UNLISTED + "' is not in DiStack's image catalog"),
    (["--image", LEGACY_IMAGE], "config/prod.yaml (--image): image: engine nixl cannot run 0.9.1-neuronx-py310"),
    # An unlisted Neuron image names no host: the file must (a tag's Ubuntu is the container's).
    (["--image", UNLISTED, "--image-unlisted"],
     "config/prod.yaml (--image): image: DiStack does not know which host AMI runs the unlisted image"),
])
def test_rollout_refuses_a_change_the_config_rules_refuse_before_any_aws_call(flags, expected) -> None:
    code, err = _dictl("rollout", "--env", "prod", "--quiet", *flags)
    assert code == 2, err
    assert expected in err
    assert "nothing was sent" in err and "Traceback" not in err


def test_a_change_the_rules_accept_goes_on_to_aws() -> None:
    """--image-unlisted is image_unlisted: true for the rollout: accepted, so the next step is the stack lookup."""

    class Unreachable:
        def __getattr__(self, name: str) -> Any:
            raise NoCredentialsError()

    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["rollout", "--env", "gpu-xpyd", "--quiet", "--image", UNLISTED_GPU, "--image-unlisted"],
                    clients_factory=lambda region, profile: Unreachable())
    assert code == 2 and "Unable to locate credentials" in err.getvalue(), err.getvalue()
    assert "problem" not in err.getvalue()
    # the unlisted image is taken on the flag's word, with synth's warning, located at the flag
    assert ("config/gpu-xpyd.yaml (--image): warning: image: '" + UNLISTED_GPU
            + "' is not in DiStack's image catalog") in err.getvalue()
