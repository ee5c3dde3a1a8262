"""Rendered user data: valid cloud-config, under EC2's 16 KB for every shipped config, node.env that bash reads
back exactly, wired to the scripts asset and to the group's CreationPolicy."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from stacks import userdata
from tests.conftest import SHIPPED_ENVS
from tests.tools import needs
from tests.userdata.conftest import SCRIPTS, rendered_values

# Longest realistic values for what CloudFormation fills in at deploy time.
DEPLOY_TIME = {
    "Ref:ArtifactsBucket": "di-" + "x" * 60,
    "Ref:ControlStateNetworkInterface": "eni-0123456789abcdef0",
    "Ref:ControlStateEtcdVolume": "vol-0123456789abcdef0",
    "Ref:ArtifactsNodesLogGroup": "/distack/" + "n" * 20 + "/nodes",
    "Ref:ArtifactsContainersLogGroup": "/distack/" + "n" * 20 + "/containers",
    "GetAtt:ControlStateNetworkInterface": "255.255.255.255",
    # The generated API key's ARN and the load balancer's DNS name (the longest each can be).
    "Ref:EtcdTrustCa": "arn:aws:secretsmanager:us-east-2:123456789012:secret:EtcdTrustCa" + "x" * 40 + "-abcdef",
    "Ref:EtcdTrustRegistrar": "arn:aws:secretsmanager:us-east-2:123456789012:secret:EtcdTrustRegistrar" + "x" * 40
                              + "-abcdef",
    "Ref:EdgeApiKey": "arn:aws:secretsmanager:us-east-2:123456789012:secret:EdgeApiKey" + "x" * 40 + "-abcdef",
    # The account of the deployment's private registry (its ECR pull-through cache, model/image_cache.py).
    "Ref:AWS::AccountId": "123456789012",
    "GetAtt:EdgeLoadBalancer": "internal-di-prod-EdgeL-" + "x" * 9 + "-0123456789.elb.us-east-2.amazonaws.com",
}


def resolve(part, template) -> str:
    """One Fn::Join part as the deployed text (longest plausible value for each reference)."""
    if isinstance(part, str):
        return part
    if "Ref" in part or "Fn::GetAtt" in part:
        kind, target = ("Ref", part["Ref"]) if "Ref" in part else ("GetAtt", part["Fn::GetAtt"][0])
        for prefix, value in DEPLOY_TIME.items():
            if prefix.startswith(f"{kind}:") and target.startswith(prefix.split(":", 1)[1]):
                return value
        raise AssertionError(f"unexpected reference in user data: {part}")
    if "Fn::Sub" in part:
        return part["Fn::Sub"].replace("${AWS::AccountId}", "123456789012")
    raise AssertionError(f"unexpected intrinsic in user data: {part}")


def deployed_user_data(template: dict) -> dict[str, str]:
    """Launch template logical id -> user data text as EC2 will receive it."""
    out = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::EC2::LaunchTemplate":
            joined = resource["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
            parts = joined["Fn::Join"][1] if isinstance(joined, dict) else [joined]
            out[logical_id] = "".join(resolve(p, template) for p in parts)
    return out


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_every_node_user_data_fits_in_16_kb(synth, env):
    rendered = deployed_user_data(synth(env).template_dict)
    assert len(rendered) == len(synth(env).config.fleets) + 1
    for logical_id, text in rendered.items():
        # The limit applies to the raw text; staying under it after base64 too leaves room for growth.
        assert len(base64.b64encode(text.encode())) < userdata.USER_DATA_LIMIT_BYTES, logical_id


# What `cloud-init schema --config-file F` runs (cloudinit/config/schema.py handle_schema_args: the header check, the
# YAML load and the JSON-schema validation of validate_cloudconfig_file), for every file in one interpreter instead of
# one ~0.5 s process per file. cloud-init's own Python runs it (the one in its script's #! line).
VALIDATE_ALL = """
import sys
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_file
schema = get_schema()
failed = 0
for path in sys.argv[1:]:
    try:
        validate_cloudconfig_file(path, schema)
    except SchemaValidationError as error:
        failed += 1
        print(f"{path}: {error}")
