"""The dashboard's layout as ASCII boxes, drawn from the synthesized dashboard body (each widget's x, y, width,
height and title), so the picture in docs/observability.md is the dashboard the stack builds.

    python bench/dashboard_layout.py prod      # synthesizes config/prod.yaml (a few seconds), prints the layout
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any, Sequence

COLUMN_CHARS = 4  # a dashboard is 24 units wide: 96 characters
LINES_PER_UNITS = (2, 3)  # 2 lines per 3 height units: a graph (6) takes 4 lines, the header (3) 2


def title_of(widget: dict[str, Any]) -> str:
    props = widget.get("properties", {})
    if "title" in props:
        return str(props["title"])
    first = str(props.get("markdown", "")).strip().splitlines()
    return first[0].lstrip("# ") if first else widget.get("type", "")


def ascii_layout(widgets: Sequence[dict[str, Any]]) -> str:
    """One box per widget at its place; titles wrapped inside their box."""
    def row_of(units: int) -> int:
        return units * LINES_PER_UNITS[0] // LINES_PER_UNITS[1]

    bottom = row_of(max(w["y"] + w["height"] for w in widgets))
    canvas = [[" "] * (24 * COLUMN_CHARS + 1) for _ in range(bottom + 1)]
    for w in widgets:
        left, right = w["x"] * COLUMN_CHARS, (w["x"] + w["width"]) * COLUMN_CHARS
        top, low = row_of(w["y"]), row_of(w["y"] + w["height"])
        for col in range(left, right + 1):
            for line in (top, low):
                canvas[line][col] = "+" if col in (left, right) else "-"
        for line in range(top + 1, low):
            canvas[line][left] = canvas[line][right] = "|"
        for n, text in enumerate(textwrap.wrap(title_of(w), right - left - 3)[: max(0, low - top - 1)]):
            for i, char in enumerate(text):
                canvas[top + 1 + n][left + 2 + i] = char
    return "\n".join("".join(row).rstrip() for row in canvas)


def dashboard_widgets(template: dict[str, Any]) -> list[dict[str, Any]]:
    """The widgets of the one dashboard in a synthesized template (tokens in the body replaced by a placeholder)."""
    (board,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    body = board["Properties"]["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    return json.loads("".join(p if isinstance(p, str) else "TOKEN" for p in parts))["widgets"]


def main(argv: Sequence[str]) -> int:
    import aws_cdk as cdk

    from stacks.app_builder import build_app
    from model.loader import load_environment

    env = argv[0] if argv else "prod"
    app = cdk.App(context={"env": env})
    stack = build_app(app, load_environment(env))
    template = app.synth().get_stack_artifact(stack.artifact_id).template
    print(ascii_layout(dashboard_widgets(template)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
