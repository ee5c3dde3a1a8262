"""Every shipped template passes cfn-lint (in its own region) with no error."""

from __future__ import annotations

import pytest

from tests.conftest import SHIPPED_ENVS

# W3010 (hard-coded AZ) is the design: EFA traffic cannot leave one subnet, so workers pin one zone.
ACCEPTED = {"W3010"}


@pytest.fixture(scope="session")
def cfn_lint():
    """lint(path, region) -> findings, with cfn-lint's rules loaded once per test process.

    cfn-lint's library entry point `lint_file` (https://github.com/aws-cloudformation/cfn-lint#as-a-library) loads
    every rule again for each template (~1.5 s) and parses the JSON template with its YAML loader (~0.5 s); this
    runs the same rules (cfnlint/runner/cli.py `Runner.validate_template`, what `lint_file` ends in) on the
    template parsed by cfn-lint's JSON decoder, which keeps line numbers for the findings."""
    from cfnlint.api import ManualArgs
    from cfnlint.config import ConfigMixIn
    from cfnlint.decode import cfn_json
    from cfnlint.runner import Runner

    runners: dict[str, Runner] = {}

    def lint(path, region: str) -> list:
        if region not in runners:
            runners[region] = Runner(ConfigMixIn([], **ManualArgs(regions=[region])))
        return list(runners[region].validate_template(cfn_json.load(str(path))))

    return lint


# xpyd is left out: its template is prod's with fixed fleets (no scaling policy, no warm pool), resource types and
# properties prod's lint already covers; gpu-xpyd brings the GPU EFA layout (32 cards).
@pytest.mark.parametrize("env", (*(env for env in SHIPPED_ENVS if env != "xpyd"), "gpu-xpyd"))
def test_template_passes_cfn_lint(synth, cfn_lint, env):
    result = synth(env)
    findings = cfn_lint(result.template_path, result.config.region)
    unexpected = [f"{f.rule.id} {f.path_string} {f.message[:200]}" for f in findings if f.rule.id not in ACCEPTED]
    assert unexpected == [], "\n".join(unexpected)


def test_the_lint_reports_a_broken_template(cfn_lint, tmp_path):
    # The shared runner still finds errors: a resource with a property its type does not have (E3002).
    path = tmp_path / "broken.template.json"
    path.write_text('{"Resources": {"Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketNme": "x"}}}}')
    assert "E3002" in {f.rule.id for f in cfn_lint(path, "us-east-2")}


def test_the_licence_is_the_unmodified_apache_2_0_text_and_the_package_declares_it():
    import hashlib
    from importlib.metadata import metadata

    from tests.conftest import ROOT

    # sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (Debian ships the same bytes as
    # /usr/share/common-licenses/Apache-2.0).
    digest = hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest()
    assert digest == "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
    assert metadata("distack")["License-Expression"] == "Apache-2.0"  # pyproject.toml, installed by make setup
