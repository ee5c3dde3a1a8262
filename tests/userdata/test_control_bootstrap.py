"""Control host first boot with fakes: takeover of the fixed interface and etcd volume, then etcd and proxy."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from model import node_values
from tests.userdata.conftest import DISTACK_PROXY, INSTANCE_ID, ROOT, find_fleet, proxy_env_text

# The shipped config that reproduces the tutorial: legacy engine, its neuron-proxy-server on the control host.
LEGACY = find_fleet(engine="neuron-connector", role="prefill")[0]


def boot(n, **extra):
    return n.run("di-bootstrap", check=False, **extra)


def started_units(n):
    return [argv[-1] for argv in n.calls("systemctl") if argv[:2] == ["enable", "--now"]]


def prepare_volume_link(n):
    (n.root / "by-id" / "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0").touch()


def test_control_host_takes_over_interface_and_volume_then_starts_etcd_and_proxy(node):
    n = node(LEGACY)
    prepare_volume_link(n)
    proc = boot(n)
    assert proc.returncode == 0, proc.stderr
    aws = n.calls("aws")
    (attach_eni,) = [a for a in aws if a[:2] == ["ec2", "attach-network-interface"]]
    assert attach_eni[attach_eni.index("--network-interface-id") + 1] == "eni-0aaaabbbbccccdddd"
    assert attach_eni[attach_eni.index("--device-index") + 1] == "1"
    assert attach_eni[attach_eni.index("--instance-id") + 1] == INSTANCE_ID
    (attach_vol,) = [a for a in aws if a[:2] == ["ec2", "attach-volume"]]
    assert attach_vol[attach_vol.index("--volume-id") + 1] == "vol-0123456789abcdef0"
    # A blank volume is formatted once, mounted by UUID, and recorded in fstab with nofail.
    assert len(n.calls("mkfs.ext4")) == 1
    assert (n.root / "etcd" / "data").is_dir()
    assert (n.root / "etc" / "fstab").read_text() == f"UUID=1111-2222-uuid {n.root / 'etcd'} ext4 defaults,nofail 0 2\n"
    # etcd and the legacy proxy's image come from the deployment's ECR pull-through cache, same tag and digest as
    # upstream, each pull after a docker login to that registry.
    registry = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
    assert [a for a in n.calls("docker") if a[:1] in (["login"], ["pull"])] == [
        ["login", "--username", "AWS", "--password-stdin", registry],
        ["pull", f"{registry}/di-{LEGACY}-quay/" + node_values.ETCD_IMAGE.removeprefix("quay.io/")],
        ["login", "--username", "AWS", "--password-stdin", registry],
        ["pull", f"{registry}/di-{LEGACY}-ecrp/neuron/pytorch-inference-vllm-neuronx:"
                 "0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"]]
    assert started_units(n) == ["docker", "di-etcd.service", "di-proxy.service"]
    assert sorted(p.name for p in (n.root / "systemd").iterdir()) == ["di-etcd.service", "di-proxy.service"]
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "SUCCESS"
    assert signal[signal.index("--logical-resource-id") + 1] == "ControlHostGroup"


def test_a_volume_with_a_filesystem_is_never_reformatted_and_fstab_not_duplicated(node):
    n = node(LEGACY)
    prepare_volume_link(n)
    n.set("volume-formatted")
    (n.root / "etc" / "fstab").write_text(f"UUID=1111-2222-uuid {n.root / 'etcd'} ext4 defaults,nofail 0 2\n")
    assert boot(n).returncode == 0
    assert n.calls("mkfs.ext4") == []
    assert len((n.root / "etc" / "fstab").read_text().splitlines()) == 1


def test_unmounted_volume_is_mounted_by_uuid(node):
    n = node(LEGACY)
    prepare_volume_link(n)
    (n.state / "all-mounted").unlink()
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/control.sh && load_node_env && attach_etcd_volume"],
                   env=n.env, check=True)
    assert n.calls("mount") == [["UUID=1111-2222-uuid", str(n.root / "etcd")]]


def test_interface_held_by_the_old_host_fails_with_a_reason_after_the_wait(node):
    n = node(LEGACY)
    prepare_volume_link(n)
    n.set("eni-elsewhere", "i-0oldhost")
    # The fake answers the same on every poll: a zero bound gives up after one attempt instead of spinning a second.
    proc = boot(n, ATTACH_WAIT_SECONDS="0")
    assert proc.returncode != 0
    assert "cannot attach network interface eni-0aaaabbbbccccdddd" in proc.stderr
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"
    assert started_units(n) == ["docker"]


def test_distack_proxy_without_its_package_fails_loudly(node):
    n = node(LEGACY)
    prepare_volume_link(n)
    n.override(**DISTACK_PROXY)
    proc = boot(n)
    assert proc.returncode != 0
    assert "DI_PROXY=distack but node.env has no DI_PROXY_PACKAGE_URL" in proc.stderr
    assert started_units(n) == ["docker", "di-etcd.service"]
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"


INSTALLER = """#!/usr/bin/env bash
# Stands in for diproxy/deploy/install.sh: records how it was called, installs the units it would install.
printf '%s\\n' "$*" "PROXY_PYTHON=$PROXY_PYTHON" "PROXY_START=$PROXY_START" "PROXY_ENV_FILE=$PROXY_ENV_FILE" \\
  "PROXY_WHEELHOUSE=$PROXY_WHEELHOUSE" >"$0.calls"
