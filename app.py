"""CDK entry point: `cdk synth DiStack -c env=NAME` (stack di-NAME; default dev; `make synth ENV=NAME` writes cdk.out/NAME/).
No AWS calls, no lookups. A bad config exits 1 with every problem listed, before any construct is built."""

import sys
from pathlib import Path

import aws_cdk as cdk

from model.loader import ConfigError, load_environment

# The built-in CloudFormation Validate plugin starts an engine that costs seconds on every synth; `make test`
# runs cfn-lint on every shipped template instead, and cdk-nag below still fails synth on any finding.
app = cdk.App(builtin_cloud_formation_validation=False)
try:
    config = load_environment(app.node.try_get_context("env") or "dev")
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(1)

from stacks.app_builder import build_app  # noqa: E402  (after the config check: a bad file fails fast)
from model.summary import summarize  # noqa: E402

stack = build_app(app, config)
assembly = app.synth()
template = assembly.get_stack_artifact(stack.artifact_id)
print(summarize(config, template.template), file=sys.stderr)
print(f"  template: {Path(assembly.directory, template.template_file).resolve()}", file=sys.stderr)
