"""Intent of the synthesized template: EFA layout, security groups, placement, IMDSv2, encryption, tags, counts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from aws_cdk.assertions import Match

from model import catalog, naming, scaling_config, serving_time
from tests.conftest import SHIPPED_ENVS, cdk_context

VARIANT = Path(__file__).parent / "data" / "variant.yaml"


@pytest.fixture(scope="module")
def variant(synth):
    """The non-default switches, synthesized once per run and shared by the workers (tests/conftest.py)."""
    result = synth(VARIANT)
    return result.config, result.template, result.template_dict


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def launch_templates(template: dict) -> dict[str, dict]:
    return {v["Properties"]["LaunchTemplateData"]["InstanceType"]: v["Properties"]["LaunchTemplateData"]
            for v in resources(template, "AWS::EC2::LaunchTemplate").values()}


def worker_group_id(template: dict) -> str:
    (logical,) = [k for k, v in resources(template, "AWS::EC2::SecurityGroup").items()
                  if "workers" in v["Properties"]["GroupDescription"]]
    return logical


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_one_efa_interface_per_network_card_behind_an_ena_primary(synth, env):
    result = synth(env)
    for fleet in result.config.fleets.values():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        nics = launch_templates(result.template_dict)[itype.name]["NetworkInterfaces"]
        primary = [n for n in nics if n["InterfaceType"] == "interface"]
        efa = [n for n in nics if n["InterfaceType"] == "efa-only"]
        assert len(efa) == itype.network_cards == {"trn2.48xlarge": 16, "trn1.32xlarge": 8}[itype.name]
        assert [(n["NetworkCardIndex"], n["DeviceIndex"]) for n in primary] == [(0, 0)]
        assert sorted(n["NetworkCardIndex"] for n in efa) == list(range(itype.network_cards))
        assert {(n["NetworkCardIndex"], n["DeviceIndex"]) for n in efa if n["NetworkCardIndex"] == 0} == {(0, 1)}
        assert primary[0]["AssociatePublicIpAddress"] is False
        assert all("Groups" in n and "SubnetId" in n for n in nics)
        # With interfaces declared, top-level groups would be ignored by EC2 (or rejected).
        assert "SecurityGroupIds" not in launch_templates(result.template_dict)[itype.name]


def test_trn1n_gets_sixteen_efa_interfaces(variant):
    _, _, template = variant
    nics = launch_templates(template)["trn1n.32xlarge"]["NetworkInterfaces"]
    assert sum(n["InterfaceType"] == "efa-only" for n in nics) == 16


def test_worker_group_allows_all_traffic_to_and_from_itself(synth):
    result = synth("prod")
    group = worker_group_id(result.template_dict)
    result.template.has_resource_properties("AWS::EC2::SecurityGroupIngress", {
        "IpProtocol": "-1", "GroupId": {"Fn::GetAtt": [group, "GroupId"]},
        "SourceSecurityGroupId": {"Fn::GetAtt": [group, "GroupId"]}})
    result.template.has_resource_properties("AWS::EC2::SecurityGroupEgress", {
        "IpProtocol": "-1", "GroupId": {"Fn::GetAtt": [group, "GroupId"]},
        "DestinationSecurityGroupId": {"Fn::GetAtt": [group, "GroupId"]}})


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_no_ssh_and_nothing_open_to_the_internet(synth, env):
    template = synth(env).template_dict
    ingress = [v["Properties"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()]
    for group in resources(template, "AWS::EC2::SecurityGroup").values():
        ingress += group["Properties"].get("SecurityGroupIngress", [])
    assert ingress
    for rule in ingress:
        assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", rule
        assert not (rule.get("FromPort", -1) <= 22 <= rule.get("ToPort", -1)), rule
    for group in resources(template, "AWS::EC2::SecurityGroup").values():
        for rule in group["Properties"].get("SecurityGroupEgress", []):
            if rule.get("CidrIp") == "0.0.0.0/0":
                assert rule["IpProtocol"] == "tcp" and rule["FromPort"] in (80, 443), rule


# Standard workers register in etcd too; the legacy engine's client port is plain HTTP (NeuronConnector has no TLS),
# so who reaches it is all that guards it.
@pytest.mark.parametrize("env", ["prod", "baseline", "legacy-trn1"])
def test_proxy_reachable_only_from_client_cidrs_and_etcd_only_from_workers(synth, env):
    result = synth(env)
    template = result.template_dict
    (control,) = [k for k, v in resources(template, "AWS::EC2::SecurityGroup").items()
                  if "control host" in v["Properties"]["GroupDescription"]]
    rules = resources(template, "AWS::EC2::SecurityGroup")[control]["Properties"].get("SecurityGroupIngress", [])
    rules += [v["Properties"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()
              if v["Properties"]["GroupId"] == {"Fn::GetAtt": [control, "GroupId"]}]
    by_port = {}
    for rule in rules:
        by_port.setdefault(rule["FromPort"], []).append(rule.get("CidrIp") or rule["SourceSecurityGroupId"])
    edge = {"Fn::GetAtt": [edge_group_id(template), "GroupId"]}
    # Clients reach the proxies only through the load balancer, whose own group admits the client networks; etcd
    # takes workers directly and through the load balancer, the other members (a rejoining member's member list,
    # remove and add; the proxies' fallback), and its members' peers.
    assert by_port == {
        naming.PROXY_PORT: [edge],
        naming.ETCD_CLIENT_PORT: [{"Fn::GetAtt": [worker_group_id(template), "GroupId"]}, edge,
                                  {"Fn::GetAtt": [control, "GroupId"]}],
        naming.ETCD_PEER_PORT: [{"Fn::GetAtt": [control, "GroupId"]}],
    }
    # The load balancer passes etcd's client port to the members from the workers alone.
    edge_id = edge_group_id(template)
    into_edge = resources(template, "AWS::EC2::SecurityGroup")[edge_id]["Properties"].get("SecurityGroupIngress", [])
    into_edge += [v["Properties"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()
                  if v["Properties"]["GroupId"] == {"Fn::GetAtt": [edge_id, "GroupId"]}]
    assert [r.get("CidrIp") or r["SourceSecurityGroupId"] for r in into_edge
            if r["FromPort"] <= naming.ETCD_CLIENT_PORT <= r["ToPort"]] == [
        {"Fn::GetAtt": [worker_group_id(template), "GroupId"]}]
    edge_rules = resources(template, "AWS::EC2::SecurityGroup")[edge_group_id(template)]["Properties"]
    assert sorted(r.get("CidrIp", "") for r in edge_rules.get("SecurityGroupIngress", [])
                  if r["FromPort"] == naming.PROXY_PORT) == sorted(result.config.network.allowed_client_cidrs)


def edge_group_id(template: dict) -> str:
    (group,) = [k for k, v in resources(template, "AWS::EC2::SecurityGroup").items()
                if "load balancer" in v["Properties"]["GroupDescription"]]
    return group


def test_vllm_ports_open_to_workers_only_from_the_control_host(synth):
    result = synth("baseline")
    template = result.template_dict
    worker = worker_group_id(template)
    rules = [v["Properties"] for v in resources(template, "AWS::EC2::SecurityGroupIngress").values()
             if v["Properties"]["GroupId"] == {"Fn::GetAtt": [worker, "GroupId"]} and v["Properties"]["IpProtocol"] != "-1"]
    assert sorted(r["FromPort"] for r in rules) == [8000, 8001, 8002, 8003]
    assert all(r["SourceSecurityGroupId"] != {"Fn::GetAtt": [worker, "GroupId"]} for r in rules)


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_every_fleet_in_one_subnet_and_one_cluster_placement_group(synth, env):
    template = synth(env).template_dict
    (group,) = resources(template, "AWS::EC2::PlacementGroup").items()
    assert group[1]["Properties"]["Strategy"] == "cluster"
    fleets = [v for k, v in resources(template, "AWS::AutoScaling::AutoScalingGroup").items()
              if "PlacementGroup" in v["Properties"]]
    assert len(fleets) == len(synth(env).config.fleets)
    assert {str(v["Properties"]["PlacementGroup"]) for v in fleets} == {str({"Ref": group[0]})}
    assert len({str(v["Properties"]["VPCZoneIdentifier"]) for v in fleets}) == 1


def test_capacity_blocks_and_reservations_target_their_reservation_without_placement_group(variant):
    config, template, raw = variant
    # No group is created: the Capacity Block fleet needs none, the reservation lives in the named one.
    template.resource_count_is("AWS::EC2::PlacementGroup", 0)
    placement = {fleet: group["Properties"].get("PlacementGroup") for fleet, group in worker_groups(raw).items()}
    assert placement == {"prefill": None, "decode": config.placement_group_name}
    template.has_resource_properties("AWS::EC2::LaunchTemplate", {"LaunchTemplateData": {
        "InstanceMarketOptions": {"MarketType": "capacity-block"},
        "CapacityReservationSpecification": {"CapacityReservationTarget": {
            "CapacityReservationId": config.fleets["prefill"].capacity.reservation_id}}}})
    template.has_resource_properties("AWS::EC2::LaunchTemplate", {"LaunchTemplateData": {
        "InstanceMarketOptions": Match.absent(),
        "CapacityReservationSpecification": {"CapacityReservationTarget": {
            "CapacityReservationId": config.fleets["decode"].capacity.reservation_id}}}})


def test_existing_network_is_used_as_given_without_new_vpc_or_endpoints(variant):
    config, template, raw = variant
    for kind in ("AWS::EC2::VPC", "AWS::EC2::NatGateway", "AWS::EC2::VPCEndpoint"):
        template.resource_count_is(kind, 0)
    for data in launch_templates(raw).values():
        assert {n["SubnetId"] for n in data["NetworkInterfaces"]} == {config.network.subnet_id}


def test_shipped_network_has_nat_and_the_ssm_and_logs_endpoints(synth):
    result = synth("dev")
    result.template.resource_count_is("AWS::EC2::NatGateway", 1)
    endpoints = {}
    for endpoint in resources(result.template_dict, "AWS::EC2::VPCEndpoint").values():
        name = endpoint["Properties"]["ServiceName"]
        suffix = name.split(".", 3)[-1] if isinstance(name, str) else name["Fn::Join"][1][-1].lstrip(".")
        endpoints[suffix] = endpoint["Properties"].get("VpcEndpointType", "Gateway")
    # dev runs DiStack's proxy (engine nixl), which publishes metrics: hence monitoring. The rest are every AWS API a
    # node calls at boot (tests/test_offline_boot.py derives them from the scripts).
    assert endpoints == {"s3": "Gateway", "ssm": "Interface", "ssmmessages": "Interface",
                         "ec2messages": "Interface", "logs": "Interface", "monitoring": "Interface",
                         "ec2": "Interface", "autoscaling": "Interface", "cloudformation": "Interface",
                         "secretsmanager": "Interface", "ecr.api": "Interface", "ecr.dkr": "Interface",
                         "sts": "Interface"}
    # Workers are private: no subnet hands out public addresses.
    for subnet in resources(result.template_dict, "AWS::EC2::Subnet").values():
        assert subnet["Properties"].get("MapPublicIpOnLaunch") in (False, None)


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_imdsv2_and_encrypted_gp3_root_on_every_launch_template(synth, env):
    for data in launch_templates(synth(env).template_dict).values():
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        (root,) = data["BlockDeviceMappings"]
        assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["VolumeType"] == "gp3"


@pytest.mark.parametrize("env,host,container", [("prod", "24.04", "26.04"), ("dev", "24.04", "26.04"),
                                                 ("baseline", "24.04", "26.04"), ("tutorial", "22.04", "22.04")])
def test_worker_ami_is_the_neuron_base_dlami_the_catalog_names_for_the_image(synth, env, host, container):
    # The host follows the catalog, not the container: the 2.33 image is Ubuntu 26.04 on the 24.04 DLAMI.
    result = synth(env)
    amis = {lt["ImageId"] for kind, lt in launch_templates(result.template_dict).items() if kind.startswith("trn")}
    assert amis == {f"resolve:ssm:/aws/service/neuron/dlami/base/ubuntu-{host}/latest/image_id"}
    assert result.config.image.endswith(f"-ubuntu{container}")


def test_root_volume_size_and_ami_follow_the_config(synth, variant):
    result = synth("prod")
    data = launch_templates(result.template_dict)["trn2.48xlarge"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == result.config.fleets["prefill"].root_volume_gib
    # EC2 resolves the parameter at launch: a new DLAMI never edits the template or replaces an instance.
    assert data["ImageId"] == "resolve:ssm:/aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id"
    assert data["BlockDeviceMappings"][0]["DeviceName"] == "/dev/sda1"
    # prod's fleets have a warm pool: their root volumes are read back at every start, so provisioned as the
    # time-to-serving model assumes; a fleet without one (dev) keeps gp3's baseline.
    assert result.config.fleets["prefill"].warm_pool is not None
    ebs = data["BlockDeviceMappings"][0]["Ebs"]
    assert (ebs["Throughput"], ebs["Iops"]) == (1000, 4000)
    dev = launch_templates(synth("dev").template_dict)["trn2.48xlarge"]["BlockDeviceMappings"][0]["Ebs"]
    assert "Throughput" not in dev and "Iops" not in dev
    _, _, raw = variant
    assert launch_templates(raw)["trn1n.32xlarge"]["ImageId"] == "ami-0123456789abcdef0"


def test_no_update_policy_replaces_serving_instances(synth):
    for group in resources(synth("prod").template_dict, "AWS::AutoScaling::AutoScalingGroup").values():
        assert "UpdatePolicy" not in group or "AutoScalingReplacingUpdate" not in group["UpdatePolicy"]
        assert "AutoScalingRollingUpdate" not in group.get("UpdatePolicy", {})


def test_control_host_keeps_its_address_and_etcd_data(synth):
    result = synth("prod")
    template = result.template_dict
    # Three etcd members, each with a retained, encrypted volume and a fixed interface of its own.
    volumes = list(resources(template, "AWS::EC2::Volume").values())
    assert len(volumes) == 3
    for volume in volumes:
        assert volume["DeletionPolicy"] == "Retain" and volume["UpdateReplacePolicy"] == "Retain"
        assert volume["Properties"]["Encrypted"] is True
        assert volume["Properties"]["AvailabilityZone"] == result.config.availability_zone
    assert len(resources(template, "AWS::EC2::NetworkInterface")) == 3
    outputs = template["Outputs"]
    (balancer,) = resources(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert balancer in str(outputs[naming.OUTPUT_ETCD_ADDRESS]["Value"])
    assert balancer in str(outputs[naming.OUTPUT_PROXY_URL]["Value"])
    control = [v for v in resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
               if "PlacementGroup" not in v["Properties"]]
    assert [(g["Properties"]["MinSize"], g["Properties"]["MaxSize"]) for g in control] == [("3", "3")]
    lt = launch_templates(template)[result.config.control_host.instance_type]
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    assert lt["ImageId"].startswith("resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023")


def test_artifacts_bucket_is_encrypted_versioned_private_tls_only_and_retained(synth):
    result = synth("dev")
    (bucket_id, bucket), = resources(result.template_dict, "AWS::S3::Bucket").items()
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(props["PublicAccessBlockConfiguration"][k] for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    result.template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})


def test_log_groups_are_named_for_operators_with_the_configured_retention(synth):
    result = synth("prod")
    groups = {json.dumps(v["Properties"].get("LogGroupName")).strip('"'): v["Properties"]["RetentionInDays"]
              for v in resources(result.template_dict, "AWS::Logs::LogGroup").values()}
    for stream in ("nodes", "containers"):
        assert groups[naming.log_group("prod", stream)] == result.config.log_retention_days


def test_the_command_history_outlives_the_stack_under_a_name_the_next_stack_does_not_reuse(synth):
    template = synth("prod").template_dict
    groups = resources(template, "AWS::Logs::LogGroup")
    (commands,) = [g for g in groups.values() if "commands" in json.dumps(g["Properties"].get("LogGroupName"))]
    assert commands["DeletionPolicy"] == commands["UpdateReplacePolicy"] == "Retain"
    # /distack/prod/commands- and the first group of the stack id's UUID: a new stack of prod gets another name.
    prefix, suffix = commands["Properties"]["LogGroupName"]["Fn::Join"][1]
    assert prefix == naming.log_group("prod", "commands-")
    uuid = suffix["Fn::Select"][1]["Fn::Split"]
    assert suffix["Fn::Select"][0] == 0 and uuid[0] == "-"
    assert uuid[1] == {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}
    # dictl finds it through the stack output, and the flow logs are retained as well.
    (logical,) = [name for name, g in groups.items() if g is commands]
    assert template["Outputs"][naming.OUTPUT_SSM_LOG_GROUP]["Value"] == {"Ref": logical}
    assert [g.get("DeletionPolicy") for g in groups.values() if "LogGroupName" not in g["Properties"]] == ["Retain"]


def test_node_roles_write_only_their_prefixes_and_read_only_their_secret(synth):
    template = synth("prod").template_dict
    puts, secrets = [], []
    for policy in resources(template, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "s3:PutObject" in actions:
                puts += [t["Fn::Join"][1][-1] for t in targets]
            if "secretsmanager:GetSecretValue" in actions:
                secrets += [str(t) for t in targets]
            assert not any(a.endswith(":*") or a == "*" for a in actions), statement
    # Each only in the writing instance's own folder (tests/test_write_scope.py has the rest).
    assert puts and all(p in {"/staging/compiled/${aws:userid}/*", "/logs/${aws:userid}/*", "/bench/${aws:userid}/*"}
                        for p in puts), puts
    # The HF token by name, the proxy's generated API key (prod names none but opens the proxy) and the etcd trust's
    # secrets (tests/test_control_plane.py holds who reads which).
    generated = resources(template, "AWS::SecretsManager::Secret")
    assert secrets and all("secret:distack/hf-token-??????" in s or s in {str({"Ref": g}) for g in generated}
                           for s in secrets)


def _may_put(statements: list[dict], key: str) -> bool:
    """Whether an Allow statement grants s3:PutObject on object KEY of the artifacts bucket (IAM's `*` wildcard)."""
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and "s3:PutObject" in actions:
            for target in targets:
                pattern = target["Fn::Join"][1][-1].lstrip("/") if isinstance(target, dict) else target
                if re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), key):
                    return True
    return False


