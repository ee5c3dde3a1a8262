"""The control plane in the template: control hosts behind an internal Network Load Balancer (TLS with the config's
certificate), held out of service by a launch hook, replaced on failed load-balancer checks; the scoped SSM policy;
the generated API key; the retained flow logs; and the rules on client networks."""

from __future__ import annotations

import json

import pytest
import yaml

from model import naming, security_rules
from model.loader import CONFIG_DIR, ConfigError, load_config_file
from stacks.components.node_role import SSM_AGENT_ACTIONS
from tests.test_template import resources

CERT = "arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012"


@pytest.fixture(scope="module")
def tls_prod(synth, tmp_path_factory):
    """config/prod.yaml with a certificate instead of plaintext_edge."""
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    data["control_plane"] = {"certificate_arn": CERT}
    path = tmp_path_factory.mktemp("tls") / "prod.yaml"
    path.write_text(yaml.safe_dump(data))
    return synth(path).template_dict


def control_group(template: dict) -> dict:
    (group,) = [v["Properties"] for v in resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
                if "PlacementGroup" not in v["Properties"] and "Tags" in v["Properties"]
                and any(t["Value"] == naming.ROLE_CONTROL for t in v["Properties"]["Tags"])]
    return group


def test_three_control_hosts_serve_only_after_their_launch_hook_and_are_replaced_on_failed_checks(synth):
    template = synth("prod").template_dict
    group = control_group(template)
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == ("3", "3", "3")
    assert group["HealthCheckType"] == "ELB"
    (hook,) = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING" and hook["DefaultResult"] == "ABANDON"
    targets = resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    assert sorted(ref["Ref"] for ref in group["TargetGroupARNs"]) == sorted(targets)
    by_port = {t["Properties"]["Port"]: t["Properties"] for t in targets.values()}
    proxy, etcd = by_port[naming.PROXY_PORT], by_port[naming.ETCD_CLIENT_PORT]
    assert (proxy["HealthCheckProtocol"], proxy["HealthCheckPath"]) == ("HTTP", "/health")
    assert etcd["HealthCheckProtocol"] == "TCP"
    # The control hosts signal CloudFormation each, and their node.env names the hook they complete.
    (policy,) = [v for v in resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
                 if v["Properties"] is group]
    assert policy["CreationPolicy"]["ResourceSignal"]["Count"] == 3


def test_the_load_balancer_is_internal_and_admits_only_the_client_networks(synth):
    template = synth("prod").template_dict
    (balancer,) = resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert balancer["Properties"]["Scheme"] == "internal" and balancer["Properties"]["Type"] == "network"
    listeners = {v["Properties"]["Port"]: v["Properties"]
                 for v in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()}
    # prod ships without a certificate and says so (plaintext_edge): TCP on the proxy port.
    assert listeners[naming.PROXY_PORT]["Protocol"] == "TCP"
    assert listeners[naming.ETCD_CLIENT_PORT]["Protocol"] == "TCP"


