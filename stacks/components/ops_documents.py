"""SSM Command documents: one per YAML file in `stacks/documents/`, named by `naming.ssm_document`."""

from __future__ import annotations

from pathlib import Path

import yaml
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from model import naming

DOCUMENTS_DIR = Path(__file__).resolve().parent.parent / "documents"


class OpsDocuments(Construct):
    """Exposes ``documents`` (verb -> CfnDocument)."""

    def __init__(self, scope: Construct, construct_id: str, *, env_name: str) -> None:
        super().__init__(scope, construct_id)
        self.documents: dict[str, ssm.CfnDocument] = {}
        for path in sorted(DOCUMENTS_DIR.glob("*.yaml")):
            verb = path.stem
            self.documents[verb] = ssm.CfnDocument(
                self, naming.pascal(verb),
                name=naming.ssm_document(env_name, verb),
                document_type="Command",
                document_format="YAML",
                content=yaml.safe_load(path.read_text(encoding="utf-8")),
                # A named document changes in place (new version) instead of failing on a name clash.
                update_method="NewVersion",
            )
