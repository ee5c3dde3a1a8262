"""Time to serving on GPU fleets: the vLLM image's size and vLLM's own start, never the Neuron image or compile."""

from __future__ import annotations

import pytest

from model import catalog, serving_time
from model.loader import available_environments, load_environment

GPU_ENVS = [name for name in available_environments()
            if load_environment(name, warn=lambda _: None).accelerator == catalog.GPU]


def test_the_shipped_gpu_environments_are_modelled():
    assert {"gpu-dev", "gpu-xpyd", "gpu-lmcache", "gpu-lmcache-xpyd"} <= set(GPU_ENVS)


@pytest.mark.parametrize("env", GPU_ENVS)
def test_gpu_fleets_pull_the_gpu_image_and_start_vllm_without_neuron_steps(env):
    config = load_environment(env, warn=lambda _: None)
    for fleet in config.fleets:
        cold = {step.name: step for step in serving_time.estimate(config, fleet, warm=False).steps}
        for step in cold.values():
            assert "Neuron" not in step.source and "NEFF" not in step.source, (env, fleet, step)
        pull = cold["image pull"]
        assert f"~{serving_time.GPU_IMAGE_COMPRESSED_GB.value:g} GB compressed" in pull.detail
        assert serving_time.GPU_IMAGE_COMPRESSED_GB.source in pull.source
        assert serving_time.compiled_bytes(config) == serving_time.GPU_COMPILED.value
        load = cold["load and warm-up"]
        assert serving_time.GPU_WARMUP.source in load.source and serving_time.GPU_LOAD_BPS.source in load.source
        # Every GPU figure is an estimate, and says so.
        assert (pull.basis, load.basis) == ("estimated", "estimated")


def test_the_gpu_load_grows_with_the_weights_each_endpoint_loads():
    xpyd = load_environment("gpu-xpyd", warn=lambda _: None)
    seconds, _ = serving_time._weights_to_hbm(xpyd, xpyd.fleets["prefill"])
    endpoints = len(xpyd.fleets["prefill"].resolved_endpoints)
    expected = serving_time.weights_bytes(xpyd) * endpoints / serving_time.GPU_LOAD_BPS.value
    assert seconds == pytest.approx(max(serving_time.GPU_LOAD_FLOOR.value, expected))


def test_trainium_fleets_keep_the_neuron_image_and_compile_cache():
    prod = load_environment("prod", warn=lambda _: None)
    cold = {step.name: step for step in serving_time.estimate(prod, "decode", warm=False).steps}
    assert f"~{serving_time.IMAGE_COMPRESSED_GB.value:g} GB compressed" in cold["image pull"].detail
    assert serving_time.COMPILED_SOURCE in cold["compiled-artifact sync"].source
    assert serving_time.WARMUP.source in cold["load and warm-up"].source