def test_no_node_may_write_the_compiled_artifacts_workers_load_only_stage_them(synth):
    raw = synth("prod").template_dict
    key = "Llama-3.3-70B-Instruct-tp16-b8-s8192-0123456789ab"
    for role in ("WorkerRole", "ControlRole"):
        for path in ("SHA256SUMS", "model.pt"):
            assert not _may_put(_statements(raw, role), f"compiled/{key}/{path}"), role
    userid = "AROAEXAMPLEWORKER0001:i-0abc"  # the literal ${aws:userid} in the policy matches only itself here
    assert _may_put(_statements(raw, "WorkerRole"), f"staging/compiled/${{aws:userid}}/{key}/SHA256SUMS")
    assert not _may_put(_statements(raw, "WorkerRole"), f"staging/compiled/{userid}/{key}/SHA256SUMS")


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_every_instance_is_tagged_with_deployment_role_and_fleet(synth, env):
    result = synth(env)
    expected_roles = {f.role for f in result.config.fleets.values()} | {naming.ROLE_CONTROL}
    seen = set()
    for group in resources(result.template_dict, "AWS::AutoScaling::AutoScalingGroup").values():
        tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in group["Properties"]["Tags"]}
        assert tags[naming.TAG_DEPLOYMENT] == (env, True)
        role, fleet = tags[naming.TAG_ROLE][0], tags[naming.TAG_FLEET][0]
        assert tags[naming.TAG_ROLE][1] and tags[naming.TAG_FLEET][1]
        seen.add(role)
        if role != naming.ROLE_CONTROL:
            assert result.config.fleets[fleet].role == role
    assert seen == expected_roles
    for data in launch_templates(result.template_dict).values():
        kinds = {spec["ResourceType"]: {t["Key"] for t in spec["Tags"]} for spec in data["TagSpecifications"]}
        assert set(kinds) == {"instance", "volume", "network-interface"}
        assert all({naming.TAG_DEPLOYMENT, naming.TAG_ROLE, naming.TAG_FLEET} <= keys for keys in kinds.values())


