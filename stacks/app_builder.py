"""Build the CDK app for one config: DiStack plus the cdk-nag AwsSolutions checks (failing synth on findings)."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import DeploymentConfig
from stacks.di_stack import DiStack

STACK_ID = "DiStack"


def build_app(app: cdk.App, config: DeploymentConfig) -> DiStack:
    """Add DiStack (construct id `DiStack`, stack name di-NAME) and the policy checks to `app`."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return DiStack(app, STACK_ID, config=config,
                   env=cdk.Environment(account=config.account, region=config.region))
