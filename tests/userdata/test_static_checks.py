"""shellcheck on every node script, systemd-analyze on every unit, and sourcing a script runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import needs

from tests.userdata.conftest import SCRIPTS

SHELLCHECK = Path(sys.executable).parent / "shellcheck"
OWNED = sorted(p for p in SCRIPTS.iterdir() if p.is_file() and (p.suffix == ".sh" or not p.suffix))
# The engine modules, sourced by load_engine (lib.sh): engine_* functions only.
ENGINES = sorted((SCRIPTS / "engines").glob("*.sh"))
ENGINE_FUNCTIONS = {"engine_entrypoint", "engine_env", "engine_server_args", "engine_self_registers",
                    "engine_preflight", "engine_prepare", "engine_compile", "engine_kv_hold_seconds",
                    "engine_registry_fields"}
# The accelerator modules, sourced by load_accelerator (lib.sh): accelerator_* functions (and their helpers) only.
ACCELERATORS = sorted((SCRIPTS / "accelerators").glob("*.sh"))
ACCELERATOR_FUNCTIONS = {"accelerator_preflight", "accelerator_docker_args", "accelerator_probe_args",
                         "accelerator_status_json", "accelerator_exporter"}
UNITS = sorted((SCRIPTS / "units").glob("*.service"))
# The runbooks' scripts (SSM documents run them), shellchecked with the rest.
RUNBOOKS = sorted((SCRIPTS / "ops").glob("*.sh"))


def test_the_node_scripts_are_all_found():
    assert {p.name for p in OWNED} >= {"lib.sh", "boot.sh", "worker.sh", "control.sh", "di-bootstrap", "di-run",
                                        "di-ready", "di-status", "di-restart", "di-register"}


def test_every_engine_module_defines_the_whole_interface_and_runs_nothing(tmp_path):
    assert {p.stem for p in ENGINES} == {"nixl", "neuron-connector", "lmcache"}
    for module in ENGINES:
        proc = subprocess.run(["bash", "-c", f'. "{module}"; declare -F | cut -d" " -f3'], capture_output=True,
                              text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert ENGINE_FUNCTIONS <= set(proc.stdout.split()), module.name


def code_of(script: Path) -> str:
    return "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_no_engine_branches_outside_the_modules():
    # A new engine is a new file in engines/: no script names an engine (nixl, neuron-connector, lmcache) itself.
    for script in OWNED + RUNBOOKS:
        code = code_of(script)
        assert "nixl" not in code.lower() and "neuron-connector" not in code and "lmcache" not in code.lower(), \
            script.name


def test_every_accelerator_module_defines_the_whole_interface_and_runs_nothing():
    assert {p.stem for p in ACCELERATORS} == {"neuron", "gpu"}
    for module in ACCELERATORS:
        proc = subprocess.run(["bash", "-c", f'. "{module}"; declare -F | cut -d" " -f3'], capture_output=True,
                              text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert ACCELERATOR_FUNCTIONS <= set(proc.stdout.split()), module.name


# What only an accelerator module may say: its family's name in a comparison, its device files, tools and variables.
ACCELERATOR_WORDS = ("nvidia", "cuda", "--gpus", "neuron[", "/neuron", "neuron_visible", "neuron_rt_", "logical_nc",
                     "lnc_applies", "expected_neuron", "expected_gpus", "== gpu", "== neuron")


def test_no_accelerator_branches_outside_the_modules():
    # A new accelerator family is a new file in accelerators/: only lib.sh's loader reads DI_ACCELERATOR, and no
    # other script (the engine modules aside, which may run on several families) names a family's devices or tools.
    for script in OWNED + RUNBOOKS:
        code = code_of(script)
        found = [w for w in ACCELERATOR_WORDS if w in code.lower()]
        assert not found, (script.name, found)
        if script.name != "lib.sh":
            assert "DI_ACCELERATOR" not in code, script.name


def test_the_accelerator_check_catches_a_branch(tmp_path):
    bad = 'if [[ $DI_ACCELERATOR == gpu ]]; then nvidia-smi; fi'
    assert [w for w in ACCELERATOR_WORDS if w in bad.lower()] == ["nvidia", "== gpu"]


@pytest.mark.parametrize("script", OWNED + ENGINES + ACCELERATORS + RUNBOOKS, ids=lambda p: p.relative_to(SCRIPTS).as_posix())
def test_shellcheck_clean(script):
    # Each file on its own, lib.sh included as a file: following `source` (-x) re-analyses lib.sh for every script
    # that sources it, about 1 s each. Across these scripts it adds only info notes (SC2031 in ops/update.sh, whose
    # stage() sources worker.sh in a subshell on purpose); the globals the scripts share are upper case, which
    # shellcheck does not require to be assigned. SC1091 is the note that a sourced file was not followed.
    proc = subprocess.run([str(SHELLCHECK), "-P", "SCRIPTDIR", "-e", "SC1091", str(script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", [p for p in OWNED if p.name != "lib.sh"], ids=lambda p: p.name)
def test_sourcing_a_script_defines_main_and_runs_nothing(script, tmp_path):
    proc = subprocess.run(["bash", "-c", f'. "{script}"; declare -F main'], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DI_NODE_ENV": str(tmp_path / "absent")})
    assert proc.returncode == 0 and proc.stdout.strip() == "main", proc.stderr


def verify(tmp_path: Path, units: list[Path], *names: str) -> subprocess.CompletedProcess:
    """systemd-analyze verify with the units as shipped, /opt/di pointing at this checkout's scripts."""
    work = tmp_path / "units"
    work.mkdir(exist_ok=True)
    for unit in units:
        (work / unit.name).write_text(unit.read_text().replace("/opt/di/", f"{SCRIPTS}/"))
    # Docker's own unit comes with the docker package on the nodes.
    (work / "docker.service").write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=work, capture_output=True,
                          text=True)