def worker_groups(template: dict) -> dict[str, dict]:
    """fleet -> its Auto Scaling group resource (the control host's left out)."""
    found = {}
    for group in resources(template, "AWS::AutoScaling::AutoScalingGroup").values():
        fleet = {t["Key"]: t["Value"] for t in group["Properties"]["Tags"]}[naming.TAG_FLEET]
        if fleet != naming.ROLE_CONTROL:
            found[fleet] = group
    return found


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_fleet_sizes_follow_the_config(synth, env):
    """Fixed fleets get DesiredCapacity = count (a deploy restores it); autoscaled ones none, so a deploy never
    resets what the policy or a schedule chose, and they start at min_count."""
    result = synth(env)
    sizes = {fleet: (g["Properties"]["MinSize"], g["Properties"].get("DesiredCapacity"), g["Properties"]["MaxSize"],
                     g["CreationPolicy"]["ResourceSignal"]["Count"])
             for fleet, g in worker_groups(result.template_dict).items()}
    assert sizes == {n: (str(f.floor), None if f.elastic else str(f.count), str(f.ceiling), f.initial_size)
                     for n, f in result.config.fleets.items()}
    # dev can stop its bill with `dictl scale --count 0`; prod's fleets scale from 1 to 4.
    assert {"dev": {"colocated": ("0", "1", "1", 1)},
            "prod": {"prefill": ("1", None, "4", 1), "decode": ("1", None, "4", 1)}}.get(env, sizes) == sizes


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_no_worker_group_lacks_its_lifecycle_hooks(synth, env):
    """Every worker joins through the launch hook (ABANDON: never counted as capacity before it serves) and leaves
    through the termination hook (CONTINUE after the drain); timeouts from the time to serving and the drain."""
    result = synth(env)
    config = result.config
    for fleet, group in worker_groups(result.template_dict).items():
        hooks = {h["LifecycleHookName"]: h for h in group["Properties"]["LifecycleHookSpecificationList"]}
        serving = serving_time.estimate(config, fleet, warm=False).total_seconds
        assert hooks == {
            naming.LAUNCH_HOOK: {"LifecycleHookName": naming.LAUNCH_HOOK, "DefaultResult": "ABANDON",
                                 "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
                                 "HeartbeatTimeout": scaling_config.launch_heartbeat(serving, config.drain)},
            naming.TERMINATION_HOOK: {"LifecycleHookName": naming.TERMINATION_HOOK, "DefaultResult": "CONTINUE",
                                      "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                                      "HeartbeatTimeout": config.drain.timeout_seconds + 180}}, fleet
        assert 30 <= hooks[naming.LAUNCH_HOOK]["HeartbeatTimeout"] <= 7200
        assert hooks[naming.LAUNCH_HOOK]["HeartbeatTimeout"] >= min(serving, 7200)
        assert group["Properties"]["DefaultInstanceWarmup"] == 120
        assert "UpdatePolicy" not in group  # no shipped fleet has a schedule (tests/data/variant.yaml does)
    envs = worker_node_envs(result.template_dict)
    assert {fleet: (e["DI_LAUNCH_HOOK"], e["DI_TERMINATION_HOOK"], e["DI_DRAIN_TIMEOUT_SECONDS"])
            for fleet, e in envs.items()} == {fleet: ("di-launch", "di-termination", "600") for fleet in config.fleets}


def test_prod_scales_each_role_on_its_own_proxy_signal_with_a_warm_pool(synth):
    result = synth("prod")
    template = result.template_dict
    logical = {fleet: k for k, g in resources(template, "AWS::AutoScaling::AutoScalingGroup").items()
               for fleet in [{t["Key"]: t["Value"] for t in g["Properties"]["Tags"]}[naming.TAG_FLEET]]}
    policies = {p["Properties"]["AutoScalingGroupName"]["Ref"]: p["Properties"]
                for p in resources(template, "AWS::AutoScaling::ScalingPolicy").values()}
    for fleet, metric, target in (("prefill", "PrefillRequestsPerEndpoint", 4), ("decode", "DecodeStreamsPerEndpoint", 6)):
        policy = policies[logical[fleet]]
        assert policy["PolicyType"] == "TargetTrackingScaling"
        assert policy["TargetTrackingConfiguration"] == {
            "TargetValue": target, "DisableScaleIn": False, "CustomizedMetricSpecification": {
                "MetricName": metric, "Namespace": naming.PROXY_METRICS_NAMESPACE, "Statistic": "Average",
                "Dimensions": [{"Name": "Deployment", "Value": "prod"}, {"Name": "Role", "Value": fleet}]}}
        assert target <= result.config.model.max_num_seqs
    pools = {p["Properties"]["AutoScalingGroupName"]["Ref"]: p["Properties"]
             for p in resources(template, "AWS::AutoScaling::WarmPool").values()}
    assert pools == {logical[f]: {"AutoScalingGroupName": {"Ref": logical[f]}, "MinSize": 1,
                                  "MaxGroupPreparedCapacity": 1, "PoolState": "Stopped",
                                  "InstanceReusePolicy": {"ReuseOnScaleIn": False}} for f in ("prefill", "decode")}
    result.template.resource_count_is("AWS::AutoScaling::ScheduledAction", 0)
    # dev's colocated fleet and the benchmark environments keep a fixed size.
    for env in ("dev", "xpyd", "baseline"):
        assert not resources(synth(env).template_dict, "AWS::AutoScaling::ScalingPolicy"), env


def test_schedules_drain_and_a_capacity_block_fleet_created_empty(variant):
    config, _, raw = variant
    groups = worker_groups(raw)
    logical = {fleet: k for k, g in resources(raw, "AWS::AutoScaling::AutoScalingGroup").items()
               for fleet in [{t["Key"]: t["Value"] for t in g["Properties"]["Tags"]}[naming.TAG_FLEET]]}
    actions = sorted((a["Properties"]["AutoScalingGroupName"]["Ref"], json.dumps(a["Properties"], sort_keys=True))
                     for a in resources(raw, "AWS::AutoScaling::ScheduledAction").values())
    by_group = {}
    for ref, text in actions:
        props = json.loads(text)
        del props["AutoScalingGroupName"]
        by_group.setdefault(ref, []).append(props)
    # One-time actions in UTC (13:31+02:00 is 11:31Z), recurring ones with their zone.
    assert sorted(by_group[logical["prefill"]], key=lambda a: a["StartTime"]) == [
        {"StartTime": "2026-08-05T11:31:00Z", "MinSize": 1, "MaxSize": 1, "DesiredCapacity": 1},
        {"StartTime": "2026-08-06T10:45:00Z", "MinSize": 0, "MaxSize": 0, "DesiredCapacity": 0}]
    assert sorted(by_group[logical["decode"]], key=lambda a: a["Recurrence"]) == [
        {"Recurrence": "0 22 * * *", "TimeZone": "Europe/Berlin", "MinSize": 0, "MaxSize": 0, "DesiredCapacity": 0},
        {"Recurrence": "0 6 * * 1-5", "TimeZone": "Europe/Berlin", "MinSize": 1, "MaxSize": 2}]
    # The block fleet starts empty (nothing to wait for) until its block starts; scale-out only on decode.
    assert "CreationPolicy" not in groups["prefill"] and groups["prefill"]["Properties"]["MinSize"] == "0"
    # A deploy leaves the sizes a schedule set alone unless the template changes them.
    assert {fleet: g["UpdatePolicy"] for fleet, g in groups.items()} == {
        fleet: {"AutoScalingScheduledAction": {"IgnoreUnmodifiedGroupSizeProperties": True}} for fleet in groups}
    (policy,) = resources(raw, "AWS::AutoScaling::ScalingPolicy").values()
    assert policy["Properties"]["TargetTrackingConfiguration"]["DisableScaleIn"] is True
    hooks = {h["LifecycleHookName"]: h["HeartbeatTimeout"]
             for h in groups["decode"]["Properties"]["LifecycleHookSpecificationList"]}
    assert hooks[naming.TERMINATION_HOOK] == 900 + 180
    assert {e["DI_DRAIN_TIMEOUT_SECONDS"] for e in worker_node_envs(raw).values()} == {"900"}


def test_workers_complete_lifecycle_actions_of_their_deployment_only(synth):
    statements = _statements(synth("prod").template_dict, "WorkerRole")
    (complete,) = [s for s in statements if "autoscaling:CompleteLifecycleAction" in s["Action"]]
    assert sorted(complete["Action"]) == ["autoscaling:CompleteLifecycleAction",
                                          "autoscaling:RecordLifecycleActionHeartbeat"]
    assert complete["Condition"] == {"StringEquals": {"autoscaling:ResourceTag/di:deployment": "prod"}}
    assert json.dumps(complete["Resource"]).endswith(':autoScalingGroup:*:autoScalingGroupName/*"]]}')
    (describe,) = [s for s in statements if "autoscaling:DescribeAutoScalingInstances" in s["Action"]]
    assert describe["Resource"] == "*" and "Condition" not in describe
    # The control hosts complete their own launch hook the same way.
    control = _statements(synth("prod").template_dict, "ControlRole")
    assert [s["Condition"] for s in control if "autoscaling:CompleteLifecycleAction" in s["Action"]] == [
        complete["Condition"]]


# AWS-RunShellScript's own executionTimeout: "Maximum is 172800 (48 hours)", allowedPattern
# ([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800) (aws ssm get-document --name
# AWS-RunShellScript).
def test_document_timeouts_are_capped_at_what_aws_runshellscript_accepts(synth):
    import re

    documents = resources(synth("prod").template_dict, "AWS::SSM::Document")
    checked = 0
    for document in documents.values():
        for name, spec in (document["Properties"]["Content"].get("parameters") or {}).items():
            if "imeout" not in name:
                continue
            pattern = spec["allowedPattern"]
            assert re.match(pattern, "172800") and re.match(pattern, "3600"), name
            for above in ("172801", "172900", "180000", "999999", "1000000"):
                assert not re.match(pattern, above), (name, above)
            checked += 1
    assert checked >= 8


def test_outputs_name_what_operators_and_dictl_need(synth):
    result = synth("xpyd")
    outputs = result.template_dict["Outputs"]
    for key in (naming.OUTPUT_PROXY_URL, naming.OUTPUT_ETCD_ADDRESS, naming.OUTPUT_BUCKET,
                naming.OUTPUT_NODE_LOG_GROUP, naming.OUTPUT_CONTAINER_LOG_GROUP, naming.OUTPUT_SSM_LOG_GROUP,
                naming.OUTPUT_CONTROL_INSTANCE_GROUP, naming.fleet_output("prefill"), naming.fleet_output("decode")):
        assert key in outputs, key
    assert result.stack.stack_name == "di-xpyd"
    assert result.stack.node.id == "DiStack"  # one id for every environment (stacks/app_builder.py)


def control_env_parts(template: dict) -> list:
    """The control host's user data as the Fn::Join parts CloudFormation assembles at deploy time."""
    (data,) = [d for t, d in launch_templates(template).items() if not t.startswith("trn")]
    return data["UserData"]["Fn::Base64"]["Fn::Join"][1]


def test_distack_proxy_package_reaches_the_control_host_and_only_it(variant, synth):
    _, _, raw = variant
    parts = control_env_parts(raw)
    (at,) = [i for i, p in enumerate(parts) if isinstance(p, str) and p.endswith("DI_PROXY_PACKAGE_URL='")]
    assert parts[at + 1]["Fn::Sub"].startswith("s3://cdk-")
    assert any("DI_PROXY_PACKAGE_URL=''" in p for p in control_env_parts(synth("tutorial").template_dict)
               if isinstance(p, str))
    asset_objects = {}
    for name, policy in resources(raw, "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Action"] == "s3:GetObject":
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                asset_objects[name] = asset_objects.get(name, 0) + sum("cdk-" in json.dumps(t) for t in targets)
    # Both roles read the node scripts; only the control role also reads the proxy package and its wheelhouse.
    assert sorted((n.split("DefaultPolicy")[0], c) for n, c in asset_objects.items()) == [("ControlRole", 3),
                                                                                          ("WorkerRole", 1)]


def _statements(template: dict, role_prefix: str) -> list[dict]:
    return [statement for name, policy in resources(template, "AWS::IAM::Policy").items() if name.startswith(role_prefix)
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]]


def test_distack_proxy_metrics_may_go_to_its_own_namespace_only(variant, synth):
    _, _, raw = variant
    (metrics,) = [s for s in _statements(raw, "ControlRole") if s["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Resource"] == "*"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": naming.PROXY_METRICS_NAMESPACE}}
    # Workers publish only the CloudWatch agent's EFA counters, into their own namespace (kv_telemetry.py).
    assert [s["Condition"] for s in _statements(raw, "WorkerRole") if "cloudwatch:PutMetricData" in json.dumps(s)] \
        == [{"StringEquals": {"cloudwatch:namespace": "DiStack/Efa"}}]
    # With the 0.9.1 image's proxy the proxy publishes nothing, so only the workers' EFA statement remains.
    tutorial = json.dumps(synth("tutorial").template_dict)
    assert tutorial.count("cloudwatch:PutMetricData") == 1 and '"cloudwatch:namespace": "DiStack/Efa"' in tutorial


def test_only_the_control_host_reads_the_proxy_api_key_and_its_node_env_names_it(variant, synth):
    _, _, raw = variant
    secrets = {role: [json.dumps(s["Resource"]) for s in _statements(raw, role)
                      if s["Action"] == "secretsmanager:GetSecretValue"] for role in ("ControlRole", "WorkerRole")}
    (control_secret,) = secrets["ControlRole"]
    assert ":secret:distack/proxy-api-key-??????" in control_secret
    assert secrets["WorkerRole"] == []
    assert any("DI_PROXY_API_KEY_SECRET=distack/proxy-api-key\n" in p for p in control_env_parts(raw)
               if isinstance(p, str))
    assert "proxy-api-key" not in json.dumps(synth("prod").template_dict)


def test_private_subnets_reach_cloudwatch_metrics_only_when_the_distack_proxy_publishes_them():
    import aws_cdk as cdk
    from aws_cdk import aws_logs as logs

    from stacks.components.network import Network
    from model.config import NetworkConfig

    app = cdk.App(context=cdk_context())
    network = NetworkConfig(nat_gateway=False)
    for stack_id, publishes in (("WithMetrics", True), ("WithoutMetrics", False)):
        Network(cdk.Stack(app, stack_id, env=cdk.Environment(region="us-east-2", account="111122223333")), "Network",
                network=network, availability_zone="us-east-2a", log_retention=logs.RetentionDays.ONE_WEEK,
                metrics_endpoint=publishes)
    assembly = app.synth()

    def services(stack_id: str) -> set[str]:
        template = assembly.get_stack_by_name(stack_id).template
        return {json.dumps(v["Properties"]["ServiceName"]).split(".")[-1].strip('"]}')
                for v in resources(template, "AWS::EC2::VPCEndpoint").values()}

    assert services("WithMetrics") - services("WithoutMetrics") == {"monitoring"}
    assert {"logs", "ssm", "ssmmessages", "ec2messages"} <= services("WithoutMetrics")


def worker_node_envs(template: dict) -> dict[str, dict[str, str]]:
    """fleet -> node.env of its launch template, as bash would read it (deploy-time references as <ref>)."""
    envs = {}
    for resource in resources(template, "AWS::EC2::LaunchTemplate").values():
        data = resource["Properties"]["LaunchTemplateData"]
        tags = {t["Key"]: t["Value"] for t in data["TagSpecifications"][0]["Tags"]}
        if tags[naming.TAG_ROLE] == naming.ROLE_CONTROL:
            continue
        parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
        text = "".join(p if isinstance(p, str) else "<ref>" for p in parts)
        (node_env,) = [f["content"] for f in yaml.safe_load(text)["write_files"] if f["path"] == naming.NODE_ENV_PATH]
        envs[tags[naming.TAG_FLEET]] = dict(shlex.split(line)[0].split("=", 1) for line in node_env.splitlines())
    return envs


def test_nixl_workers_node_env_carries_the_engine_contract_with_the_recipe_values(synth):
    envs = worker_node_envs(synth("prod").template_dict)
    assert set(envs) == {"prefill", "decode"}
    for fleet, env in envs.items():
        assert {k: env[k] for k in env if k.startswith(("DI_KV_", "DI_NIXL_", "DI_MAX_", "DI_BLOCK", "DI_OPT",
                                                         "DI_NEURON", "DI_COMPILE", "DI_READY", "DI_EXECUTE"))} == {
            "DI_KV_CONNECTOR": "NixlConnector", "DI_NIXL_SIDE_CHANNEL_BASE_PORT": "5559",
            "DI_NIXL_SIDE_CHANNEL_STRIDE": "100", "DI_NIXL_BACKEND": "LIBFABRIC",
            "DI_MAX_MODEL_LEN": "16384", "DI_MAX_NUM_SEQS": "8", "DI_MAX_NUM_BATCHED_TOKENS": "8192",
            "DI_BLOCK_SIZE": "128", "DI_OPTIMIZATION_LEVEL": "2",
            "DI_NEURON_CONFIG": '{"kv_segment_size_buckets":[8192],"num_batched_tokens_buckets":[8192],'
                                '"num_seqs_buckets":[8]}',
            "DI_COMPILE_TIMEOUT_SECONDS": "2400", "DI_READY_TIMEOUT_SECONDS": "3600",
            "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": "1200"}, fleet
        assert (env["DI_ENGINE"], env["DI_PROXY"], env["DI_TENSOR_PARALLEL"], env["DI_LNC"]) == (
            "nixl", "distack", "16", "2")
        assert env["DI_IMAGE"].endswith(":0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04")
        assert env["DI_ENDPOINTS"] == " ".join(f"{fleet}:{c}:{p}" for c, p in (
            ("0-15", 8000), ("16-31", 8001), ("32-47", 8002), ("48-63", 8003)))
    legacy = worker_node_envs(synth("tutorial").template_dict)["prefill"]
    assert (legacy["DI_ENGINE"], legacy["DI_KV_BUFFER_SIZE"], legacy["DI_ENDPOINTS"]) == (
        "neuron-connector", "2e+11", "prefill:0-63:8000")
    assert "DI_KV_CONNECTOR" not in legacy


def test_summary_names_the_engine_image_and_dlami(synth):
    from model.summary import summarize

    prod = summarize(synth("prod").config, synth("prod").template_dict).splitlines()
    assert prod[0] == ("DiStack prod (stack di-prod, us-east-2/us-east-2a, engine nixl, mode disaggregated, "
                       "proxy distack)")
    assert prod[1].endswith(":0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04")
    assert prod[2].strip() == "vLLM 0.29.0, Neuron SDK 2.33.0, Python 3.14, Ubuntu 26.04; supported; trn2/trn3"
    assert prod[3] == ("  worker AMI resolve:ssm:/aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id "
                       "(Neuron base DLAMI, Ubuntu 24.04, host of the Ubuntu 26.04 image)")
    assert "  nixl: NixlConnector over NIXL LIBFABRIC" in prod[4]
    tutorial = summarize(synth("tutorial").config, synth("tutorial").template_dict).splitlines()
    assert "engine neuron-connector, mode disaggregated, proxy neuron" in tutorial[0]
    assert tutorial[1].endswith(":0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04")
    assert "Neuron SDK 2.25.1, Python 3.10, Ubuntu 22.04; legacy" in tutorial[2]
    assert tutorial[3].endswith("ubuntu-22.04/latest/image_id (Neuron base DLAMI, Ubuntu 22.04, frozen at its last "
                                "build, host of the Ubuntu 22.04 image)")
    assert "kv_buffer_size 2e+11 bytes per endpoint" in tutorial[4]


def test_an_unlisted_image_with_the_override_synthesizes_with_a_warning(tmp_path):
    import aws_cdk as cdk

    from model import images
    from stacks.app_builder import build_app
    from model.loader import load_config_file

    data = yaml.safe_load(Path(__file__).parent.parent.joinpath("config", "dev.yaml").read_text())
    tag = "0.30.0.1.3.0-neuronx-py314-sdk2.34.0-ubuntu26.04"
    data.update(image=f"{images.REPOSITORY}:{tag}", image_unlisted=True,
                worker_ami={"ssm_parameter": images.dlami_parameter("24.04")})
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(data))
    warnings = []
    config = load_config_file(path, warn=warnings.append)
    assert len(warnings) == 1 and "is not in DiStack's image catalog; accepted because image_unlisted is true" in (
        warnings[0])
    app = cdk.App(outdir=str(tmp_path / "out"), context=cdk_context(), builtin_cloud_formation_validation=False)
    stack = build_app(app, config)
    template = app.synth().get_stack_artifact(stack.artifact_id).template
    assert launch_templates(template)["trn2.48xlarge"]["ImageId"] == (
        "resolve:ssm:/aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id")
    assert worker_node_envs(template)["colocated"]["DI_IMAGE"].endswith(tag)


def test_only_the_workers_read_the_hugging_face_token(synth):
    raw = synth("prod").template_dict
    readers = {role for role in ("ControlRole", "WorkerRole") for s in _statements(raw, role)
               if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])
               and "secret:distack/hf-token-??????" in json.dumps(s["Resource"])}
    assert readers == {"WorkerRole"}
    assert not [p for p in control_env_parts(raw) if isinstance(p, str) and "DI_HF_TOKEN_SECRET" in p]
