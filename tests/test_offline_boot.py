"""What a control host reaches at boot, read from the synthesized templates: an interface endpoint for every AWS API
the node scripts and the proxy call, etcd and the legacy proxy image through the deployment's ECR pull-through cache
(and the control role pulling those repositories only), and the proxy's wheelhouse as an asset only it may read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model import image_cache, node_values
from model import wheelhouse
from tests.conftest import ROOT

SCRIPTS = ROOT / "userdata"
PROXY = ROOT / "diproxy"
# `aws SERVICE ...` (the CLI's service name) -> the VPC endpoint service names (com.amazonaws.REGION.NAME) that carry
# its calls. A service the scripts start calling that is missing here fails test_every_service_called_at_boot... with
# its name: add its endpoint to stacks/components/network.py, then here.
ENDPOINTS_OF = {
    "ec2": ("ec2",),
    "s3": ("s3",),
    "secretsmanager": ("secretsmanager",),
    "autoscaling": ("autoscaling",),
    "cloudformation": ("cloudformation",),
    "logs": ("logs",),
    "ssm": ("ssm",),
    # get-login-password is ecr.api; docker's registry traffic is ecr.dkr.
    "ecr": ("ecr.api", "ecr.dkr"),
    # boto3's "cloudwatch" client (PutMetricData) is the monitoring endpoint.
    "cloudwatch": ("monitoring",),
    "sts": ("sts",),
}
AWS_CALL = re.compile(r"(?:^|[\s|;&(`$])aws\s+([a-z][a-z0-9-]+)\s", re.MULTILINE)
BOTO3_CLIENT = re.compile(r"""\.client\(\s*["']([a-z0-9-]+)["']""")


def script_services() -> set[str]:
    """Every `aws SERVICE` a node script runs (comments left out)."""
    services = set()
    for path in SCRIPTS.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".service", ".slice", ".json"):
            text = "\n".join(line for line in path.read_text(errors="replace").splitlines()
                             if not line.lstrip().startswith("#"))
            services |= set(AWS_CALL.findall(text))
    return services


def proxy_services() -> set[str]:
    """Every boto3 client the proxy and its shipper create."""
    return {service for path in PROXY.rglob("*.py") if "testing" not in path.parts
            for service in BOTO3_CLIENT.findall(path.read_text())}


def endpoint_services(template: dict) -> set[str]:
    names = set()
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::EC2::VPCEndpoint":
            name = resource["Properties"]["ServiceName"]
            text = name if isinstance(name, str) else "".join(p for p in name["Fn::Join"][1] if isinstance(p, str))
            names.add(re.sub(r"^com\.amazonaws\.[a-z0-9-]*\.?", "", text).lstrip("."))
    return names


def test_the_scan_finds_the_calls_the_control_host_is_known_to_make():
    # Guards the scan itself: these calls are in control.sh, lib/report.sh, lib/etcd_trust.sh and the shipper.
    assert {"ec2", "s3", "secretsmanager", "autoscaling", "cloudformation", "ecr"} <= script_services()
    assert {"secretsmanager", "cloudwatch"} <= proxy_services()


@pytest.mark.parametrize("env", ["prod", "tutorial"])
def test_every_service_called_at_boot_has_a_vpc_endpoint(synth, env):
    result = synth(env)
    assert result.config.network.vpc_endpoints
    called = script_services() | (proxy_services() if result.config.runs_distack_proxy else set())
    unmapped = sorted(called - set(ENDPOINTS_OF))
    assert not unmapped, f"`aws {unmapped}` is called at boot but has no VPC endpoint mapping (see ENDPOINTS_OF)"
    present = endpoint_services(result.template_dict)
    missing = {service: endpoint for service in called for endpoint in ENDPOINTS_OF[service]
               if endpoint not in present}
    assert not missing, f"services called at boot without a VPC endpoint in {env}: {missing}"


def control_user_data(template: dict) -> str:
    (launch_template,) = [r for k, r in template["Resources"].items()
                          if r["Type"] == "AWS::EC2::LaunchTemplate" and k.startswith("ControlHost")]
    joined = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(part if isinstance(part, str) else f"<{json.dumps(part)}>" for part in joined)


def node_env_value(user_data: str, key: str) -> str:
    match = re.search(rf"^\s*{key}='?([^'\n]*)'?$", user_data, re.MULTILINE)
    assert match, key
    return match.group(1)


def control_statements(template: dict) -> list[dict]:
    return [statement for key, resource in template["Resources"].items()
            if resource["Type"] == "AWS::IAM::Policy" and key.startswith("ControlRoleDefaultPolicy")
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]]


def actions(statement: dict) -> list[str]:
    return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]


def repository_arn(prefix: str) -> dict:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":ecr:us-east-2:", {"Ref": "AWS::AccountId"},
                              f":repository/{prefix}/*"]]}


