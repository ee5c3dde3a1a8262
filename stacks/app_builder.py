"""Build the CDK app for one config: the stack di-NAME plus the cdk-nag AwsSolutions checks (failing synth on
findings)."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import DeploymentConfig
from stacks.di_stack import DiStack


def build_app(app: cdk.App, config: DeploymentConfig) -> DiStack:
    """Add DiStack and the policy checks to `app`.

    The construct id is the stack name, di-NAME, because the CDK CLI selects stacks by construct path only:
    `cdk synth PATTERN` globs the artifacts' hierarchicalId (aws/aws-cdk-cli@41baf13
    packages/@aws-cdk/toolkit-lib/lib/api/cloud-assembly/stack-assembly.ts `selectMatchingStacks`, the same in the
    pinned CLI 2.1148.1), never the CloudFormation stack name. With the id di-NAME, `cdk deploy di-prod -c env=prod`
    names the stack as CloudFormation, the console and dictl do; one stack has one id, so `cdk synth DiStack` (the
    id until now) matches nothing. Logical ids are relative to the stack, except those of the security group rules
    between two groups, which embed the peer group's path from the app: a stack deployed under the id DiStack would
    get those rules replaced (and its VPC's Name tags changed), so it is destroyed and deployed again instead.
    """
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return DiStack(app, config.stack_name, config=config,
                   env=cdk.Environment(account=config.account, region=config.region))
