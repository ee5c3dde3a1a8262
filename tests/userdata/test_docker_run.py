"""The exact `docker run` each unit executes, per role, against the Neuron tutorials' commands."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess

import pytest

from tests.userdata.conftest import FAKES, INSTANCE_ID

IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"


def compiled_key(model: str, tp: int, batch: int, seq: int) -> str:
    digest = hashlib.sha256(f"{model}|{IMAGE}|{tp}|{batch}|{seq}".encode()).hexdigest()[:12]
    return f"{model.split('/')[-1]}-tp{tp}-b{batch}-s{seq}-{digest}"


def expected_docker(node, *, index, fleet, cores, env_extra=(), uverbs=2):
    model, tp = node.values["DI_MODEL_ID"], int(node.values["DI_TENSOR_PARALLEL"])
    batch, seq = int(node.values["DI_MAX_NUM_SEQS"]), int(node.values["DI_MAX_MODEL_LEN"])
    devices = [w for i in range(uverbs) for w in ("--device", f"/dev/infiniband/uverbs{i}")]
    return ["run", "--rm", "--name", f"di-vllm-{index}", "--network", "host", "--privileged", *devices,
            "--shm-size=10g",
            "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
            "--log-opt", "awslogs-group=/distack/test/containers",
            "--log-opt", f"awslogs-stream={fleet}/{INSTANCE_ID}/vllm-{index}",
            "-v", f"{node.root / 'data'}:/data",
            "-e", f"NEURON_RT_VISIBLE_CORES={cores}",
            "-e", f"NEURON_COMPILED_ARTIFACTS=/data/compiled/{compiled_key(model, tp, batch, seq)}",
            *env_extra, IMAGE, "bash", "-c"]


def server_args(*, model, tp, batch, seq, port, kv=None):
    """The tutorial's `python3 -m vllm.entrypoints.openai.api_server` words, model staged locally."""
    args = ["exec", "python3", "-m", "vllm.entrypoints.openai.api_server", "--model", f"/data/models/{model}",
            "--served-model-name", model, "--max-num-seqs", str(batch), "--max-model-len", str(seq),
            "--tensor-parallel-size", str(tp), "--device", "neuron"]
    if kv is not None:
        args += ["--speculative-max-model-len", str(seq), "--override-neuron-config", "{}",
                 "--kv-transfer-config", kv]
    else:
        args += ["--override-neuron-config", "{}"]
    return args + ["--port", str(port)]


def run_endpoint(node, index):
    node.run("di-run", "run", "vllm", str(index))
    (argv,) = node.docker_runs()
    return argv[:-1], argv[-1]


@pytest.mark.parametrize("index,role,cores,port,kv_role", [
    (0, "prefill", "0-15", 8000, "kv_producer"),
    (1, "decode", "16-31", 8001, "kv_consumer"),
])
def test_colocated_1p1d_endpoints_of_dev(node, index, role, cores, port, kv_role):
    n = node("dev", "colocated")
    head, command = run_endpoint(n, index)
    assert head == expected_docker(n, index=index, fleet="colocated", cores=cores)
    words = shlex.split(command)
    kv = words[words.index("--kv-transfer-config") + 1]
    assert json.loads(kv) == {"kv_connector": "NeuronConnector", "kv_role": kv_role, "kv_buffer_size": 1e11,
                              "etcd": "10.42.0.10:8989"}
    assert words == server_args(model="meta-llama/Llama-3.1-8B-Instruct", tp=16, batch=8, seq=8192, port=port, kv=kv)


@pytest.mark.parametrize("fleet,kv_role", [("prefill", "kv_producer"), ("decode", "kv_consumer")])
def test_prod_prefill_and_decode_workers_match_the_di_tutorial(node, fleet, kv_role):
    n = node("prod", fleet, uverbs=16)
    head, command = run_endpoint(n, 0)
    assert head == expected_docker(n, index=0, fleet=fleet, cores="0-63", uverbs=16,
                                   env_extra=("-e", "NEURON_RT_VIRTUAL_CORE_SIZE=2"))
    kv = json.dumps({"kv_connector": "NeuronConnector", "kv_role": kv_role, "kv_buffer_size": 2e11,
                     "etcd": "10.42.0.10:8989"}, separators=(",", ":")).replace("200000000000.0", "2e+11")
    assert shlex.split(command) == server_args(model="meta-llama/Llama-3.3-70B-Instruct", tp=64, batch=8,
                                               seq=8192, port=8000, kv=kv)


