"""The etcd trust's secrets, created empty (a random placeholder) by CloudFormation and filled by the first control
host at its first boot (userdata/lib/etcd_trust.sh): the CAs (clients' and peers') and the control plane's passwords,
and, where clients use TLS, the registrar's certificate and password that workers read."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct


class EtcdTrust(Construct):
    """Why the key material is made on a host and not at synth or by a function: at synth it would sit in cdk.out and
    the template (both uploaded, neither secret); a custom resource would add a Lambda function and its role. Member
    m0 makes it once with openssl and only the control role may write either secret; the other hosts and the workers
    wait until it is there.

    The peer CA, which signs the members' peer certificates only, is in ``ca_secret`` beside the client CA: no worker
    reads it, so no certificate a worker holds can make it an etcd member.

    Exposes ``ca_secret`` (the control role reads and writes it) and ``client_secret`` (the workers read it; None with
    ``clients=False``, where clients keep plain HTTP: engine neuron-connector, whose peers still use TLS).
    """

    def __init__(self, scope: Construct, construct_id: str, *, deployment: str, clients: bool = True) -> None:
        super().__init__(scope, construct_id)
        # The generated placeholder is no JSON, which the hosts read as "not created yet". The secrets go with the
        # stack: a new stack creates new etcd volumes, so no retained registry outlives its CA.
        self.ca_secret = secretsmanager.Secret(
            self, "Ca", description=f"DiStack {deployment}: the etcd CA and peer CA, root's and the proxy's etcd "
                                    "passwords (written by control host m0 at its first boot)",
            generate_secret_string=secretsmanager.SecretStringGenerator(exclude_punctuation=True),
            removal_policy=cdk.RemovalPolicy.DESTROY)
        self.client_secret: secretsmanager.Secret | None = None
        if clients:
            self.client_secret = secretsmanager.Secret(
                self, "Registrar", description=f"DiStack {deployment}: the workers' etcd client certificate and the "
                                               "registrar's etcd password (written by control host m0)",
                generate_secret_string=secretsmanager.SecretStringGenerator(exclude_punctuation=True),
                removal_policy=cdk.RemovalPolicy.DESTROY)

    def grant_control(self, role: iam.IRole) -> None:
        """The control hosts read the secrets, and write them (m0, once)."""
        for secret in (self.ca_secret, self.client_secret):
            if secret is not None:
                role.add_to_principal_policy(iam.PolicyStatement(
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"],
                    resources=[secret.secret_arn]))

    def grant_workers(self, role: iam.IRole) -> None:
        """Workers read the registrar's credentials only: never a CA key, root's or the proxy's password."""
        if self.client_secret is not None:
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"], resources=[self.client_secret.secret_arn]))
