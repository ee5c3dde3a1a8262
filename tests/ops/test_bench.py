"""bench.sh: LLMPerf on the control host in two transient systemd services (setup, run), run for real with fake aws,
systemd-run, iptables, ip and dnf on PATH; and the services' own scripts run with fake git and Python."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.test_scripts import CONTROL, MODEL, USERDATA, Node, make_node

BENCH = USERDATA / "ops" / "bench.sh"
ARGS = ("run-1", "1024", "0", "100", "10", "4", "200")
COMMIT = "1eac866f91773bff401f96e74c1cf20c38778329"
# token_benchmark_ray.py's options at ray-project/llmperf@1eac866f (its argparse, L341-437): argparse exits on any other.
LLMPERF_OPTIONS = {"--model", "--mean-input-tokens", "--stddev-input-tokens", "--mean-output-tokens",
                   "--stddev-output-tokens", "--num-concurrent-requests", "--timeout", "--max-num-completed-requests",
                   "--additional-sampling-params", "--results-dir", "--llm-api", "--metadata"}


@pytest.fixture
def control(tmp_path: Path) -> Node:
    node = make_node(tmp_path, CONTROL)
    node.env["BENCH_STATE_DIR"] = str(tmp_path / "state")
    return node


def split(line: str) -> list[str]:
    """A recorded call back into its words: the fakes quote them with bash's printf %q ($'...' for the scripts'
    newlines), which only bash reads back."""
    words = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "split", line],
                           capture_output=True, text=True, check=True).stdout
    return words.split("\0")[:-1]


def services(node: Node) -> dict[str, list[str]]:
    """Each systemd-run call's argv, by its unit's name."""
    found = {}
    for line in node.called("systemd-run "):
        argv = split(line)[1:]
        found[argv[argv.index("--unit") + 1]] = argv
    return found


def properties(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]


def test_bench_sets_up_then_runs_llmperf_against_the_proxy_and_uploads_the_results(control: Node) -> None:
    result = control.run("bench.sh", *ARGS)
    assert result.returncode == 0, result.stderr
    assert list(services(control)) == ["di-bench-setup", "di-bench-run"]
    run = services(control)["di-bench-run"]
    assert "--setenv=OPENAI_API_BASE=http://localhost:8000/v1" in run
    # bash -c SCRIPT llmperf MODEL SHAPES... SAMPLING: every value a positional argument.
    assert run[-9:-1] == ["llmperf", MODEL, "1024", "0", "100", "10", "4", "200"]
    assert run[-1] == '{"top_k": 50, "top_p": 0.9, "temperature": 0.7}'
    assert control.called("systemd-run-env-file") == ["systemd-run-env-file OPENAI_API_KEY=EMPTY"]
    (upload,) = control.called("aws s3 cp")
    assert f"{control.env['BENCH_STATE_DIR']}/results" in upload
    assert upload.endswith("s3://di-prod-artifacts/bench/AROAEXAMPLEWORKER0001:i-0123456789abcdef0/run-1/")
    assert result.stdout.strip().endswith("/run-1/")


def test_both_services_run_as_their_own_user_bounded_and_kept_from_instance_metadata(control: Node) -> None:
    assert control.run("bench.sh", *ARGS).returncode == 0
    calls = control.calls
    rule = "iptables -w -I OUTPUT 1 -d 169.254.169.254/32 -m cgroup --path di.slice/di-containers.slice -j REJECT"
    first = next(i for i, call in enumerate(calls) if call.startswith("systemd-run "))
    assert calls.index(rule) < first, "the metadata rule is in place before any service starts"
    for unit, argv in services(control).items():
        props = properties(argv)
        assert {"DynamicUser=yes", "Slice=di-containers-control.slice", "PrivateTmp=yes",
                "IPAddressDeny=169.254.169.254/32 fd00:ec2::254/128"} <= set(props), unit
        assert "--wait" in argv and "--pipe" in argv
    # The run talks to this host alone: loopback, and the host's own addresses, where Ray's processes meet.
    run = properties(services(control)["di-bench-run"])
    assert "IPAddressDeny=any" in run
    assert [p for p in run if p.startswith("IPAddressAllow=")] == [
        "IPAddressAllow=127.0.0.0/8", "IPAddressAllow=::1/128", "IPAddressAllow=10.0.1.5", "IPAddressAllow=10.0.1.10"]
    assert not [p for p in properties(services(control)["di-bench-setup"]) if p.startswith("IPAddressAllow")]
    # The key file is for the run only.
    assert not [p for p in properties(services(control)["di-bench-setup"]) if p.startswith("EnvironmentFile")]


def test_bench_starts_no_service_when_the_imds_rule_cannot_be_set(control: Node, tmp_path: Path) -> None:
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "iptables").write_text("#!/bin/bash\n[[ \" $* \" == *\" -C \"* ]] && exit 1\nexit 3\n")
    (broken / "iptables").chmod(0o755)
    result = control.run("bench.sh", *ARGS, PATH=f"{broken}:{control.env['PATH']}")
    assert result.returncode == 1 and "instance metadata" in result.stderr
    assert not control.called("systemd-run ")


def test_the_proxy_api_key_reaches_llmperf_through_systemd_never_argv(control: Node) -> None:
    result = control.run("bench.sh", *ARGS, DI_PROXY_API_KEY_SECRET="distack/proxy-api-key",
                         FAKE_SECRETS="distack/proxy-api-key=k-123\ndistack/hf-token=hf_real")
    assert result.returncode == 0, result.stderr
    assert control.called("systemd-run-env-file") == ["systemd-run-env-file OPENAI_API_KEY=k-123"]
    assert not [call for call in control.calls if "k-123" in call and not call.startswith("systemd-run-env-file")]
    assert "hf_real" not in "\n".join(control.calls), "the tokenizer is public: the token is not handed out"


def test_a_failed_setup_runs_nothing_and_uploads_nothing(control: Node) -> None:
    result = control.run("bench.sh", *ARGS, FAKE_SYSTEMD_RUN_EXIT_setup="1")
    assert result.returncode == 1 and "journalctl -u di-bench-setup" in result.stderr
    assert list(services(control)) == ["di-bench-setup"] and not control.called("aws s3 cp")


def test_a_failed_run_uploads_nothing(control: Node) -> None:
    result = control.run("bench.sh", *ARGS, FAKE_SYSTEMD_RUN_EXIT_run="1")
    assert result.returncode == 1 and "journalctl -u di-bench-run" in result.stderr
    assert not control.called("aws s3 cp")


def test_a_missing_python_comes_from_dnf_and_one_dnf_cannot_install_stops_the_run(control: Node) -> None:
    missing = "python3.99"
    result = control.run("bench.sh", *ARGS, LLMPERF_PYTHON_BIN=missing, FAKE_DNF_EXIT="1")
    assert result.returncode == 1 and f"cannot install {missing} for LLMPerf (dnf)" in result.stderr
    assert control.called(f"dnf install -y -q {missing}") and not control.called("systemd-run")


# The services' scripts, run by bash as systemd would: CACHE_DIRECTORY and STATE_DIRECTORY set, git and the Python
# faked. The fake Python answers the version check with the real interpreter (told its version), makes a virtualenv
# whose python records `-m pip ...` and runs nothing else.
def _fake_tools(tmp_path: Path, head: str, version: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "c.log"
    (bin_dir / "git").write_text(f'#!/bin/bash\necho "git $*" >>"{log}"\n'
                                 f'[[ $1 == init ]] && mkdir -p "${{@: -1}}"\n[[ " $* " == *" rev-parse "* ]] && echo {head}\n'
                                 "exit 0\n")
    venv_python = (f'#!/bin/bash\necho "venv-python $*" >>"{log}"\n'
                   f'echo "env HF_HUB_OFFLINE=${{HF_HUB_OFFLINE:-}} HF_HOME=${{HF_HOME:-}}" >>"{log}"\nexit 0\n')
    (bin_dir / "python3.11").write_text(
        f'#!/bin/bash\necho "python3.11 $*" >>"{log}"\n'
        f'if [[ $1 == -c ]]; then exec {sys.executable} -c "import sys; sys.version_info = ({version.replace(".", ", ")}, 0)\n$2"; fi\n'
        f'if [[ $1 == -m && $2 == venv ]]; then mkdir -p "$3/bin"; printf %s {shlex.quote(venv_python)} >"$3/bin/python"; '
        'chmod +x "$3/bin/python"; fi\nexit 0\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _service_script(tmp_path: Path, function: str, *args: str, head: str = COMMIT, version: str = "3.11",
                    key: str = "abc-1eac866f91") -> subprocess.CompletedProcess[str]:
    lib = {"PATH": os.environ["PATH"], "DI_LIB_DIR": str(USERDATA / "lib")}
    script = subprocess.run(["bash", "-c", f". {BENCH}; {function}"], capture_output=True, text=True, check=True,
                            env=lib).stdout
    bin_dir = _fake_tools(tmp_path, head, version)
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "state").mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CACHE_DIRECTORY": str(tmp_path / "cache"),
           "STATE_DIRECTORY": str(tmp_path / "state"), "LLMPERF_REPO": "https://example.invalid/llmperf.git",
           "LLMPERF_COMMIT": COMMIT, "LLMPERF_PYTHON": "3.11", "LLMPERF_PYTHON_BIN": "python3.11",
           "LLMPERF_LOCK": "/opt/di/llmperf/requirements.lock", "LLMPERF_KEY": key,
           "LLMPERF_TOKENIZER": "hf-internal-testing/llama-tokenizer"}
    return subprocess.run(["bash", "-c", script, *args], env=env, capture_output=True, text=True)


def _log(tmp_path: Path) -> list[str]:
    log = tmp_path / "c.log"
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_the_lock_with_hashes_then_llmperf_by_commit_alone_and_once(tmp_path: Path) -> None:
    done = _service_script(tmp_path, "llmperf_setup_script")
    assert done.returncode == 0, done.stderr
    log = _log(tmp_path)
    venv = tmp_path / "cache" / "venv-abc-1eac866f91"
    assert f"git -C {venv}/llmperf fetch --quiet --depth 1 https://example.invalid/llmperf.git {COMMIT}" in log
    pips = [line for line in log if line.startswith("venv-python -m pip")]
    # Every dependency from the lock, hash-checked, wheels only; LLMPerf without its declared dependencies, built
    # from the locked setuptools with no index, on the Python its range leaves out; nothing else installed.
    assert pips == [
        "venv-python -m pip install --quiet --require-hashes --only-binary :all: -r /opt/di/llmperf/requirements.lock",
        f"venv-python -m pip install --quiet --no-deps --no-build-isolation --no-index --ignore-requires-python "
        f"--editable {venv}/llmperf"]
    assert (venv / "complete").exists()
    lookup = [line for line in log if "LlamaTokenizerFast.from_pretrained" in line]
    assert len(lookup) == 1 and lookup[0].endswith("hf-internal-testing/llama-tokenizer")
    # The tokenizer goes to the cache the run reads, fetched here (the run reaches no other host).
    assert log[-1] == f"env HF_HUB_OFFLINE= HF_HOME={tmp_path / 'cache'}/hf"
    # Again: the complete virtualenv is used as it is, only the tokenizer looked up.
    (tmp_path / "c.log").unlink()
    assert _service_script(tmp_path, "llmperf_setup_script").returncode == 0
    assert [line.split()[0] for line in _log(tmp_path)] == ["python3.11", "venv-python", "env"]
    # A new lock or commit: a new virtualenv, the old one removed.
    assert _service_script(tmp_path, "llmperf_setup_script", key="def-1eac866f91").returncode == 0
    assert sorted(p.name for p in (tmp_path / "cache").glob("venv-*")) == ["venv-def-1eac866f91"]


def test_setup_refuses_another_python_and_another_commit_before_installing(tmp_path: Path) -> None:
    (tmp_path / "py").mkdir()
    wrong = _service_script(tmp_path / "py", "llmperf_setup_script", version="3.9")
    assert wrong.returncode == 1
    assert "lock is for Python 3.11, python3.11 is Python 3.9" in wrong.stderr
    assert not [line for line in _log(tmp_path / "py") if line.startswith(("git", "venv-python"))]
    (tmp_path / "commit").mkdir()
    bad = _service_script(tmp_path / "commit", "llmperf_setup_script", head="0" * 40)
    assert bad.returncode == 1 and f"expected {COMMIT}" in bad.stderr
    assert not [line for line in _log(tmp_path / "commit") if "pip" in line]
    assert not list((tmp_path / "commit" / "cache").glob("venv-*/complete"))


def test_the_run_passes_only_options_llmperfs_commit_knows_offline_into_the_state_directory(tmp_path: Path) -> None:
    assert _service_script(tmp_path, "llmperf_setup_script").returncode == 0
    done = _service_script(tmp_path, "llmperf_run_script", "llmperf", MODEL, "1", "0", "1", "0", "1", "1", "{}")
    assert done.returncode == 0, done.stderr
    (run,) = [line for line in _log(tmp_path) if "token_benchmark_ray.py" in line]
    words = run.split()
    assert words[1].endswith("/venv-abc-1eac866f91/llmperf/token_benchmark_ray.py")
    options = {word for word in words if word.startswith("--")}
    assert options <= LLMPERF_OPTIONS, options - LLMPERF_OPTIONS
    assert words[words.index("--results-dir") + 1] == f"{tmp_path / 'state'}/results"
    assert (tmp_path / "state" / "results").is_dir()
    assert _log(tmp_path)[-1] == f"env HF_HUB_OFFLINE=1 HF_HOME={tmp_path / 'cache'}/hf"


def test_the_run_refuses_without_a_complete_setup(tmp_path: Path) -> None:
    done = _service_script(tmp_path, "llmperf_run_script", "llmperf", MODEL, "1", "0", "1", "0", "1", "1", "{}")
    assert done.returncode == 1 and "no complete setup" in done.stderr
    assert not [line for line in _log(tmp_path) if "token_benchmark_ray.py" in line]