@needs("systemd-analyze")
def test_units_verify(tmp_path):
    proc = verify(tmp_path, UNITS, "./di-etcd.service", "./di-proxy.service", "./di-vllm@0.service",
                  "./di-register@0.service")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@needs("systemd-analyze")
def test_the_verification_catches_a_broken_unit(tmp_path):
    broken = tmp_path / "di-vllm@.service"
    broken.write_text((SCRIPTS / "units" / "di-vllm@.service").read_text().replace("di-run run", "di-runn run"))
    proc = verify(tmp_path, [broken], "./di-vllm@0.service")
    assert proc.returncode != 0 and "di-runn" in proc.stderr


def unit_sections(unit: Path):
    import configparser
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    return parser


# The standard-mode registrar is not a server of its own: it follows its endpoint (see the next tests).
REGISTRAR = SCRIPTS / "units" / "di-register@.service"


def test_every_unit_restarts_on_failure_and_starts_at_boot():
    for unit in UNITS:
        if unit == REGISTRAR:
            continue
        parser = unit_sections(unit)
        assert parser["Service"]["Restart"] == "on-failure", unit.name
        assert parser["Install"]["WantedBy"] == "multi-user.target", unit.name


def test_the_registrar_follows_its_endpoint_and_never_gives_up():
    parser = unit_sections(REGISTRAR)
    for dependency in ("BindsTo", "PartOf", "After", "WantedBy"):
        section = "Install" if dependency == "WantedBy" else "Unit"
        assert "di-vllm@%i.service" in parser[section][dependency].split(), dependency
    assert parser["Service"]["ExecStart"] == "/opt/di/di-register %i"
    assert parser["Service"]["Restart"] == "always"
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"


@needs("systemctl")
def test_enabling_a_registrar_ties_it_to_its_endpoint_start(tmp_path):
    # What `systemctl enable --now di-register@N.service` links on a node: the endpoint wants it, so every start
    # of di-vllm@N (boot, after a drain) starts the registrar too.
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in UNITS:
        (units / unit.name).write_text(unit.read_text())
    proc = subprocess.run(["systemctl", f"--root={tmp_path}", "enable", "di-register@1.service"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    link = units / "di-vllm@1.service.wants" / "di-register@1.service"
    assert link.is_symlink() and link.readlink().name == "di-register@.service"
    assert not (units / "multi-user.target.wants" / "di-register@1.service").exists()
