"""The image catalog (model/images.py): each image's host AMI, the default per accelerator, and what an unlisted or
refused image does to a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model import catalog, images
from model.loader import CONFIG_DIR, ConfigError, load_config_file, load_environment

DLAMI_2404 = "/aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id"
DLAMI_2204 = "/aws/service/neuron/dlami/base/ubuntu-22.04/latest/image_id"
SDK_233 = images.REPOSITORY + ":0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04"
GPU_DLC = images.VLLM_DLC_REPOSITORY + ":0.27.1-gpu-py312-ec2"


def _sdk(image: images.Image) -> tuple[int, ...]:
    return tuple(int(part) for part in image.sdk.split("."))


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_neuron_images_boot_the_dlami_of_their_sdk_not_of_their_container():
    neuron = [image for image in images.IMAGES.values() if image.accelerator == catalog.NEURON]
    # The vLLM V0 fork images (22.04 containers) keep the frozen 22.04 DLAMI; every SDK 2.27+ image, whatever its
    # container's Ubuntu, boots the 24.04 one: the 2.33 image is Ubuntu 26.04 inside.
    for image in neuron:
        expected = DLAMI_2204 if _sdk(image) < (2, 27) else DLAMI_2404
        assert images.worker_ami_parameter(image.uri, catalog.NEURON) == expected, image.tag
    assert images.IMAGES[SDK_233].ubuntu == "26.04"
    assert images.worker_ami_parameter(SDK_233, catalog.NEURON) == DLAMI_2404


def test_an_unlisted_neuron_image_gets_no_ami_from_its_tag_and_an_unlisted_gpu_one_the_gpu_ami():
    unlisted = images.REPOSITORY + ":0.30.0.1.3.0-neuronx-py314-sdk2.34.0-ubuntu26.04"
    assert images.find(unlisted) is None
    assert images.worker_ami_parameter(unlisted, catalog.NEURON) is None
    assert images.worker_ami_parameter(images.VLLM_DLC_REPOSITORY + ":0.28.0-gpu-py312-ec2", catalog.GPU) == (
        images.GPU_DLAMI_PARAMETER)


def test_a_catalog_row_whose_host_has_no_documented_dlami_is_refused_when_built():
    with pytest.raises(ValueError, match="no Neuron base DLAMI is documented for Ubuntu 26.04"):
        images.Image("x-ubuntu26.04", "0.29.0", "2.33.0", "3.14", "26.04", ("trn2",), ("nixl",), images.SUPPORTED,
                     host_ubuntu="26.04")
    gpu = images.Image("y", "0.27.1", "", "3.12", "22.04", ("p5",), ("nixl",), images.SUPPORTED,
                       accelerator=catalog.GPU, host_ubuntu="24.04")
    assert gpu.host_dlami == images.GPU_DLAMI_PARAMETER


def test_the_default_trainium_image_is_neuron_2_33_on_the_ubuntu_24_04_dlami(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "dev.yaml").read_text())
    data.pop("image", None)
    data.pop("worker_ami", None)
    config = load_config_file(_write(tmp_path, "dev", data))
    assert (config.image, config.worker_ami.ssm_parameter, config.dlami_ubuntu) == (SDK_233, DLAMI_2404, "24.04")
    entry = config.image_entry
    assert (entry.vllm, entry.sdk, entry.python, entry.ubuntu, entry.status) == (
        "0.29.0", "2.33.0", "3.14", "26.04", images.SUPPORTED)
    # 2.32 stays accepted (pinned deployments keep working), no longer the default.
    assert images.IMAGES[images.REPOSITORY + ":0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"].status == (
        images.SUPERSEDED)


def test_an_unlisted_neuron_image_is_refused_until_the_config_names_its_host(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "dev.yaml").read_text())
    data.pop("worker_ami", None)
    data.update(image=images.REPOSITORY + ":0.30.0.1.3.0-neuronx-py314-sdk2.34.0-ubuntu26.04", image_unlisted=True)
    with pytest.raises(ConfigError, match="does not know which host AMI runs the unlisted image") as caught:
        load_config_file(_write(tmp_path, "dev", data))
    assert DLAMI_2404 in str(caught.value)  # the fix names the documented DLAMI
    data["worker_ami"] = {"ssm_parameter": DLAMI_2404}
    assert load_config_file(_write(tmp_path, "dev", data)).worker_ami.launch_template_image == (
        f"resolve:ssm:{DLAMI_2404}")


@pytest.mark.parametrize("env", ["gpu-dev", "gpu-xpyd"])
def test_gpu_nixl_environments_run_the_vllm_dlc_tested_with_nixl_libfabric(env):
    config = load_environment(env)
    assert (config.engine, config.image) == ("nixl", GPU_DLC)
    assert config.worker_ami.ssm_parameter == images.GPU_DLAMI_PARAMETER
    # No source gives its digest: pinned by tag, so a wrong tag fails `docker pull` at boot.
    assert config.image_entry.digest == ""


def test_upstream_v0_11_0_is_refused_for_nixl_with_the_libfabric_reason(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "gpu-xpyd.yaml").read_text())
    data["image"] = (images.VLLM_REPOSITORY + ":v0.11.0"
                     "@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c")
    with pytest.raises(ConfigError, match="engine nixl cannot run v0.11.0: no source shows NIXL's LIBFABRIC plugin"):
        load_config_file(_write(tmp_path, "gpu-xpyd", data))
