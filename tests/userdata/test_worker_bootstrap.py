"""Worker first boot end to end with fakes: what it runs, in which order, and how it fails."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from tests.userdata.conftest import INSTANCE_ID


def signal_of(node):
    (argv,) = node.signals()
    return argv[argv.index("--status") + 1], argv[argv.index("--unique-id") + 1]


def started_units(node):
    return [argv[-1] for argv in node.calls("systemctl") if argv[:2] == ["enable", "--now"]]


def test_colocated_worker_boots_both_endpoints_and_signals_success(node):
    n = node("dev", "colocated")
    n.run("di-bootstrap")
    assert started_units(n) == ["docker", "di-vllm@0.service", "di-vllm@1.service"]
    assert (n.root / "systemd" / "di-vllm@.service").is_file()
    assert signal_of(n) == ("SUCCESS", INSTANCE_ID)
    (signal,) = n.signals()
    assert signal[signal.index("--logical-resource-id") + 1] == "ColocatedFleetGroup"
    assert signal[signal.index("--stack-name") + 1] == "di-test"
    # Model from Hugging Face through the DLC with the token in a root-only env file, then removed.
    (download,) = n.docker_runs()
    assert download[:3] == ["run", "--rm", "--env-file"]
    assert download[download.index("--entrypoint") + 1] == "huggingface-cli"
    assert "meta-llama/Llama-3.1-8B-Instruct" in download
    assert not (n.root / "run" / "hf.env").exists()
    assert (n.root / "data" / "models" / "meta-llama/Llama-3.1-8B-Instruct" / ".complete").exists()


def test_the_token_never_reaches_a_command_line_or_a_log(node, tmp_path):
    n = node("dev", "colocated")
    n.set("secret", "hf_SuperSecretValue123")
    proc = n.run("di-bootstrap")
    everything = (n.state / "calls.jsonl").read_text() + proc.stderr + proc.stdout
    assert "hf_SuperSecretValue123" not in everything


def test_env_file_for_the_download_is_root_only(node):
    n = node("dev", "colocated")
    n.set("secret", '{"HF_TOKEN": "hf_fromjson"}')
    # The function alone, to look at the file it writes (the bootstrap removes it after the download).
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/worker.sh && load_node_env && write_hf_env"],
                   env=n.env, check=True)
    hf_env = n.root / "run" / "hf.env"
    assert hf_env.read_text() == "HF_TOKEN=hf_fromjson\n"
    assert stat.S_IMODE(hf_env.stat().st_mode) == 0o600


def test_model_and_compiled_artifacts_come_from_the_bucket_when_cached(node):
    n = node("prod", "prefill", uverbs=16)
    n.run("worker.sh")
    syncs = [a for a in n.calls("aws") if a[:2] == ["s3", "sync"]]
    assert syncs == []  # nothing cached yet: nothing synced
    n.set("s3-prefixes", "models/meta-llama/Llama-3.3-70B-Instruct/ compiled/")
    (n.root / "data" / "models" / "meta-llama/Llama-3.3-70B-Instruct" / ".complete").unlink()
    n.run("worker.sh")
    sources = [a[-2] for a in n.calls("aws") if a[:2] == ["s3", "sync"]]
    assert sources[0] == "s3://di-test-artifactsbucket-abc123/models/meta-llama/Llama-3.3-70B-Instruct/"
    assert sources[1].startswith("s3://di-test-artifactsbucket-abc123/compiled/Llama-3.3-70B-Instruct-tp64-b8-s8192-")
    assert not [a for a in n.docker_runs() if "--entrypoint" in a][1:]  # no second Hugging Face download


def test_image_pull_is_retried_until_it_succeeds(node):
    n = node("dev", "colocated")
    n.set("docker-pull-fails", "2")
    n.run("di-bootstrap")
    pulls = [a for a in n.calls("docker") if a[:1] == ["pull"]]
    assert len(pulls) == 3
    assert signal_of(n)[0] == "SUCCESS"


def test_image_pull_that_never_succeeds_fails_the_node(node):
    n = node("dev", "colocated")
    n.set("docker-pull-fails", "99")
    proc = n.run("di-bootstrap", check=False, RETRY_ATTEMPTS="3")
    assert proc.returncode != 0
    status, unique = signal_of(n)
    assert status == "FAILURE" and unique.startswith(f"{INSTANCE_ID}:cannot-pull")
    assert started_units(n) == ["docker"]


def test_missing_efa_fails_loudly_with_the_reason_in_the_signal(node):
    n = node("dev", "colocated")
    n.set("efa-count", "0")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "EFA missing" in proc.stderr
    status, unique = signal_of(n)
    assert status == "FAILURE"
    assert unique.startswith(f"{INSTANCE_ID}:EFA-missing-fi_info-p-efa-finds-no-interface")
    assert len(unique) <= 64
    assert n.docker_runs() == [] and started_units(n) == ["docker"]
    # The full reason also goes to the node log group.
    events = [a for a in n.calls("aws") if a[:2] == ["logs", "put-log-events"]]
    assert "EFA missing: fi_info -p efa finds no interface" in events[0][-1]


def test_wrong_efa_count_names_both_numbers(node):
    n = node("prod", "decode", uverbs=16)
    n.set("efa-count", "8")
    proc = n.run("di-bootstrap", check=False)
    assert "EFA: 8 interfaces, expected 16" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def test_missing_neuron_devices_fail_the_preflight(node):
    n = node("dev", "colocated")
    for dev in (n.root / "dev").glob("neuron1*"):
        dev.unlink()
    proc = n.run("di-bootstrap", check=False)
    assert "found 9 Neuron devices (/dev/neuron*), expected 16" in proc.stderr
    assert signal_of(n)[1].startswith(f"{INSTANCE_ID}:found-9-Neuron-devices")


def test_too_little_nvme_fails_the_preflight(node):
    n = node("dev", "colocated")
    n.override(DI_MIN_DATA_GB="999999")
    proc = n.run("di-bootstrap", check=False)
    assert "GB free" in proc.stderr and "need 999999 GB" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def test_unmounted_nvme_is_assembled_into_raid0_and_mounted(node):
    n = node("dev", "colocated")
    (n.state / "all-mounted").unlink()
    for i in range(4):
        (n.root / "by-id" / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{i}").touch()
    (n.root / "by-id" / "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0-ns-1").touch()
    n.run("worker.sh")
    (mdadm,) = n.calls("mdadm")
    assert "--level=0" in mdadm and "--raid-devices=4" in mdadm
    assert n.calls("mount") == [["/dev/md/di-data", str(n.root / "data")]]
    assert (n.root / "etc" / "fstab").read_text() == f"UUID=1111-2222-uuid {n.root / 'data'} ext4 defaults,nofail 0 2\n"


def test_efa_devices_listed_under_two_fabrics_count_once(node):
    n = node("dev", "colocated")
    n.set("efa-direct")
    n.run("di-bootstrap")
    assert json.loads(n.run("di-status").stdout)["efa"]["interfaces"] == 8


def test_secret_fetch_failure_is_clear_and_starts_nothing(node):
    n = node("dev", "colocated")
    n.set("secret-fails")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode != 0
    assert "cannot read secret 'distack/hf-token' from Secrets Manager" in proc.stderr
    assert n.docker_runs() == []
    assert started_units(n) == ["docker"]
    assert signal_of(n)[0] == "FAILURE"


def test_disaggregated_worker_waits_for_etcd_and_fails_when_it_never_answers(node):
    n = node("prod", "decode", uverbs=16)
    n.set("etcd-down")
    proc = n.run("di-bootstrap", check=False)
    assert "etcd at 10.42.0.10:8989 unreachable" in proc.stderr
    assert started_units(n) == ["docker"]
    assert signal_of(n)[0] == "FAILURE"


def test_standard_mode_does_not_need_etcd(node):
    n = node("baseline", "standard")
    n.set("etcd-down")
    n.run("di-bootstrap")
    assert started_units(n) == ["docker", "di-vllm@0.service", "di-register@0.service",
                                "di-vllm@1.service", "di-register@1.service"]
    assert signal_of(n)[0] == "SUCCESS"


def test_standard_mode_enables_a_registrar_after_each_endpoint(node):
    n = node("baseline", "standard")
    n.run("di-bootstrap")
    calls = n.calls("systemctl")
    reload = calls.index(["daemon-reload"])
    for index in ("0", "1"):
        vllm = calls.index(["enable", "--now", f"di-vllm@{index}.service"])
        registrar = calls.index(["enable", "--now", f"di-register@{index}.service"])
        assert reload < vllm < registrar
    assert (n.root / "systemd" / "di-register@.service").is_file()


@pytest.mark.parametrize("env, fleet, uverbs", [("dev", "colocated", 2), ("prod", "prefill", 16)])
def test_disaggregated_workers_get_no_registrar(node, env, fleet, uverbs):
    # NeuronConnector registers DI endpoints itself.
    n = node(env, fleet, uverbs=uverbs)
    n.run("worker.sh")
    assert [u for u in started_units(n) if u.startswith("di-vllm@")]
    assert not [u for u in started_units(n) if u.startswith("di-register@")]
    assert not (n.root / "systemd" / "di-register@.service").exists()


def test_a_unit_that_dies_at_start_fails_the_node(node):
    n = node("dev", "colocated")
    n.set("units-failed", "di-vllm@1.service")
    proc = n.run("di-bootstrap", check=False)
    assert "di-vllm@1.service is not running" in proc.stderr
    assert signal_of(n)[0] == "FAILURE"


def test_a_late_signal_the_stack_no_longer_waits_for_is_not_a_failure(node):
    n = node("dev", "colocated")
    n.set("signal-fails")
    n.run("di-bootstrap")


def test_docker_is_installed_with_apt_when_missing(node):
    n = node("dev", "colocated", fakes=["apt-get", "systemctl"])
    subprocess.run(["bash", "-c", f". {n.env['DI_HOME']}/worker.sh && install_docker"], env=n.env, check=True)
    assert n.calls("apt-get")[-1] == ["install", "-y", "-q", "docker.io"]
    assert n.calls("systemctl") == [["enable", "--now", "docker"]]
