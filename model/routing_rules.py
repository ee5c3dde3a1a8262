"""Rules on `routing:` (model/routing_config.py): what the proxy and the workers can serve. Each problem with its
dotted path and fix."""

from __future__ import annotations

from typing import Iterator

from model.config import DeploymentConfig
from model.problems import Problem


def check(config: DeploymentConfig) -> Iterator[Problem]:
    routing = config.routing
    fields = routing.model_fields_set
    if not config.runs_distack_proxy:
        if fields:
            yield Problem("routing", f"the {config.proxy} proxy does no cache-aware routing, so routing would do "
                                     "nothing", "remove routing, or set proxy: distack")
        return
    if routing.mode == "precise":
        yield Problem("routing.mode", "precise routing needs the `tokenizers` package in the proxy's environment "
                                      "(not in diproxy/requirements.lock yet), the model's tokenizer.json on the "
                                      "control host and the workers started with vLLM's --kv-events-config, none of "
                                      "which this stack sets up yet",
                      "set routing.mode: approximate (the default)")
    if config.mode == "standard" and "pd_decider" in fields and routing.pd_decider.enabled:
        yield Problem("routing.pd_decider", "standard mode has no prefill hop to skip",
                      "remove routing.pd_decider, or set its enabled: false")
    if routing.mode == "blind" and "pd_decider" in fields and routing.pd_decider.enabled:
        yield Problem("routing.pd_decider", "blind routing knows no worker's cached prefix, so the PD decider "
                                            "would never find a short uncached part",
                      "set routing.mode: approximate, or routing.pd_decider.enabled: false")
    if config.engine != "nixl" and routing.migration_limit and "migration_limit" in fields:
        yield Problem("routing.migration_limit", f"engine {config.engine}'s protocol does not carry streams to a "
                                                 "new pair (only nixl's does)",
                      "remove routing.migration_limit, or set it to 0")
