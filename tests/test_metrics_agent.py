"""userdata/metrics-agent.sh run with fakes on PATH: it installs the pinned, signature-checked CloudWatch agent for
the node's OS, starts neuron-monitor's exporter on workers, writes the generated scrape configuration with the
instance's ID, and starts the agent from this node kind's SSM parameter; any failure is reported, never half done."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from model import naming, node_values
from model.loader import load_environment
from model.observability import agent_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "userdata" / "metrics-agent.sh"
INSTANCE_ID = "i-0fedcba9876543210"
FINGERPRINT = "937616F3450B7D806CBD9725D58167303B789C72"
REFS = node_values.DeploymentRefs(stack_name="di-prod", control_address="10.0.0.10", bucket_name="bucket",
                                  node_log_group="/distack/prod/nodes", container_log_group="/distack/prod/containers")

# One fake for every command: logs its name and argv (unit separator between words) and answers from $STATE.
FAKE = r"""#!/bin/bash
name=${0##*/}
(IFS=$'\x1f'; printf '%s\x1f%s\n' "$name" "$*") >>"$STATE/calls"
out=""; prev=""
for arg in "$@"; do [[ $prev == -o ]] && out=$arg; prev=$arg; done
case $name in
  curl)
    [[ -e $STATE/download-fails ]] && exit 22
    [[ -n $out ]] && printf 'bytes of %s\n' "${*: -1}" >"$out" ;;
  gpg)
    if [[ " $* " == *" --show-keys "* ]]; then printf 'pub:-:2048:1:D58167303B789C72:::\nfpr:::::::::%s:\n' "$(cat "$STATE/fingerprint")"; fi
    if [[ " $* " == *" --verify "* && -e $STATE/bad-signature ]]; then exit 1; fi ;;
  dpkg | dnf)
    mkdir -p "$CWAGENT_HOME/bin"
    printf '%s\n' "$VERSION" >"$CWAGENT_HOME/bin/CWAGENT_VERSION"
    ln -sf "$0" "$CWAGENT_HOME/bin/amazon-cloudwatch-agent-ctl" ;;
  aws)
    [[ $1 == ssm ]] && cat "$STATE/scrape" ;;
  python3)
    [[ $* == *prometheus_client* ]] || exec /usr/bin/python3 "$@"
    [[ -e $STATE/prometheus-installed ]] || exit 1 ;;
  apt-get) : >"$STATE/prometheus-installed" ;;