for unit in distack-proxy.service distack-proxy-shipper.service; do
  install -D -m 0644 "$1/diproxy/deploy/$unit" "$PROXY_UNIT_DIR/$unit"
done
"""


def boot_with_distack_proxy(n, tmp_path, proxy_env: str | None = "", **extra):
    """Boot the control host with proxy: distack, its package in fake S3, INSTALLER standing in for install.sh, and
    proxy.env as user data wrote it (PROXY_ENV, or none at all when None)."""
    prepare_volume_link(n)
    if proxy_env is not None:
        (tmp_path / "proxy.env").write_text(proxy_env or "DIPROXY_MODE=di\n")
    package = tmp_path / "diproxy.zip"
    shutil.make_archive(str(package.with_suffix("")), "zip", root_dir=ROOT / "diproxy")
    (n.state / "s3-object").write_bytes(package.read_bytes())
    (tmp_path / "install.sh").write_text(INSTALLER)
    n.override(**DISTACK_PROXY, DI_PROXY_PACKAGE_URL="s3://cdk-assets/proxy.zip",
               DI_PROXY_WHEELHOUSE_URL="s3://cdk-assets/wheelhouse.zip")
    return boot(n, DI_PROXY_INSTALLER=str(tmp_path / "install.sh"), DI_PROXY_ENV=str(tmp_path / "proxy.env"),
                DI_PROXY_PYTHON="python3", DI_PROXY_SRC=str(tmp_path / "proxy-src"), PROXY_WAIT_SLEEP="0", **extra)


def test_distack_proxy_is_installed_from_its_package_and_started_with_the_proxy_env_user_data_wrote(node, tmp_path):
    n = node("prod")
    rendered = proxy_env_text("prod")
    proc = boot_with_distack_proxy(n, tmp_path, rendered)
    assert proc.returncode == 0, proc.stderr
    installer, proxy_env, source = tmp_path / "install.sh", tmp_path / "proxy.env", tmp_path / "proxy-src"
    (download,) = [a for a in n.calls("aws") if a[:2] == ["s3", "cp"] and "s3://cdk-assets/proxy.zip" in a]
    assert Path(download[-1]).parent == source
    assert (source / "diproxy" / "__main__.py").exists()
    # The wheelhouse asset comes from S3 beside the package and install.sh takes its wheels only (no index).
    (wheels,) = [a for a in n.calls("aws") if a[:2] == ["s3", "cp"] and "s3://cdk-assets/wheelhouse.zip" in a]
    assert Path(wheels[-1]) == source / "wheelhouse.zip"
    assert installer.with_name("install.sh.calls").read_text().splitlines() == [
        str(source), "PROXY_PYTHON=python3", "PROXY_START=no", f"PROXY_ENV_FILE={proxy_env}",
        f"PROXY_WHEELHOUSE={source / 'wheelhouse'}"]
    # The control host installs the file as the synth wrote it.
    assert proxy_env.read_text() == rendered
    # The settings the shipper reads from that file are complete: it parses them without a flag.
    from diproxy.shipper.settings import parse_settings
    env = dict(shlex.split(line)[0].split("=", 1) for line in proxy_env.read_text().splitlines())
    shipper = parse_settings([], env=env)
    assert (shipper.deployment, shipper.namespace, shipper.metrics_url, shipper.region) == (
        "prod", "DiStack/Proxy", "http://127.0.0.1:8000/metrics", "us-east-2")
    assert started_units(n) == ["docker", "di-etcd.service", "distack-proxy.service", "distack-proxy-shipper.service"]
    assert "di-proxy.service" not in [p.name for p in (n.root / "systemd").iterdir()]


def test_distack_proxy_without_the_proxy_env_from_user_data_fails_loudly(node, tmp_path):
    n = node("prod")
    proc = boot_with_distack_proxy(n, tmp_path, None)
    assert proc.returncode != 0
    assert f"there is no {tmp_path / 'proxy.env'} (user data writes it with node.env)" in proc.stderr
    assert started_units(n) == ["docker", "di-etcd.service"]


def test_distack_proxy_reads_its_api_key_secret_and_a_proxy_that_never_serves_fails_the_boot(node, tmp_path):
    n = node("prod")
    n.override(DI_PROXY_API_KEY_SECRET="distack/proxy-api-key")
    n.set("health-8000", "000")  # the unit started, but the proxy exits at once (say, the secret is unreadable)
    proc = boot_with_distack_proxy(n, tmp_path, PROXY_WAIT_SECONDS="0")
    assert proc.returncode != 0
    assert "distack-proxy.service does not answer /health after 0s: journalctl -u distack-proxy" in proc.stderr
    # The proxy reads the secret itself: the boot script never fetches the key.
    assert not [a for a in n.calls("aws") if a[:1] == ["secretsmanager"] and "distack/proxy-api-key" in a]
    assert started_units(n) == ["docker", "di-etcd.service", "distack-proxy.service"]
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"


def test_standard_mode_control_host_balances_registered_endpoints_with_the_distack_proxy(node, tmp_path):
    n = node("baseline")
    assert n.values["DI_PROXY"] == "distack"
    proc = boot_with_distack_proxy(n, tmp_path, proxy_env_text("baseline"))
    assert proc.returncode == 0, proc.stderr
    settings = dict(shlex.split(line)[0].split("=", 1) for line in (tmp_path / "proxy.env").read_text().splitlines())
    assert (settings["DIPROXY_MODE"], settings["DIPROXY_ETCD"]) == ("standard", "10.42.0.10:8989")
    from diproxy.config import parse_settings
    proxy = parse_settings([], env=settings)
    assert (proxy.mode, proxy.endpoints, proxy.etcd_prefix) == ("standard", (), "/workers/")
    assert started_units(n) == ["docker", "di-etcd.service", "distack-proxy.service", "distack-proxy-shipper.service"]


def test_docker_is_installed_with_dnf_when_missing(node):
    n = node(LEGACY, fakes=["dnf", "systemctl"])
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/control.sh && install_docker"], env=n.env, check=True)
    assert n.calls("dnf") == [["install", "-y", "-q", "docker"]]


def test_a_node_env_without_the_wheelhouse_fails_before_any_download(node, tmp_path):
    n = node("prod")
    prepare_volume_link(n)
    (tmp_path / "proxy.env").write_text("DIPROXY_MODE=di\n")
    (tmp_path / "install.sh").write_text(INSTALLER)
    n.override(**DISTACK_PROXY, DI_PROXY_PACKAGE_URL="s3://cdk-assets/proxy.zip", DI_PROXY_WHEELHOUSE_URL="")
    proc = boot(n, DI_PROXY_INSTALLER=str(tmp_path / "install.sh"), DI_PROXY_ENV=str(tmp_path / "proxy.env"),
                DI_PROXY_PYTHON="python3", DI_PROXY_SRC=str(tmp_path / "proxy-src"))
    assert proc.returncode != 0
    assert "DI_PROXY=distack but node.env has no DI_PROXY_WHEELHOUSE_URL" in proc.stderr
    assert not (tmp_path / "install.sh.calls").exists()


def test_docker_logs_in_to_the_cache_registry_with_the_password_on_stdin(node):
    n = node("prod")
    prepare_volume_link(n)
    boot(n)  # etcd starts; the proxy step fails later here (no package in fake S3), which this test leaves aside
    assert ["pull", n.values["DI_ETCD_IMAGE"]] in n.calls("docker")
    logins = [a for a in n.calls("docker") if a[:1] == ["login"]]
    assert logins and all(a == ["login", "--username", "AWS", "--password-stdin", n.values["DI_ETCD_IMAGE"].split("/")[0]]
                          for a in logins)
    assert (n.state / "docker-login-stdin").read_text() == "fake-ecr-password\n"
    assert not [c for c in n.calls() if "fake-ecr-password" in c]
    assert ["ecr", "get-login-password", "--region", "us-east-2"] in n.calls("aws")


def test_a_failed_pull_through_the_cache_names_the_upstream_image_and_how_to_check_it(node):
    n = node("prod")
    prepare_volume_link(n)
    n.set("docker-pull-fails", "99")
    proc = boot(n)
    assert proc.returncode != 0
    upstream = node_values.ETCD_IMAGE
    assert f"cannot pull {n.values['DI_ETCD_IMAGE']}, the deployment's ECR pull-through cache of {upstream}" \
        in proc.stderr
    assert f"docker buildx imagetools inspect {upstream.split('@')[0]}" in proc.stderr
    assert "NAT route" in proc.stderr
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "FAILURE"


def test_a_failed_registry_login_stops_the_boot_before_any_pull(node):
    n = node("prod")
    prepare_volume_link(n)
    n.set("docker-login-fails")
    proc = boot(n)
    assert proc.returncode != 0
    assert f"cannot log in to the registry of {n.values['DI_ETCD_IMAGE']}" in proc.stderr
    assert not [a for a in n.calls("docker") if a[:1] == ["pull"]]
