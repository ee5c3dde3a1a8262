"""The README's and docs' commands: the README opens with `make synth` and `make test`, every `dictl` command line
parses with today's CLI, every `make` line is a target make accepts (dry run), and the ones that need no AWS run."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ops.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^ *```(?:bash|sh)\n(.*?)^ *```", re.S | re.M)
SPAN = re.compile(r"`((?:\.venv/bin/)?dictl [^`]+|make [a-z-]+(?: [A-Z_]+=[A-Za-z0-9_-]+)*)`")
# Spans that show a pattern rather than a command: `dictl VERB --help`, `[--clear-kv-lock]`, `a|b` and `--a/--b`
# alternatives; and a bare `dictl VERB`, which names a verb in prose.
PATTERN = re.compile(r"\bVERB\b|\[|\||…|\.\.\.|/--|^(\.venv/bin/)?dictl [a-z-]+$")


def _commands(text: str) -> list[str]:
    """Shell commands in fenced bash/sh blocks (continuations joined, comments and `&&` chains split)."""
    found = []
    for block in BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "X", line)  # $(dictl outputs ...) -> one word
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";", "&", "||"):
                    if command:
                        found.append(shlex.join(command))
                    command = []
                else:
                    command.append(word)
    return found + [span for span in SPAN.findall(text) if not PATTERN.search(span)]


COMMANDS = sorted({(page.relative_to(ROOT).as_posix(), command)
                   for page in PAGES for command in _commands(page.read_text())})
DICTL = [(page, command) for page, command in COMMANDS if re.match(r"(\.venv/bin/)?dictl ", command)]
MAKE = [(page, command) for page, command in COMMANDS if command.startswith("make ")]


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[:3] == ["# DiStack", "", "```sh"] and lines[5] == "```", lines[:6]
    assert lines[3].startswith("make synth ") and lines[4].startswith("make test "), lines[3:5]


def test_the_pages_show_dictl_and_make_commands() -> None:
    assert len(DICTL) > 20 and len(MAKE) > 5


@pytest.mark.parametrize("page,command", DICTL, ids=[c for _, c in DICTL])
def test_dictl_command_parses(page: str, command: str) -> None:
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as stop:  # --version and --help end here with 0
        if stop.code == 0:
            return
        pytest.fail(f"{page}: `{command}` does not parse (exit {stop.code})")


def test_make_commands_are_targets_make_accepts() -> None:
    failures = []
    for page, command in MAKE:
        run = subprocess.run([*shlex.split(command), "-n"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        if run.returncode != 0:
            failures.append(f"{page}: `{command}` -> {run.stderr.strip()[-300:]}")
    assert not failures, "\n".join(failures)


def test_commands_that_need_no_aws_run(capsys: pytest.CaptureFixture[str]) -> None:
    # `dictl --version` and every verb's --help: printed, exit 0, nothing on stderr.
    verbs = sorted({shlex.split(c)[1] for _, c in DICTL if not shlex.split(c)[1].startswith("-")})
    for argv in (["--version"], *[[verb, "--help"] for verb in verbs]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        out, err = capsys.readouterr()
        assert stop.value.code == 0 and out and not err, argv
