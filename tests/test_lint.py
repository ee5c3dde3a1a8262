"""Every shipped template passes cfn-lint (in its own region) with no error."""

from __future__ import annotations

import pytest
from cfnlint.api import ManualArgs, lint_file

from tests.conftest import SHIPPED_ENVS

# W3010 (hard-coded AZ) is the design: EFA traffic cannot leave one subnet, so workers pin one zone.
ACCEPTED = {"W3010"}


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_template_passes_cfn_lint(synth, env):
    result = synth(env)
    # cfn-lint's library entry point (https://github.com/aws-cloudformation/cfn-lint#as-a-library): the same
    # rules as the `cfn-lint` command, without a new interpreter loading them for each template (~2 s each).
    findings = lint_file(result.template_path, config=ManualArgs(regions=[result.config.region]))
    unexpected = [f"{f.rule.id} {f.path_string} {f.message[:200]}" for f in findings if f.rule.id not in ACCEPTED]
    assert unexpected == [], "\n".join(unexpected)
