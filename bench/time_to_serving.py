"""Time to serving on paper: per shipped environment and fleet, the steps from launch to /health of a new worker,
cold (new instance) and warm (from a Stopped warm pool), each with its figure's basis and source
(model/serving_time.py). Also the goal check (the 70B `prod` fleets serve within 10 minutes from a warm pool)
and where a warm start's weights can wait, with the seconds each choice costs.

    .venv/bin/python bench/time_to_serving.py [--env NAME ...] [--layout target|current] [--json] [--plain]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import serving_time  # noqa: E402
from model.config import DeploymentConfig  # noqa: E402
from model.loader import ConfigError, available_environments, load_environment  # noqa: E402

GOAL_ENV = "prod"
GOAL_SECONDS = 600


def clock(seconds: float) -> str:
    """Seconds as 0m00s (the table reads in minutes)."""
    whole = round(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"


def groups(config: DeploymentConfig, layout: serving_time.Layout) -> list[tuple[list[str], Any, Any]]:
    """Fleets whose cold and warm steps are identical print once: (fleet names, cold, warm)."""
    out: list[tuple[list[str], Any, Any]] = []
    for name in config.fleets:
        cold = serving_time.estimate(config, name, warm=False, layout=layout)
        warm = serving_time.estimate(config, name, warm=True, layout=layout)
        for names, seen_cold, seen_warm in out:
            if seen_cold.steps == cold.steps and seen_warm.steps == warm.steps:
                names.append(name)
                break
        else:
            out.append(([name], cold, warm))
    return out


class Sources:
    """Numbers each distinct source once, in order of first use."""

    def __init__(self) -> None:
        self.order: dict[str, int] = {}

    def refs(self, step: serving_time.Step) -> list[int]:
        numbers = []
        for text in step.source.split(" | "):
            numbers.append(self.order.setdefault(text, len(self.order) + 1))
        return numbers


def heading(config: DeploymentConfig, names: list[str]) -> str:
    fleet = config.fleets[names[0]]
    endpoints = len(fleet.resolved_endpoints)
    return (f"{config.name} (fleet{'s' if len(names) > 1 else ''} {', '.join(names)}): {config.model.id}, "
            f"{serving_time.weights_bytes(config) / serving_time.GB:.0f} GB of {config.model.dtype} weights from "
            f"{config.model.source}; engine {config.engine}; {fleet.instance_type}, {endpoints} "
            f"endpoint{'s' if endpoints > 1 else ''} of TP {fleet.tensor_parallel}")


def rows(cold: serving_time.ServingTime, warm: serving_time.ServingTime, sources: Sources) -> list[list[str]]:
    out = []
    for c, w in zip(cold.steps, warm.steps):
        refs = sorted(set(sources.refs(c)) | set(sources.refs(w)))
        basis = c.basis if c.basis == w.basis else f"{c.basis} / {w.basis}"
        out.append([c.name, clock(c.seconds), clock(w.seconds), basis, " ".join(f"[{n}]" for n in refs)])
    out.append(["total", clock(cold.total_seconds), clock(warm.total_seconds), "", ""])
    return out


def goal_line(configs: dict[str, DeploymentConfig], layout: serving_time.Layout) -> str | None:
    config = configs.get(GOAL_ENV)
    if config is None:
        return None
    worst = max((serving_time.estimate(config, name, warm=True, layout=layout) for name in config.fleets),
                key=lambda t: t.total_seconds)
    met = "met" if worst.total_seconds <= GOAL_SECONDS else "NOT met"
    top = worst.dominant()
    return (f"Goal: a {GOAL_ENV} worker from the warm pool serves within {GOAL_SECONDS // 60} min: {met} "
            f"({clock(worst.total_seconds)}, fleet {worst.fleet}; longest step: {top.name}, {clock(top.seconds)})")


def from_s3_line(config: DeploymentConfig, layout: serving_time.Layout) -> str | None:
    """What a cold start costs once the weights are mirrored into the artifacts bucket (model.source: s3)."""
    if config.model.source == "s3":
        return None
    mirrored = config.model_copy(update={"model": config.model.model_copy(update={"source": "s3"})})
    fleet = next(iter(config.fleets))
    before = serving_time.estimate(config, fleet, warm=False, layout=layout).total_seconds
    after = serving_time.estimate(mirrored, fleet, warm=False, layout=layout).total_seconds
    gain = f"{clock(after)} instead of {clock(before)}" if after < before else "no faster under this layout"
    return (f"A cold {config.name} worker with the weights in the artifacts bucket (model.source: s3) instead of "
            f"{config.model.source}: {gain}")


def tradeoff(config: DeploymentConfig) -> list[list[str]]:
    fleet = next(iter(config.fleets))
    return [[option, clock(seconds), basis]
            for option, seconds, basis in serving_time.warm_weights_options(config, fleet)]


def render_tables(tables: list[tuple[str, list[str], list[list[str]]]], plain: bool) -> None:
    try:
        if plain:
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for title, header, body in tables:
            print(title)
            print()
            widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
            for row in [header, *body]:
                cells = [cell.rjust(width) if index in (1, 2) and len(header) == 5 else cell.ljust(width)
                         for index, (cell, width) in enumerate(zip(row, widths))]
                print("  " + "  ".join(cells).rstrip())
            print()
        return
    console = Console(width=160)
    for title, header, body in tables:
        console.print(title, highlight=False)
        table = Table(show_edge=False)
        for index, name in enumerate(header):
            table.add_column(name, justify="right" if index in (1, 2) and len(header) == 5 else "left")
        for row in body:
            table.add_row(*row, style="bold" if row[0] == "total" else None)
        console.print(table)
        console.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="environment (repeatable); default: every shipped one")
    parser.add_argument("--layout", choices=sorted(serving_time.LAYOUTS), default=serving_time.TARGET.name,
                        help="node storage layout to model (default: target)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plain", action="store_true", help="aligned text even when rich is installed")
    args = parser.parse_args(argv)
    layout = serving_time.LAYOUTS[args.layout]
    configs: dict[str, DeploymentConfig] = {}
    try:
        for name in args.env or available_environments():
            configs[name] = load_environment(name, warn=lambda _: None)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2

    if args.json:
        out = [{"environment": t.environment, "fleet": t.fleet, "layout": t.layout, "warm": t.warm,
                "total_seconds": round(t.total_seconds, 1),
                "steps": [{"name": s.name, "seconds": s.seconds, "basis": s.basis, "detail": s.detail,
                           "sources": s.source.split(" | ")} for s in t.steps]}
               for config in configs.values() for fleet in config.fleets for warm in (False, True)
               for t in [serving_time.estimate(config, fleet, warm=warm, layout=layout)]]
        print(json.dumps({"layout": layout.name, "layout_summary": layout.summary, "estimates": out,
                          "goal": goal_line(configs, layout)}, indent=2))
        return 0

    sources = Sources()
    tables = []
    summary = []
    for config in configs.values():
        for names, cold, warm in groups(config, layout):
            tables.append((heading(config, names), ["step", "cold", "warm", "basis", "sources"],
                           rows(cold, warm, sources)))
            summary.append([config.name, ", ".join(names), clock(cold.total_seconds), clock(warm.total_seconds),
                            cold.dominant().name, warm.dominant().name])
    print(f"Time to serving, launch to /health (layout {layout.name}: {layout.summary}).")
    print("Compiled artifacts are assumed in S3 (dictl compile); without them the first start also compiles "
          f"(70B: {serving_time.COMPILE_70B.source}).\n")
    render_tables([("Summary", ["environment", "fleets", "cold", "warm", "longest cold step", "longest warm step"],
                    summary)], args.plain)
    render_tables(tables, args.plain)
    goal = goal_line(configs, layout)
    if goal:
        print(goal)
    mirrored = from_s3_line(configs[GOAL_ENV], layout) if GOAL_ENV in configs else None
    if mirrored:
        print(mirrored)
    print()
    if GOAL_ENV in configs:
        render_tables([(f"Where a warm {GOAL_ENV} worker's weights wait: time until they are on the Neuron cores",
                        ["option", "seconds", "basis"], tradeoff(configs[GOAL_ENV]))], args.plain)
    print("Sources:")
    for text, number in sources.order.items():
        print(f"  [{number}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