@pytest.mark.parametrize("env, upstreams", [("prod", {"quay.io"}), ("tutorial", {"quay.io", "public.ecr.aws"})])
def test_the_control_host_pulls_its_images_through_the_deployments_cache_and_may_pull_nothing_else(
        synth, env, upstreams):
    result = synth(env)
    template = result.template_dict
    rules = {r["Properties"]["UpstreamRegistryUrl"]: r["Properties"] for r in template["Resources"].values()
             if r["Type"] == "AWS::ECR::PullThroughCacheRule"}
    assert set(rules) == upstreams
    prefixes = {host: image_cache.prefix(env, image_cache.UPSTREAMS[host]) for host in upstreams}
    for host, rule in rules.items():
        assert rule["EcrRepositoryPrefix"] == prefixes[host] and 2 <= len(prefixes[host]) <= 30
        assert rule["UpstreamRegistry"] == image_cache.UPSTREAMS[host].registry
    # node.env: the cached reference, the upstream digest unchanged (one place: node_values.ETCD_IMAGE).
    user_data = control_user_data(template)
    etcd = node_env_value(user_data, "DI_ETCD_IMAGE")
    assert etcd.startswith('<{"Ref": "AWS::AccountId"}>.dkr.ecr.us-east-2.amazonaws.com/')
    assert etcd.endswith(f"/{prefixes['quay.io']}/coreos/etcd:v3.5.17@" + node_values.ETCD_IMAGE.split("@")[1])
    assert node_env_value(user_data, "DI_ETCD_UPSTREAM_IMAGE") == node_values.ETCD_IMAGE
    if "public.ecr.aws" in upstreams:
        assert f"/{prefixes['public.ecr.aws']}/neuron/" in node_env_value(user_data, "DI_IMAGE")
    # The control role: the pull and first-pull actions on exactly the cache's repositories; the token on "*".
    ecr = [s for s in control_statements(template) if any(a.startswith("ecr:") for a in actions(s))]
    scoped = [s for s in ecr if s["Resource"] != "*"]
    assert len(scoped) == 1
    assert sorted(actions(scoped[0])) == ["ecr:BatchGetImage", "ecr:BatchImportUpstreamImage",
                                          "ecr:CreateRepository", "ecr:GetDownloadUrlForLayer"]
    resources = scoped[0]["Resource"] if isinstance(scoped[0]["Resource"], list) else [scoped[0]["Resource"]]
    assert sorted(resources, key=json.dumps) == sorted(
        (repository_arn(p) for p in prefixes.values()), key=json.dumps)
    (wildcard,) = [s for s in ecr if s["Resource"] == "*"]
    assert [a for a in actions(wildcard) if a.startswith("ecr:")] == ["ecr:GetAuthorizationToken"]


def test_prefixes_are_per_deployment_and_within_ecrs_limits():
    quay = image_cache.UPSTREAMS["quay.io"]
    longest = "a" + "b-" * 9 + "c"  # 20 characters, the longest a deployment name may be (model/config.py)
    assert len(longest) == 20
    for upstream in image_cache.UPSTREAMS.values():
        assert 2 <= len(image_cache.prefix(longest, upstream)) <= image_cache.PREFIX_MAX
    assert image_cache.prefix("prod", quay) != image_cache.prefix("dev", quay)
    assert image_cache.prefix("a--b-", quay) == "di-a-b-quay"
    with pytest.raises(ValueError, match="docker.io/vllm/vllm-openai:v0.11.0: no credential-free"):
        image_cache.cached("docker.io/vllm/vllm-openai:v0.11.0", "1.dkr.ecr.r.amazonaws.com", "prod")


def test_the_proxy_wheelhouse_is_an_asset_beside_the_package_and_only_the_control_role_reads_it(synth):
    result = synth("prod")
    template = result.template_dict
    url = node_env_value(control_user_data(template), "DI_PROXY_WHEELHOUSE_URL")
    object_key = re.search(r"/([0-9a-f]{64}\.zip)", url).group(1)
    # The staged asset holds exactly the wheels of this lock's wheelhouse.
    staged = Path(result.template_path).parent / f"asset.{object_key.removesuffix('.zip')}"
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in wheelhouse.built().iterdir())
    assert all(name.endswith(".whl") for name in (p.name for p in staged.iterdir()))

    def reads(role: str) -> list[str]:
        return [json.dumps(resource) for key, r in template["Resources"].items()
                if r["Type"] == "AWS::IAM::Policy" and key.startswith(f"{role}DefaultPolicy")
                for s in r["Properties"]["PolicyDocument"]["Statement"] if s["Action"] == "s3:GetObject"
                for resource in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert [r for r in reads("ControlRole") if object_key in r] and "*" not in \
        next(r for r in reads("ControlRole") if object_key in r)
    assert not [r for r in reads("WorkerRole") if object_key in r]


def test_synth_without_the_wheelhouse_names_the_make_target(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.17.0\n")
    with pytest.raises(FileNotFoundError, match=r"is not built: run `make wheelhouse`"):
        wheelhouse.built(lock, tmp_path / "wheelhouse")


def test_the_download_asks_for_every_manylinux_tag_the_host_takes():
    command = wheelhouse.download_command(wheelhouse.LOCK, Path("/tmp/x"))
    platforms = [command[i + 1] for i, word in enumerate(command) if word == "--platform"]
    # glibc 2.34 (AL2023) down to manylinux_2_5, and the legacy aliases wheels still carry (frozenlist's manylinux1).
    assert platforms[0] == "manylinux_2_34_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert "manylinux_2_35_x86_64" not in platforms
    assert {"--require-hashes", "--only-binary"} <= set(command)
    assert command[command.index("--python-version") + 1] == "3.11"


def test_dictl_cost_prices_the_interface_endpoints_the_stack_creates(synth):
    from ops import cost

    result = synth("prod")
    interface = {name for name in endpoint_services(result.template_dict) if name != "s3"}
    assert interface == set(cost.INTERFACE_ENDPOINTS) | {cost.METRICS_ENDPOINT}