def test_a_certificate_turns_the_client_listener_into_tls_on_443(tls_prod):
    listeners = {v["Properties"]["Port"]: v["Properties"]
                 for v in resources(tls_prod, "AWS::ElasticLoadBalancingV2::Listener").values()}
    tls = listeners[443]
    assert tls["Protocol"] == "TLS" and tls["Certificates"] == [{"CertificateArn": CERT}]
    assert tls["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert naming.PROXY_PORT not in listeners
    assert "https://" in json.dumps(tls_prod["Outputs"][naming.OUTPUT_PROXY_URL]["Value"])


def test_dev_keeps_one_control_host_without_an_etcd_listener(synth):
    template = synth("dev").template_dict
    group = control_group(template)
    assert (group["MinSize"], group["MaxSize"]) == ("1", "1")
    ports = [v["Properties"]["Port"] for v in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()]
    assert ports == [naming.PROXY_PORT]


def test_nodes_get_the_scoped_ssm_statement_instead_of_the_managed_policy(synth):
    template = synth("prod").template_dict
    for role in resources(template, "AWS::IAM::Role").values():
        assert "AmazonSSMManagedInstanceCore" not in json.dumps(role["Properties"].get("ManagedPolicyArns", []))
    statements = [s for p in resources(template, "AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    granted = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert set(SSM_AGENT_ACTIONS) <= granted
    assert not {"ssm:GetParameters", "ssm:GetDocument", "ssm:ListAssociations"} & granted


def test_an_open_proxy_without_a_named_key_gets_a_generated_one_and_only_the_control_role_reads_it(synth):
    template = synth("prod").template_dict
    (secret_id, secret), = [(k, v) for k, v in resources(template, "AWS::SecretsManager::Secret").items()
                            if k.startswith("EdgeApiKey")]
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= 32 and generate["ExcludePunctuation"] is True
    readers = [name for name, p in resources(template, "AWS::IAM::Policy").items()
               if {"Ref": secret_id} in [r for s in p["Properties"]["PolicyDocument"]["Statement"]
                                         for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]]
    assert len(readers) == 1 and readers[0].startswith("ControlRole")
    # dev opens nothing: no key to generate.
    assert not [k for k in resources(synth("dev").template_dict, "AWS::SecretsManager::Secret")
                if k.startswith("EdgeApiKey")]


def statements_on(template: dict, secret_id: str) -> dict[str, set[str]]:
    """Policy name -> the actions it grants on one secret."""
    found: dict[str, set[str]] = {}
    for name, policy in resources(template, "AWS::IAM::Policy").items():
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            targets = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            if {"Ref": secret_id} in targets:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                found.setdefault(name, set()).update(actions)
    return found


def test_the_etcd_ca_is_the_control_roles_alone_and_workers_only_read_the_registrars_credentials(synth):
    template = synth("prod").template_dict
    secrets = resources(template, "AWS::SecretsManager::Secret")
    (ca,) = [k for k in secrets if k.startswith("EtcdTrustCa")]
    (registrar,) = [k for k in secrets if k.startswith("EtcdTrustRegistrar")]
    # Created empty: a generated placeholder, nothing of the CA in the template.
    assert all("SecretString" not in secrets[k]["Properties"] for k in (ca, registrar))
    on_ca, on_registrar = statements_on(template, ca), statements_on(template, registrar)
    assert list(on_ca) == [next(n for n in on_ca if n.startswith("ControlRole"))]
    assert on_ca[next(iter(on_ca))] == {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"}
    workers = {n: a for n, a in on_registrar.items() if n.startswith("WorkerRole")}
    assert list(workers.values()) == [{"secretsmanager:GetSecretValue"}]
    # The legacy engine's clients stay plain: no registrar's credentials. Its three members' peers use TLS: the CA
    # secret (the peer CA), the control role's alone.
    legacy = synth("legacy-trn1").template_dict
    (legacy_ca,) = [k for k in resources(legacy, "AWS::SecretsManager::Secret") if k.startswith("EtcdTrust")]
    assert legacy_ca.startswith("EtcdTrustCa")
    on_legacy_ca = statements_on(legacy, legacy_ca)
    assert [n for n in on_legacy_ca if not n.startswith("ControlRole")] == []


def test_flow_logs_outlive_the_stack(synth):
    template = synth("prod").template_dict
    (flow,) = [k for k in resources(template, "AWS::Logs::LogGroup") if "FlowLogs" in k]
    assert template["Resources"][flow]["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("cidrs, accepted", [
    (["10.1.0.0/16", "172.16.4.0/24", "192.168.0.0/16", "100.64.0.0/16"], True),
    (["0.0.0.0/1", "128.0.0.0/1"], False),
    (["172.32.0.0/16"], False),   # just outside 172.16.0.0/12
    (["10.0.0.0/15"], False),     # private but wider than one VPC
    (["8.8.8.0/24"], False),
])
def test_client_networks_must_be_private_and_at_most_a_16(tmp_path, cidrs, accepted):
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    data["network"]["allowed_client_cidrs"] = cidrs
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(data))
    if accepted:
        load_config_file(path)
        return
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    # Every refused network is reported, with the fix, in one message.
    for i, _ in enumerate(cidrs):
        assert f"network.allowed_client_cidrs[{i}]" in message
    assert "fix:" in message and str(path) in message


def test_open_networks_without_tls_or_a_key_are_refused_together(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "tutorial.yaml").read_text())
    data["network"] = {"allowed_client_cidrs": ["10.42.0.0/16", "0.0.0.0/0"]}
    path = tmp_path / "tutorial.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert "proxy neuron checks no API key" in message
    assert "control_plane.certificate_arn: clients in allowed_client_cidrs would send prompts" in message
    assert "allowed_client_cidrs[1]: 0.0.0.0/0 is not a private network" in message
    assert security_rules.PRIVATE_NAMES in message


def test_the_proxies_see_client_addresses_and_their_bounds_come_from_the_config(synth):
    """The per-client cap counts the connection's peer: client IP preservation is on for the proxies' targets (and
    off for etcd's), and the control hosts still admit only the load balancer's group. proxy.env carries the bounds,
    the worker subnet CDK allocated, and every etcd member."""
    from diproxy.config import parse_settings
    from tests.test_seams import control_files, env_values

    template = synth("prod").template_dict
    targets = {t["Properties"]["Port"]: t["Properties"]
               for t in resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()}

    def preserved(group: dict) -> str:
        return {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}["preserve_client_ip.enabled"]

    assert preserved(targets[naming.PROXY_PORT]) == "true"
    assert preserved(targets[naming.ETCD_CLIENT_PORT]) == "false"
    proxy_port_sources = [rule for rule in resources(template, "AWS::EC2::SecurityGroupIngress").values()
                          if rule["Properties"].get("FromPort") == naming.PROXY_PORT]
    assert proxy_port_sources and all("SourceSecurityGroupId" in r["Properties"] for r in proxy_port_sources)

    proxy_env = env_values(control_files(template)[naming.PROXY_ENV_PATH])
    (subnet,) = [s["Properties"]["CidrBlock"] for s in resources(template, "AWS::EC2::Subnet").values()
                 if {"Key": "aws-cdk:subnet-type", "Value": "Private"} in s["Properties"]["Tags"]]
    settings = parse_settings([], env=proxy_env)
    assert settings.worker_networks == (subnet,)
    assert (settings.max_model_len, settings.max_n) == (16384, 1)
    assert (settings.max_in_flight, settings.max_in_flight_per_client) == (256, 64)
    assert settings.max_workers >= 16
    assert str(settings.etcd) == "127.0.0.1:8989" and len(settings.etcd_others) == 3


def test_a_per_client_cap_above_the_global_one_is_refused_naming_both(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    data["control_plane"] = {**data.get("control_plane", {}), "max_in_flight": 10, "max_in_flight_per_client": 20}
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert str(path) in message and "control_plane.max_in_flight_per_client" in message
    assert "20 is above control_plane.max_in_flight (10)" in message and "set it to at most 10" in message
