"""Every shipped environment synthesizes with cdk-nag's AwsSolutions checks on."""

import pytest

from tests.conftest import GPU_ENVS, SHIPPED_ENVS


@pytest.mark.parametrize("env", SHIPPED_ENVS + GPU_ENVS)
def test_shipped_environment_synthesizes(synth, env):
    result = synth(env)
    assert result.template_dict["Resources"], env
