"""Build the CDK app for one config: the stack (construct id DiStack, stack name di-NAME) plus the cdk-nag AwsSolutions checks (failing synth on
findings)."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from model.config import DeploymentConfig
from stacks.di_stack import DiStack


STACK_ID = "DiStack"


def build_app(app: cdk.App, config: DeploymentConfig) -> DiStack:
    """Add DiStack and the policy checks to `app`.

    The construct id is DiStack for every environment, so one command shape works for all of them:
    `cdk deploy DiStack -c env=prod` (the context picks the config, and the config the stack name di-NAME). The CDK CLI
    selects stacks by construct path only: `cdk synth PATTERN` globs the artifacts' hierarchicalId
    (aws/aws-cdk-cli@41baf13 packages/@aws-cdk/toolkit-lib/lib/api/cloud-assembly/stack-assembly.ts
    `selectMatchingStacks`, the same in the pinned CLI 2.1148.1), never the CloudFormation stack name, and a stack has
    one id, so `cdk synth di-prod` cannot also select it. The id also stays stable for deployed stacks: the security
    group rules between two groups embed the peer group's path from the app in their logical ids, so a new id would
    replace those rules on the next update.
    """
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return DiStack(app, STACK_ID, config=config,
                   env=cdk.Environment(account=config.account, region=config.region))
