"""Print the JSON Schema of config files (`make schema` writes it to config/schema.json for editors)."""

from __future__ import annotations

import json

from model.config import DeploymentConfig


def schema_text() -> str:
    """The schema as committed: stable key order, trailing newline."""
    return json.dumps(DeploymentConfig.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
