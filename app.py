"""CDK entry point: `cdk synth DiStack -c env=NAME` (default dev). No AWS calls, no lookups."""

import sys

import aws_cdk as cdk

from stacks.loader import ConfigError, load_environment

app = cdk.App()
try:
    config = load_environment(app.node.try_get_context("env") or "dev")
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(1)

from stacks.app_builder import build_app  # noqa: E402  (after the config check: a bad file fails fast)

build_app(app, config)
app.synth()
