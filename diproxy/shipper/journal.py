"""Read one unit's journal as JSON through journalctl, from a saved cursor on."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from diproxy.shipper.log_batches import LogEntry


def journal_command(journalctl: str, unit: str, cursor: str | None, follow: bool) -> list[str]:
    """``--all`` keeps long messages whole (JSON output otherwise nulls fields over 4096 bytes):
    https://www.freedesktop.org/software/systemd/man/latest/journalctl.html"""
    command = [journalctl, "--unit", unit, "--output", "json", "--all", "--no-pager"]
    if cursor:
        command += ["--after-cursor", cursor]
    else:
        command += ["--boot"]  # first run: this boot only, not every proxy line the disk still holds
    if follow:
        command += ["--follow", "--lines", "all"]
    return command


def parse_entry(line: bytes | str) -> LogEntry | None:
    """One JSON line of journalctl into a LogEntry; None for a line that is not a journal entry."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "__CURSOR" not in record:
        return None
    message = record.get("MESSAGE")
    if isinstance(message, list):  # journald exports non-UTF-8 messages as a byte array
        message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode(errors="replace")
    elif not isinstance(message, str):
        message = ""
    try:
        timestamp_ms = int(record.get("__REALTIME_TIMESTAMP", "0")) // 1000
    except (TypeError, ValueError):
        timestamp_ms = 0
    return LogEntry(timestamp_ms, message, str(record["__CURSOR"]))


async def read_journal(command: list[str]) -> AsyncIterator[LogEntry]:
    """Entries as journalctl prints them; ends when journalctl exits, and raises if it failed."""
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, limit=4 * 1024 * 1024)
    assert process.stdout is not None and process.stderr is not None
    try:
        while line := await process.stdout.readline():
            entry = parse_entry(line)
            if entry is not None:
                yield entry
        error = (await process.stderr.read()).decode(errors="replace").strip()
        if await process.wait() != 0:
            raise RuntimeError(f"journalctl exited {process.returncode}: {error or 'no message'}")
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