@pytest.mark.parametrize("index,cores,port", [(0, "0-31", 8000), (1, "32-63", 8001)])
def test_standard_mode_runs_the_two_data_parallel_endpoints_without_kv_transfer(node, index, cores, port):
    n = node("baseline", "standard")
    head, command = run_endpoint(n, index)
    assert head == expected_docker(n, index=index, fleet="standard", cores=cores,
                                   env_extra=("-e", "NEURON_RT_VIRTUAL_CORE_SIZE=2"))
    assert shlex.split(command) == server_args(model="meta-llama/Llama-3.3-70B-Instruct", tp=32, batch=4,
                                               seq=8192, port=port)


def test_container_shell_hands_python_exactly_these_words(node, tmp_path):
    """What the container's bash does with the command string: a fake python3 records the argv it receives."""
    n = node("dev", "colocated")
    _, command = run_endpoint(n, 0)
    fake_bin = tmp_path / "container-bin"
    fake_bin.mkdir()
    (fake_bin / "python3").symlink_to(FAKES / "python3")
    subprocess.run(["/bin/bash", "-c", command], check=True,
                   env={"PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_STATE": str(n.state)})
    received = n.calls("python3")[-1]
    assert received[:3] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    kv = received[received.index("--kv-transfer-config") + 1]
    assert json.loads(kv)["kv_role"] == "kv_producer"
    assert received[received.index("--override-neuron-config") + 1] == "{}"


def test_control_host_etcd_uses_the_tutorial_flags_on_the_fixed_address(node):
    n = node("prod")
    n.run("di-run", "run", "etcd")
    (argv,) = n.docker_runs()
    assert argv == ["run", "--rm", "--name", "di-etcd", "--network", "host",
                    "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
                    "--log-opt", "awslogs-group=/distack/test/containers",
                    "--log-opt", f"awslogs-stream=control/{INSTANCE_ID}/etcd",
                    "-v", f"{n.root / 'etcd'}/data:/etcd-data", "quay.io/coreos/etcd:v3.5.17", "/usr/local/bin/etcd",
                    "--data-dir=/etcd-data",
                    "--listen-client-urls=http://0.0.0.0:8989",
                    "--advertise-client-urls=http://10.42.0.10:8989",
                    "--listen-peer-urls=http://127.0.0.1:21323",
                    "--initial-advertise-peer-urls=http://127.0.0.1:21323",
                    "--initial-cluster=default=http://127.0.0.1:21323",
                    "--name=default"]


def test_control_host_proxy_is_the_dlc_neuron_proxy_server(node):
    n = node("prod")
    n.run("di-run", "run", "proxy")
    (argv,) = n.docker_runs()
    assert argv == ["run", "--rm", "--name", "di-proxy", "--network", "host", "--shm-size=10g", "--privileged",
                    "--log-driver", "awslogs", "--log-opt", "awslogs-region=us-east-2",
                    "--log-opt", "awslogs-group=/distack/test/containers",
                    "--log-opt", f"awslogs-stream=control/{INSTANCE_ID}/proxy",
                    "-e", "ETCD_IP=10.42.0.10", "-e", "ETCD_PORT=8989", IMAGE,
                    "bash", "-c", "exec neuron-proxy-server --etcd $ETCD_IP:$ETCD_PORT"]


def test_prepare_removes_a_stale_kv_lock_and_the_old_container(node):
    n = node("dev", "colocated")
    lock = n.root / "nrt_kv_store_server.lock"
    lock.write_text("held by an earlier run")
    n.run("di-run", "prepare", "vllm", "1")
    assert not lock.exists()
    assert n.calls("docker") == [["rm", "-f", "di-vllm-1"]]


def test_unknown_endpoint_index_fails_before_docker(node):
    n = node("dev", "colocated")
    proc = n.run("di-run", "run", "vllm", "7", check=False)
    assert proc.returncode != 0 and "no endpoint 7" in proc.stderr
    assert n.docker_runs() == []