sys.exit(1 if failed else 0)
"""


@needs("cloud-init")
def test_every_node_user_data_is_valid_cloud_config(synth, tmp_path):
    paths = []
    for env in SHIPPED_ENVS:
        for logical_id, text in deployed_user_data(synth(env).template_dict).items():
            paths.append(tmp_path / f"{env}-{logical_id}.yaml")
            paths[-1].write_text(text)
    python = Path(shutil.which("cloud-init")).read_text().splitlines()[0].removeprefix("#!").split()
    proc = subprocess.run([*python, "-c", VALIDATE_ALL, *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The same check finds a broken file (a key cloud-init's schema does not allow in write_files).
    broken = tmp_path / "broken.yaml"
    broken.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    permisions: '0600'\n")
    proc = subprocess.run([*python, "-c", VALIDATE_ALL, str(broken)], capture_output=True, text=True)
    assert proc.returncode == 1 and "permisions" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_each_group_awaits_one_signal_per_instance_and_its_nodes_name_it(synth, env):
    result = synth(env)
    template = result.template_dict
    timeout = f"PT{result.config.bootstrap.timeout_minutes}M"
    groups = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"}
    named = {}
    for text in deployed_user_data(template).values():
        node_env = next(f["content"] for f in yaml.safe_load(text)["write_files"] if f["path"] == "/etc/di/node.env")
        named[re.search(r"^DI_SIGNAL_RESOURCE='?([A-Za-z0-9]+)'?$", node_env, re.M).group(1)] = node_env
    assert set(named) == set(groups)
    for logical_id, group in groups.items():
        # The size the group is created with: its desired capacity, or for a fleet that sizes itself (no
        # DesiredCapacity in the template) its MinSize; a group created empty waits for nothing.
        size = int(group["Properties"].get("DesiredCapacity", group["Properties"]["MinSize"]))
        if size == 0:
            assert "CreationPolicy" not in group, logical_id
            continue
        assert group["CreationPolicy"]["ResourceSignal"] == {"Count": size, "Timeout": timeout}


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_node_env_reads_back_in_bash_exactly(env, tmp_path):
    config_fleets = __import__("model.loader", fromlist=["x"]).load_environment(env).fleets
    for fleet in [None, *config_fleets]:
        values = rendered_values(env, fleet)
        text = next(f["content"] for f in yaml.safe_load(userdata.render(values))["write_files"]
                    if f["path"] == "/etc/di/node.env")
        path = tmp_path / "node.env"
        path.write_text(text)
        out = subprocess.run(["bash", "-c", f'set -a; . "{path}"; for k in "${{!DI_@}}"; do '
                              'printf "%s=%s\\0" "$k" "${!k}"; done'], capture_output=True, text=True, check=True)
        back = dict(item.split("=", 1) for item in out.stdout.split("\0") if item)
        assert back == values


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_worker_node_env_carries_the_catalog_facts_the_scripts_use(env):
    # The node scripts never read a fact from an instance type's name (test_static_checks); these come from the catalog.
    from model import catalog
    from model.loader import load_environment

    for name, fleet in load_environment(env).fleets.items():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        values = rendered_values(env, name)
        assert values["DI_LNC_APPLIES"] == ("1" if itype.family in ("trn2", "trn3") else "0"), (env, name)
        assert values["DI_S3_TARGET_BANDWIDTH"] == itype.s3_target_bandwidth, (env, name)
        assert values["DI_EXPECTED_EFA_INTERFACES"] == str(itype.efa_interfaces), (env, name)


def test_the_catalog_gives_the_crt_target_and_lnc_as_the_node_scripts_did():
    # What userdata/lib.sh s3_target_bandwidth and neuron.sh lnc_applies derived from the type's name, before the
    # catalog held them.
    from model import catalog

    named = {"trn2.48xlarge": ("400Gb/s", True), "trn1.32xlarge": ("600Gb/s", False),
             "trn1n.32xlarge": ("800Gb/s", False)}
    for name, itype in catalog.WORKER_TYPES.items():
        assert (itype.s3_target_bandwidth, itype.lnc_applies) == named.get(name, ("", False)), name


def test_scripts_asset_ships_the_whole_userdata_tree(synth):
    result = synth("dev")
    assembly = result.template_path.parent
    (url,) = {p for t in deployed_user_data(result.template_dict).values()
              for p in re.findall(r"DI_SCRIPTS_URL='?(s3://[^'\n]+)", t)}
    asset_hash = url.rsplit("/", 1)[1].removesuffix(".zip")
    staged = assembly / f"asset.{asset_hash}"
    assert staged.is_dir()
    shipped = {p.relative_to(SCRIPTS) for p in SCRIPTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and not p.name.startswith(".")}
    assert {p.relative_to(staged) for p in staged.rglob("*") if p.is_file()} == shipped


def test_node_roles_read_exactly_the_asset_object_and_signal_only_this_stack(synth):
    template = synth("dev").template_dict
    for role in ("WorkerRole", "ControlRole"):
        policy = next(r for k, r in template["Resources"].items()
                      if r["Type"] == "AWS::IAM::Policy" and k.startswith(f"{role}DefaultPolicy"))
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        signal = [s for s in statements if s["Action"] == "cloudformation:SignalResource"]
        assert signal == [{"Action": "cloudformation:SignalResource", "Effect": "Allow",
                           "Resource": {"Ref": "AWS::StackId"}}]
        reads = [r for s in statements if s["Action"] == "s3:GetObject"
                 for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
        assets = [r for r in reads if "cdk-hnb659fds-assets" in str(r)]
        # Workers read the scripts; a control host with the DiStack proxy also reads the proxy's package and its
        # wheelhouse.
        assert len(assets) == (1 if role == "WorkerRole" else 1 + 2 * (template_proxy(template) == "distack"))
        for asset in assets:
            parts = asset["Fn::Join"][1]
            assert parts[-1].endswith(".zip") and "*" not in str(parts)


def template_proxy(template) -> str:
    return "distack" if "DI_PROXY=distack" in str(template) else "neuron"


def test_boot_stub_fetches_unpacks_and_hands_over_to_the_bootstrap(node, tmp_path):
    n = node("dev", "colocated")
    archive = tmp_path / "scripts.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # like the CDK asset: no executable bits kept
        for path in SCRIPTS.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(SCRIPTS))
    shutil.copy(archive, n.state / "s3-object")
    home = tmp_path / "opt-di"
    (tmp_path / "boot-tmp").mkdir()
    proc = n.run("boot.sh", check=False, DI_HOME=str(home), DI_BOOT_TMP=str(tmp_path / "boot-tmp"))
    assert proc.returncode == 0, proc.stderr
    (cp,) = [a for a in n.calls("aws") if a[:2] == ["s3", "cp"]]
    assert cp[-2] == "s3://cdk-hnb659fds-assets-123456789012-us-east-2/0123abcd.zip"
    assert (home / "di-ready").stat().st_mode & 0o111 and (home / "units" / "di-vllm@.service").is_file()
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "SUCCESS"


def test_boot_stub_reports_a_failed_download(node, tmp_path):
    n = node("dev", "colocated")
    n.set("s3-cp-fails")
    (tmp_path / "boot-tmp").mkdir()
    proc = n.run("boot.sh", check=False, DI_HOME=str(tmp_path / "opt-di"), DI_BOOT_TMP=str(tmp_path / "boot-tmp"))
    assert proc.returncode == 1 and "could not fetch node scripts" in proc.stderr
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"
    assert signal[signal.index("--unique-id") + 1] == "i-0123456789abcdef0:scripts-download-failed"
    assert len([c for c in n.calls("aws") if c[:2] == ["s3", "cp"]]) == 5, "the download is tried five times"
