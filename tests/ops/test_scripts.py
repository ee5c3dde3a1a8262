"""The node scripts behind the SSM documents, run for real with fake aws, docker, curl, systemctl and
journalctl on PATH that record their arguments."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USERDATA = ROOT / "userdata"
FAKES = Path(__file__).resolve().parent / "fakes"
IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"
NEW_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.2"
MODEL = "meta-llama/Llama-3.3-70B-Instruct"

WORKER = {"DI_DEPLOYMENT": "prod", "DI_ENGINE": "neuron-connector", "DI_ROLE": "prefill", "DI_FLEET": "prefill",
          "DI_MODE": "disaggregated",
          "DI_PROXY": "neuron", "DI_PROXY_UNITS": "di-proxy.service", "DI_PROXY_PORT": "8000", "DI_IMAGE": IMAGE, "DI_MODEL_ID": MODEL,
          "DI_MODEL_SOURCE": "huggingface", "DI_HF_TOKEN_SECRET": "distack/hf-token", "DI_MAX_MODEL_LEN": "8192",
          "DI_MAX_NUM_SEQS": "8", "DI_BUCKET": "di-prod-artifacts", "DI_REGION": "us-east-2",
          "DI_ETCD": "10.42.0.10:8989", "DI_TENSOR_PARALLEL": "64", "DI_LNC": "2",
          "DI_ENDPOINTS": "prefill:0-63:8000", "DI_INSTANCE_TYPE": "trn2.48xlarge",
          "DI_LOG_GROUP_CONTAINERS": "/distack/prod/containers"}
NIXL_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"
NIXL_WORKER = {**WORKER, "DI_ENGINE": "nixl", "DI_PROXY": "distack", "DI_IMAGE": NIXL_IMAGE, "DI_TENSOR_PARALLEL": "16",
               "DI_ENDPOINTS": "prefill:0-15:8000 prefill:16-31:8001", "DI_READY_TIMEOUT_SECONDS": "3600"}
CONTROL = {**{k: v for k, v in WORKER.items() if k not in ("DI_ENDPOINTS", "DI_TENSOR_PARALLEL", "DI_LNC")},
           "DI_ROLE": "control", "DI_FLEET": "control"}


@dataclass
class Node:
    """A temporary node: node.env, override.env, data dir, and the log of every faked command."""

    root: Path
    env: dict[str, str]

    @property
    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def called(self, prefix: str) -> list[str]:
        return [c for c in self.calls if c.startswith(prefix)]

    @property
    def override(self) -> Path:
        return self.root / "override.env"

    def run(self, script: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(USERDATA / "ops" / script), *args], env={**self.env, **extra},
                              capture_output=True, text=True, timeout=60)

    def compiled_key(self) -> str:
        out = subprocess.run(["bash", "-c", f". {USERDATA / 'lib' / 'compile.sh'}; load_node_env; compiled_key"],
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip()


def make_node(tmp_path: Path, values: dict[str, str]) -> Node:
    (tmp_path / "node.env").write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    (tmp_path / "data").mkdir()
    (tmp_path / "systemd").mkdir()
    env = {"PATH": f"{FAKES}:{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_LOG": str(tmp_path / "calls.log"),
           "DI_SYSTEMD_DIR": str(tmp_path / "systemd"),
           "DI_LIB_DIR": str(USERDATA / "lib"), "DI_HOME": str(USERDATA), "DI_NODE_ENV": str(tmp_path / "node.env"),
           "DI_OVERRIDE_ENV": str(tmp_path / "override.env"), "DI_DATA_DIR": str(tmp_path / "data"),
           "DI_RUN_DIR": str(tmp_path / "run"), "DI_KV_LOCK": str(tmp_path / "kv.lock"),
           "RETRY_ATTEMPTS": "1", "RETRY_SLEEP": "0", "READY_POLL_SECONDS": "0", "DRAIN_POLL_SECONDS": "0",
           "LOGS_WORK_DIR": str(tmp_path), "BENCH_WORK_DIR": str(tmp_path), "SMOKE_WORK_DIR": str(tmp_path)}
    return Node(tmp_path, env)


def staged_worker(tmp_path: Path, values: dict[str, str]) -> Node:
    """A worker whose bootstrap has staged the model."""
    node = make_node(tmp_path, values)
    staged = tmp_path / "data" / "models" / MODEL
    staged.mkdir(parents=True)
    (staged / ".complete").touch()
    return node


@pytest.fixture
def worker(tmp_path: Path) -> Node:
    return staged_worker(tmp_path, WORKER)


@pytest.fixture
def nixl_worker(tmp_path: Path) -> Node:
    return staged_worker(tmp_path, NIXL_WORKER)


@pytest.fixture
def control(tmp_path: Path) -> Node:
    return make_node(tmp_path, CONTROL)


def test_wait_ready_passes_when_every_endpoint_is_healthy(worker: Node) -> None:
    result = worker.run("wait-ready.sh", "0")
    assert result.returncode == 0, result.stderr
    assert "port 8000: ready" in result.stdout


def test_wait_ready_gives_up_after_its_timeout(worker: Node) -> None:
    result = worker.run("wait-ready.sh", "0", FAKE_CURL_CODE="503")
    assert result.returncode == 1
    assert "NOT READY" in result.stdout and "not ready after 0s" in result.stderr


def test_update_writes_the_override_pulls_restarts_and_gates(worker: Node) -> None:
    result = worker.run("update.sh", "--image", NEW_IMAGE, "--model", "", "--ready-timeout", "0")
    assert result.returncode == 0, result.stderr
    assert f"DI_IMAGE={NEW_IMAGE}" in worker.override.read_text()
    assert "DI_MODEL_ID" not in worker.override.read_text()
    assert worker.called(f"docker pull {NEW_IMAGE}")
    assert worker.called("systemctl restart di-vllm@0.service")
    assert not Path(f"{worker.override}.previous").exists()


def test_update_rolls_back_the_override_when_not_ready(worker: Node) -> None:
    worker.override.write_text("DI_MODEL_ID=meta-llama/Llama-3.1-70B-Instruct\n")
    result = worker.run("update.sh", "--image", NEW_IMAGE, "--ready-timeout", "0", FAKE_CURL_CODE="503")
    assert result.returncode == 1
    assert worker.override.read_text() == "DI_MODEL_ID=meta-llama/Llama-3.1-70B-Instruct\n"
    assert len(worker.called("systemctl restart di-vllm@0.service")) == 2
    assert "previous image and model restored" in result.stderr


def test_update_rolls_back_when_the_pull_fails(worker: Node) -> None:
    result = worker.run("update.sh", "--image", NEW_IMAGE, FAKE_DOCKER_PULL_EXIT="1")
    assert result.returncode == 1
    assert not worker.override.exists()
    assert "pull or staging failed" in result.stderr


def test_update_without_a_change_is_refused(worker: Node) -> None:
    result = worker.run("update.sh", "--image", "", "--model", "")
    assert result.returncode == 1 and "usage" in result.stderr
    assert not worker.calls


def test_update_on_the_control_host_pulls_and_restarts_its_units(control: Node) -> None:
    result = control.run("update.sh", "--image", NEW_IMAGE, "--ready-timeout", "0",
                         FAKE_CURL_BODY='{"health": "true"}')
    assert result.returncode == 0, result.stderr
    assert control.called(f"docker pull {NEW_IMAGE}")
    assert control.called("systemctl restart di-etcd.service di-proxy.service")


def test_collect_logs_uploads_journal_and_containers_to_the_instance_prefix(worker: Node) -> None:
    result = worker.run("collect-logs.sh", "3", FAKE_DOCKER_PS="di-vllm-0")
    assert result.returncode == 0, result.stderr
    uri = result.stdout.strip().splitlines()[-1]
    # Under this node's own folder, ROLE-ID:INSTANCE-ID as STS names it (the only one its role may write).
    assert uri.startswith("s3://di-prod-artifacts/logs/AROAEXAMPLEWORKER0001:i-0123456789abcdef0/") and uri.endswith("Z/")
    assert worker.called("aws sts get-caller-identity --region us-east-2 --query UserId --output text")
    upload = worker.called("aws s3 cp --recursive")
    assert upload and upload[0].endswith(uri)
    assert worker.called("journalctl --no-pager --since -3h -u di-\\*")
    assert worker.called("docker logs --timestamps --since 3h di-vllm-0")


def test_compile_skips_what_is_already_in_s3(worker: Node) -> None:
    result = worker.run("compile.sh", FAKE_AWS_S3_LS="found")
    assert result.returncode == 0, result.stderr
    assert "already compiled" in result.stdout
    assert not worker.called("docker run")


def test_compile_runs_inference_demo_with_the_deployment_shapes_and_uploads(worker: Node) -> None:
    key = worker.compiled_key()
    artifact = worker.root / "data" / "compiled" / key / "model.pt"
    result = worker.run("compile.sh", "--force", FAKE_DOCKER_CREATE=str(artifact), DI_INSTANCE_ID="i-0abc")
    assert result.returncode == 0, result.stderr
    run = worker.called("docker run")[0]
    for expected in ("--entrypoint inference_demo", "--tp-degree 64", "--batch-size 8", "--seq-len 8192",
                     "--max-context-length 8192", "--compile-only", f"--model-path /data/models/{MODEL}",
                     f"--compiled-model-path /data/compiled/{key}", "NEURON_RT_VIRTUAL_CORE_SIZE=2", IMAGE):
        assert expected in run, expected
    # Staged under this instance, never compiled/ (which the node may not write): dictl compile promotes it.
    staging = f"s3://di-prod-artifacts/staging/compiled/AROAEXAMPLEWORKER0001:i-0abc/{key}/"
    assert [c for c in worker.called("aws s3") if "sync" in c] == [
        f"aws s3 sync --only-show-errors --region us-east-2 {artifact.parent} {staging}"]
    assert f"staged: {staging} (dictl compile promotes it to s3://di-prod-artifacts/compiled/{key}/)" in result.stdout
    # The list names the artifact and nothing else (not its own temporary file, which never reaches S3).
    assert [line.split()[1] for line in (artifact.parent / "SHA256SUMS").read_text().splitlines()] == ["./model.pt"]


@pytest.mark.parametrize("userid, why", [
    ("AROAEXAMPLEWORKER0001:i-0someoneelse", "not ROLE-ID:i-0abc"),   # another instance's folder
    ("AIDAEXAMPLEUSER000001", "not ROLE-ID:i-0abc"),                  # a user's credentials, not the instance role
    ("AROAEXAMPLEWORKER0001:some-session", "not ROLE-ID:i-0abc"),     # a role session that is not this instance
])
def test_compile_refuses_to_upload_under_any_folder_but_its_own(worker: Node, userid: str, why: str) -> None:
    artifact = worker.root / "data" / "compiled" / worker.compiled_key() / "model.pt"
    result = worker.run("compile.sh", "--force", FAKE_DOCKER_CREATE=str(artifact), DI_INSTANCE_ID="i-0abc",
                        FAKE_AWS_USERID=userid)
    assert result.returncode == 1 and why in result.stderr, result.stderr
    assert not worker.called("aws s3 sync")


def test_collect_logs_fails_loudly_when_sts_cannot_name_the_node(worker: Node) -> None:
    result = worker.run("collect-logs.sh", "1", FAKE_AWS_FAIL="get-caller-identity")
    assert result.returncode == 1 and "aws sts get-caller-identity failed" in result.stderr
    assert not worker.called("aws s3 cp")


def test_bench_fails_loudly_before_the_run_when_sts_cannot_name_the_node(control: Node) -> None:
    result = control.run("bench.sh", "run-1", "1024", "0", "100", "10", "4", "200", FAKE_AWS_FAIL="get-caller-identity")
    assert result.returncode == 1 and "aws sts get-caller-identity failed" in result.stderr
    assert not control.called("docker run") and not control.called("aws s3 cp")


def test_compile_fails_loudly_when_nothing_was_written(worker: Node) -> None:
    result = worker.run("compile.sh", "--force")
    assert result.returncode == 1 and "wrote nothing" in result.stderr
    assert not worker.called("aws s3 sync")


def test_compile_on_nixl_uploads_the_cache_its_serving_endpoints_compiled(nixl_worker: Node) -> None:
    # The plugin compiles when its server starts, into VLLM_CACHE_ROOT=/data/compiled/KEY; no inference_demo.
    cache = nixl_worker.root / "data" / "compiled" / nixl_worker.compiled_key() / "neuron" / "compile_cache"
    cache.mkdir(parents=True)
    (cache / "graph.neff").touch()
    result = nixl_worker.run("compile.sh", "--force", FAKE_SYSTEMCTL_ACTIVE="active", DI_INSTANCE_ID="i-0abc")
    assert result.returncode == 0, result.stderr
    assert not nixl_worker.called("docker run")
    assert len([c for c in nixl_worker.called("curl") if "127.0.0.1:8000/health" in c]) == 1
    assert len([c for c in nixl_worker.called("curl") if "127.0.0.1:8001/health" in c]) == 1
    assert nixl_worker.called(f"aws s3 sync --only-show-errors --region us-east-2 {cache.parent.parent} "
                              f"s3://di-prod-artifacts/staging/compiled/AROAEXAMPLEWORKER0001:i-0abc/"
                              f"{nixl_worker.compiled_key()}/")


def test_compile_on_nixl_waits_for_every_endpoint_and_gives_up_at_its_bound(nixl_worker: Node) -> None:
    result = nixl_worker.run("compile.sh", "--force", FAKE_SYSTEMCTL_ACTIVE="active", FAKE_CURL_CODE="503",
                             COMPILE_WAIT_SECONDS="0")
    assert result.returncode == 1
    assert "endpoint 0 prefill cores 0-15 port 8000: NOT READY (/health 503)" in result.stdout
    assert "endpoint 1 prefill cores 16-31 port 8001: NOT READY (/health 503)" in result.stdout
    assert "still compiling or failing after 0s" in result.stderr
    assert not nixl_worker.called("aws s3 sync")


def test_compile_on_nixl_needs_its_endpoints_running(nixl_worker: Node) -> None:
    result = nixl_worker.run("compile.sh", "--force")
    assert result.returncode == 1
    assert "endpoint 0 (di-vllm@0.service) is not running; start it with /opt/di/di-restart 0" in result.stderr
    assert not nixl_worker.called("aws s3 sync")


def test_smoke_sends_the_tutorial_request_through_the_proxy(control: Node) -> None:
    result = control.run("smoke.sh", "10")
    assert result.returncode == 0, result.stderr
    request = shlex.split(control.called("curl")[0])
    assert "http://localhost:8000/v1/completions" in request
    body = json.loads(request[request.index("-d") + 1])
    assert body == {"model": MODEL, "prompt": ["a tornado is a"], "max_tokens": 10, "temperature": 0}
    assert "smoke test passed" in result.stdout


def test_smoke_sends_the_proxy_api_key_from_its_secret_off_the_command_line(control: Node) -> None:
    result = control.run("smoke.sh", DI_PROXY_API_KEY_SECRET="distack/proxy-api-key",
                         FAKE_SECRETS='distack/proxy-api-key={"api_key": "k-123"}')
    assert result.returncode == 0, result.stderr
    assert control.called("curl-header-file") == ["curl-header-file Authorization: Bearer k-123"]
    assert "k-123" not in control.called("curl")[0]
    assert list(control.root.glob("di-smoke.*")) == [], "the header file outlives the run"


def test_smoke_without_a_readable_key_secret_names_it_and_sends_nothing(control: Node) -> None:
    result = control.run("smoke.sh", DI_PROXY_API_KEY_SECRET="distack/proxy-api-key", FAKE_AWS_FAIL="get-secret-value")
    assert result.returncode == 1
    assert "cannot read secret 'distack/proxy-api-key'" in result.stderr
    assert not control.called("curl ")


def test_smoke_fails_without_a_completion(control: Node) -> None:
    result = control.run("smoke.sh", FAKE_CURL_BODY='{"error": "no workers"}')
    assert result.returncode == 1 and "no completion" in result.stderr


def test_smoke_refuses_to_run_on_a_worker(worker: Node) -> None:
    assert worker.run("smoke.sh").returncode == 1


def test_bench_needs_all_its_arguments(control: Node) -> None:
    result = control.run("bench.sh", "run-1")
    assert result.returncode == 1 and "usage" in result.stderr


def test_drain_stops_the_endpoint_and_waits_for_deregistration(worker: Node) -> None:
    result = worker.run("drain.sh", "all", "5")
    assert result.returncode == 0, result.stderr
    assert worker.called("systemctl stop --no-block di-vllm@0.service")
    assert worker.called("curl") and any("/v3/kv/range" in c for c in worker.calls)
    assert "drained: di-vllm@0.service" in result.stdout


def test_drain_is_bounded_and_stops_hard_at_the_timeout(worker: Node) -> None:
    result = worker.run("drain.sh", "0", "0", FAKE_SYSTEMCTL_ACTIVE="active")
    assert result.returncode == 4  # drain.sh: 4 = a server still running at the timeout was killed
    assert worker.called("systemctl kill --signal=SIGKILL di-vllm@0.service")


def test_drain_rejects_an_unknown_endpoint(worker: Node) -> None:
    result = worker.run("drain.sh", "7", "5")
    assert result.returncode == 1 and "no endpoint '7'" in result.stderr
