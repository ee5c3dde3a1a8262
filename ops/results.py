"""What a Run Command operation produced: each instance's result and the run as a whole.

Shared by ops.commands (which builds them) and ops.output (which prints them); neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InstanceResult:
    """How one instance ran the command."""

    instance_id: str
    status: str
    output: str = ""
    role: str = "?"
    fleet: str = "?"
    command_id: str = ""

    @property
    def ok(self) -> bool:
        """Only a clean Success counts."""
        return self.status == "Success"


@dataclass
class RunResult:
    """Every instance's result of one operation (possibly several commands, e.g. one per fleet)."""

    document: str
    results: list[InstanceResult] = field(default_factory=list)
    command_ids: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[InstanceResult]:
        """Instances that did not succeed."""
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        """True only if there were targets and every one succeeded."""
        return bool(self.results) and not self.failed

    def extend(self, other: RunResult) -> None:
        """Merge another batch's results into this one."""
        self.results.extend(other.results)
        self.command_ids.extend(other.command_ids)