esac
exit 0
"""


def run_agent(tmp_path: Path, env: str, fleet: str | None, *, al2023: bool = False,
              state: tuple[str, ...] = (), installed: str = "") -> tuple[subprocess.CompletedProcess, list[list[str]], Path]:
    """Run the script as node FLEET of ENV (None: the control host) would; returns the result, calls, node root.
    INSTALLED: the version an agent already on the node reports in bin/CWAGENT_VERSION."""
    config = load_environment(env)
    values = (node_values.worker_values(config, fleet, REFS) if fleet else
              node_values.control_values(config, REFS, network_interface_id="eni-1", etcd_volume_id="vol-1"))
    files = agent_config.worker_agent(config, fleet) if fleet else agent_config.control_agent(config)
    bin_dir, state_dir, neuron = tmp_path / "bin", tmp_path / "state", tmp_path / "neuron"
    for d in (bin_dir, state_dir, neuron, tmp_path / "run", tmp_path / "systemd"):
        d.mkdir()
    fake = tmp_path / "fake"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    for name in ("curl", "gpg", "aws", "python3", "apt-get", "systemctl", "dnf" if al2023 else "dpkg"):
        (bin_dir / name).symlink_to(fake)
    (neuron / "neuron-monitor").write_text("")
    (neuron / "neuron-monitor").chmod(0o755)
    (neuron / "neuron-monitor-prometheus.py").write_text("")
    (state_dir / "scrape").write_text(files.scrape)
    (state_dir / "fingerprint").write_text(FINGERPRINT)
    for flag in state:
        name, _, value = flag.partition("=")
        (state_dir / name).write_text(value)
    if installed:
        (tmp_path / "cwagent" / "bin").mkdir(parents=True)
        (tmp_path / "cwagent" / "bin" / "CWAGENT_VERSION").write_text(installed + "\n")
        (tmp_path / "cwagent" / "bin" / "amazon-cloudwatch-agent-ctl").symlink_to(fake)
    node_env = tmp_path / "node.env"
    node_env.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(state_dir), "VERSION": "1.300071.0",
        "CWAGENT_HOME": str(tmp_path / "cwagent"), "DI_CWAGENT_HOME": str(tmp_path / "cwagent"),
        "DI_NODE_ENV": str(node_env), "DI_OVERRIDE_ENV": str(tmp_path / "absent"), "DI_RUN_DIR": str(tmp_path / "run"),
        "DI_METRICS_DIR": str(tmp_path / "metrics"), "DI_NEURON_BIN": str(neuron), "DI_HOME": str(ROOT / "userdata"),
        "DI_SYSTEMD_DIR": str(tmp_path / "systemd"), "DI_INSTANCE_ID": INSTANCE_ID, "RETRY_SLEEP": "0",
        "RETRY_ATTEMPTS": "2"})
    lines = (state_dir / "calls").read_text().splitlines() if (state_dir / "calls").exists() else []
    return proc, [line.split("\x1f") for line in lines], tmp_path


def test_worker_installs_the_signed_deb_starts_the_exporter_and_the_agent_with_its_fleets_configuration(tmp_path):
    proc, calls, root = run_agent(tmp_path, "prod", "decode")
    assert proc.returncode == 0, proc.stderr
    base = "https://amazoncloudwatch-agent-us-east-2.s3.us-east-2.amazonaws.com"
    assert [c[-1] for c in calls if c[0] == "curl"] == [
        f"{base}/ubuntu/amd64/1.300071.0/amazon-cloudwatch-agent.deb",
        f"{base}/ubuntu/amd64/1.300071.0/amazon-cloudwatch-agent.deb.sig",
        f"{base}/assets/amazon-cloudwatch-agent.gpg"]
    gpg = [c for c in calls if c[0] == "gpg"]
    assert "--verify" in gpg[-1] and gpg[-1][-2].endswith(".deb.sig") and gpg[-1][-1].endswith(".deb")
    # Installed only after the signature verified.
    assert [c[0] for c in calls].index("dpkg") > [c[0] for c in calls].index("gpg") + 2
    assert ["systemctl", "enable", "--now", "di-neuron-monitor.service"] in calls
    assert (root / "systemd" / "di-neuron-monitor.service").exists()
    exporter = dict(line.split("=", 1) for line in (root / "metrics" / "neuron-monitor.env").read_text().split())
    assert exporter["DI_NEURON_MONITOR_PORT"] == str(naming.NEURON_MONITOR_PORT)
    # prometheus_client was missing from the host's Python: Ubuntu's package brought it.
    assert any(c[0] == "apt-get" and "python3-prometheus-client" in c for c in calls)
    scrape = yaml.safe_load((root / "metrics" / "prometheus.yaml").read_text())
    (ssm,) = [c for c in calls if c[0] == "aws" and c[1:3] == ["ssm", "get-parameter"]]
    assert ssm[ssm.index("--name") + 1] == naming.metrics_agent_parameter("prod", "decode", "scrape")
    labels = [t["labels"] for job in scrape["scrape_configs"] for t in job["static_configs"]]
    assert {lab["InstanceId"] for lab in labels} == {INSTANCE_ID}
    assert {t["targets"][0] for job in scrape["scrape_configs"] for t in job["static_configs"]} >= {
        "127.0.0.1:8000", "127.0.0.1:8003", f"127.0.0.1:{naming.NEURON_MONITOR_PORT}"}
    (ctl,) = [c for c in calls if c[0] == "amazon-cloudwatch-agent-ctl"]
    assert ctl[1:] == ["-a", "fetch-config", "-m", "ec2", "-s", "-c",
                       "ssm:" + naming.metrics_agent_parameter("prod", "decode", "agent")]


def test_control_host_installs_the_rpm_with_dnf_and_runs_no_neuron_exporter(tmp_path):
    proc, calls, root = run_agent(tmp_path, "prod", None, al2023=True)
    assert proc.returncode == 0, proc.stderr
    (dnf,) = [c for c in calls if c[0] == "dnf"]
    assert dnf[-1].endswith("/amazon-cloudwatch-agent.rpm") and dnf[1] == "install"
    assert "amazon_linux/amd64/1.300071.0/amazon-cloudwatch-agent.rpm" in [c for c in calls if c[0] == "curl"][0][-1]
    assert not [c for c in calls if c[0] == "systemctl"]
    (ctl,) = [c for c in calls if c[0] == "amazon-cloudwatch-agent-ctl"]
    assert ctl[-1] == "ssm:/distack/prod/metrics-agent/control/agent"
    # etcd's own loopback metrics listener: the client port needs a client certificate.
    assert "127.0.0.1:8990" in (root / "metrics" / "prometheus.yaml").read_text()


@pytest.mark.parametrize("state, reason", [
    (("fingerprint=0000000000000000000000000000000000000000",), "signing key has fingerprint '0000"),
    (("bad-signature",), "signature does not verify; not installed"),
    (("download-fails",), "cannot download amazon-cloudwatch-agent 1.300071.0"),
])
def test_an_unverified_or_missing_package_is_never_installed_and_the_failure_is_reported(tmp_path, state, reason):
    proc, calls, _ = run_agent(tmp_path, "prod", "prefill", state=state)
    assert proc.returncode == 1
    assert reason in proc.stderr
    assert not [c for c in calls if c[0] in ("dpkg", "systemctl", "amazon-cloudwatch-agent-ctl")]
    (event,) = [c for c in calls if c[0] == "aws" and c[1:3] == ["logs", "put-log-events"]]
    assert "metrics agent failed: " in event[-1] and "/distack/prod/nodes" in event


@pytest.mark.parametrize("installed, downloads", [
    ("1.300071.0b1889", False),  # the pinned release as a real build reports it, with its build number
    ("1.300071.0", False),
    ("1.300070.2b1850", True),  # an older release
    ("1.300071.01b2", True),  # another release that only starts like the pinned one
])
def test_an_agent_already_installed_is_kept_when_it_is_the_pinned_release_whatever_its_build(
        tmp_path, installed, downloads):
    proc, calls, _ = run_agent(tmp_path, "prod", None, al2023=True, installed=installed)
    assert proc.returncode == 0, proc.stderr
    assert bool([c for c in calls if c[0] == "curl"]) is downloads
    assert bool([c for c in calls if c[0] == "dnf"]) is downloads
    assert (f"amazon-cloudwatch-agent {installed} already installed" in proc.stderr) is not downloads
    assert [c for c in calls if c[0] == "amazon-cloudwatch-agent-ctl"]
