"""shellcheck on every node script, systemd-analyze on every unit, and sourcing a script runs nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import needs

from tests.userdata.conftest import SCRIPTS

SHELLCHECK = Path(sys.executable).parent / "shellcheck"
OWNED = sorted(p for p in SCRIPTS.iterdir() if p.is_file() and (p.suffix == ".sh" or not p.suffix))
# The shared functions, one file per concern; each script sources the ones it calls.
LIBS = sorted((SCRIPTS / "lib").glob("*.sh"))
# The engine modules, sourced by load_engine (lib/modules.sh): engine_* functions only.
ENGINES = sorted((SCRIPTS / "engines").glob("*.sh"))
ENGINE_FUNCTIONS = {"engine_entrypoint", "engine_env", "engine_server_args", "engine_self_registers",
                    "engine_preflight", "engine_prepare", "engine_compile", "engine_kv_hold_seconds",
                    "engine_registry_fields"}
# Optional control-host hooks: control.sh calls each one a module defines (lib/modules.sh run_engine_hook).
ENGINE_HOOKS = {"engine_control_start"}
# The accelerator modules, sourced by load_accelerator (lib/modules.sh): accelerator_* functions (and their helpers) only.
ACCELERATORS = sorted((SCRIPTS / "accelerators").glob("*.sh"))
ACCELERATOR_FUNCTIONS = {"accelerator_preflight", "accelerator_docker_args", "accelerator_probe_args",
                         "accelerator_status_json", "accelerator_exporter"}
UNITS = sorted((SCRIPTS / "units").glob("*.service"))
# The runbooks' scripts (SSM documents run them), shellchecked with the rest.
RUNBOOKS = sorted((SCRIPTS / "ops").glob("*.sh"))


def test_the_node_scripts_are_all_found():
    assert {p.name for p in OWNED} >= {"boot.sh", "worker.sh", "control.sh", "di-bootstrap", "di-run",
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
    for script in OWNED + LIBS + RUNBOOKS:
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
    # A new accelerator family is a new file in accelerators/: only the loader (lib/modules.sh) reads DI_ACCELERATOR,
    # and no other script (the engine modules aside, which may run on several families) names a family's devices or
    # tools.
    for script in OWNED + LIBS + RUNBOOKS:
        code = code_of(script)
        found = [w for w in ACCELERATOR_WORDS if w in code.lower()]
        assert not found, (script.name, found)
        if script != SCRIPTS / "lib" / "modules.sh":
            assert "DI_ACCELERATOR" not in code, script.name


def test_the_accelerator_check_catches_a_branch(tmp_path):
    bad = 'if [[ $DI_ACCELERATOR == gpu ]]; then nvidia-smi; fi'
    assert [w for w in ACCELERATOR_WORDS if w in bad.lower()] == ["nvidia", "== gpu"]


@pytest.mark.parametrize("script", OWNED + LIBS + ENGINES + ACCELERATORS + RUNBOOKS,
                         ids=lambda p: p.relative_to(SCRIPTS).as_posix())
def test_shellcheck_clean(script):
    # Each file on its own, each lib/ file included as a file: following `source` (-x) re-analyses the sourced files
    # for every script that sources them, about 1 s each. Across these scripts it adds only info notes (SC2031 in
    # ops/update.sh, whose stage() sources worker.sh in a subshell on purpose); the globals the scripts share are
    # upper case, which shellcheck does not require to be assigned. SC1091 is the note that a sourced file was not
    # followed. What a per-file pass cannot see, a call to a function no sourced file defines, is checked by
    # test_every_function_a_script_calls_is_sourced.
    proc = subprocess.run([str(SHELLCHECK), "-P", "SCRIPTDIR", "-e", "SC1091", str(script)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", OWNED, ids=lambda p: p.name)
def test_sourcing_a_script_defines_main_and_runs_nothing(script, tmp_path):
    proc = subprocess.run(["bash", "-c", f'. "{script}"; declare -F main'], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DI_NODE_ENV": str(tmp_path / "absent")})
    assert proc.returncode == 0 and proc.stdout.strip() == "main", proc.stderr


@pytest.mark.parametrize("lib", LIBS, ids=lambda p: p.name)
def test_each_lib_file_sources_what_it_needs_and_runs_nothing(lib, tmp_path):
    # Sourced alone, from another directory: it brings its own dependencies, prints nothing, and defines functions.
    proc = subprocess.run(["bash", "-c", f'set -euo pipefail; . "{lib}"; declare -F | wc -l'], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stderr == "" and int(proc.stdout) > 0, proc.stderr
    assert lib.read_text().splitlines()[1].startswith("# "), "each lib file says what it is for on its 2nd line"


# Every function any node shell file defines: a word in command position that is one of these must be defined once the
# script's own sources have run. Other words are commands on PATH.
ALL_SHELL = OWNED + LIBS + ENGINES + ACCELERATORS + RUNBOOKS
DEFINED_ANYWHERE = {m.group(1) for p in ALL_SHELL
                    for m in re.finditer(r"^\s*([a-z_][a-z0-9_]*)\s*\(\)", p.read_text(), re.MULTILINE)}
# Where bash runs a word as a command once strings and comments are blanked: line start, after ; | & ( ! { $( `
# (not ${ or $(( ), and after the reserved words and the commands that run their arguments (retry CMD, trap CMD, ...).
COMMAND_WORD = re.compile(r"(?:^|[;|&!`]|(?<!\$)[({]|\$\()\s*([a-z_][a-z0-9_]*)\b", re.MULTILINE)
PREFIX_WORDS = re.compile(r"\b(?:then|do|else|if|elif|while|until|time|retry|trap|exec|command)\s")
# Scripts whose functions source another node script at run time (di-bootstrap runs the role's script, the update
# runbook stages through worker.sh): their checks source those too.
RUNTIME_SOURCES = re.compile(r'^\s+\.\s+.*/((?:control|worker)\.sh)"$', re.MULTILINE)


def blank_strings(code: str) -> str:
    """CODE with quoted text and comments blanked, command substitutions inside double quotes kept: a function's
    name in a message is not a call."""
    out, i, stack = [], 0, ["code"]
    while i < len(code):
        c, state = code[i], stack[-1]
        if state == "sq":
            if c == "'":
                stack.pop()
            out.append(" " if c != "\n" else c)
        elif state == "dq":
            if c == "\\":
                out.append("  ")
                i += 1
            elif c == '"':
                stack.pop()
                out.append(" ")
            elif code.startswith("$(", i) and not code.startswith("$((", i):
                stack.append("sub")
                out.append("$(")
                i += 1
            else:
                out.append(" " if c != "\n" else c)
        elif c == "\\":
            # An escaped character, or a line continuation: the next line goes on with the same command.
            out.append("  " if code[i + 1:i + 2] == "\n" else code[i:i + 2])
            i += 1
        elif c == "'":
            stack.append("sq")
            out.append(" ")
        elif c == '"':
            stack.append("dq")
            out.append(" ")
        elif c == "#" and (i == 0 or code[i - 1] in " \t\n;"):
            while i + 1 < len(code) and code[i + 1] != "\n":
                i += 1
        elif code.startswith("$(", i) and not code.startswith("$((", i):
            stack.append("sub")
            out.append("$(")
            i += 1
        elif c == "(" and state == "sub":
            stack.append("sub")
            out.append(c)
        elif c == ")" and state == "sub":
            stack.pop()
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def called_names(code: str) -> set[str]:
    code = PREFIX_WORDS.sub("; ", blank_strings(code))
    return {m.group(1) for m in COMMAND_WORD.finditer(code)} & DEFINED_ANYWHERE


def undefined_calls(script: Path) -> list[str]:
    """Functions reachable from SCRIPT's own code that nothing it sources defines (after load_engine and
    load_accelerator have brought every module in)."""
    extra = [SCRIPTS / name for name in RUNTIME_SOURCES.findall(script.read_text())]
    modules = ENGINES + ACCELERATORS if "load_" in script.read_text() else []
    sources = "".join(f'. "{p}" >/dev/null 2>&1 || true; ' for p in extra + modules)
    proc = subprocess.run(["bash", "-c", f'. "{script}"; {sources} declare -F | cut -d" " -f3; echo ---; declare -f'],
                          capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "DI_NODE_ENV": "/nonexistent",
                               "DI_LIB_DIR": str(SCRIPTS / "lib")})
    assert proc.returncode == 0, proc.stderr
    names, _, bodies = proc.stdout.partition("---\n")
    defined = set(names.split())
    # Each function's body, as bash prints it (comments gone, one command per line).
    body_of = dict(re.findall(r"^([a-z_][a-z0-9_]*) \(\) \n(\{.*?^\})$", bodies, re.MULTILINE | re.DOTALL))
    todo = called_names(code_of(script)) | {n for n in DEFINED_ANYWHERE if re.search(
        rf"^\s*{n}\s*\(\)", script.read_text(), re.MULTILINE)}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= called_names(body_of.get(name, ""))
    return sorted(seen - defined)


CALLERS = [p for p in OWNED if p.name != "boot.sh"] + RUNBOOKS


@pytest.mark.parametrize("script", CALLERS, ids=lambda p: p.relative_to(SCRIPTS).as_posix())
def test_every_function_a_script_calls_is_sourced(script):
    missing = undefined_calls(script)
    # accelerator_exporter's metrics_fail is metrics-agent.sh's own, and only metrics-agent.sh calls the exporter.
    assert missing == [], (script.name, missing)


def test_the_sourcing_check_catches_a_missing_source_line(tmp_path):
    # The same script without the line that brings etcd's functions: its calls to them are reported.
    (tmp_path / "lib").symlink_to(SCRIPTS / "lib")
    (tmp_path / "accelerators").symlink_to(SCRIPTS / "accelerators")
    (tmp_path / "engines").symlink_to(SCRIPTS / "engines")
    script = tmp_path / "di-ready"
    text = (SCRIPTS / "di-ready").read_text()
    assert '. "$DI_LIB_DIR/etcd.sh"\n' in text
    script.write_text(text.replace('. "$DI_LIB_DIR/etcd.sh"\n', ""))
    assert undefined_calls(script) == ["etcd_healthy"]


# An instance type's name, or a family pattern: trn2.48xlarge, trn2*, p5., g6.12xlarge, inf2.xlarge, "xlarge".
INSTANCE_TYPE_NAME = re.compile(r"\b(?:trn|inf|p|g)\d+[a-z]*(?:\\?\.[0-9a-z]*|\*)|xlarge")
# A branch on the type's name through the variable, whatever the pattern.
INSTANCE_TYPE_BRANCH = re.compile(r"case\s+\"?\$\{?DI_INSTANCE_TYPE|\$\{?DI_INSTANCE_TYPE[^\s]*\s*(?:==|!=|=~)")


def instance_type_facts(code: str) -> list[str]:
    return [m.group(0) for pattern in (INSTANCE_TYPE_NAME, INSTANCE_TYPE_BRANCH) for m in pattern.finditer(code)]


def test_no_shell_file_derives_a_fact_from_an_instance_type_name():
    # What a type has (EFA interfaces, devices, LNC, S3 bandwidth) is model/catalog.py's, rendered into node.env at
    # synth; a script that matched the type's name would be a second catalog that the synth checks never see.
    shell = [p for p in SCRIPTS.rglob("*") if p.is_file() and (p.suffix == ".sh" or not p.suffix)]
    assert set(ALL_SHELL) <= set(shell)
    found = {p.relative_to(SCRIPTS).as_posix(): instance_type_facts(code_of(p)) for p in shell}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_instance_type_check_catches_a_branch():
    # The two the catalog replaced: the CRT target by type, and the LNC by family.
    assert instance_type_facts('case ${DI_INSTANCE_TYPE:-} in\n  trn2.48xlarge) echo 400Gb/s ;;\nesac') == [
        "trn2.48xlarge", "case ${DI_INSTANCE_TYPE"]
    assert instance_type_facts('[[ ${DI_INSTANCE_TYPE:-} == trn2* ]]') == ["trn2*", "${DI_INSTANCE_TYPE:-} =="]
    assert instance_type_facts('[[ $DI_INSTANCE_TYPE =~ ^p5\\. ]]') == ["p5\\.", "$DI_INSTANCE_TYPE =~"]
    assert instance_type_facts('log "efa: $(efa_interface_count) of $DI_EXPECTED_EFA_INTERFACES"') == []


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
