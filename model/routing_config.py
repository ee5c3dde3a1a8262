"""The proxy's cache-aware routing, per deployment (`routing:`; diproxy/prefix_routing.py, docs/routing.md), and the
proxy.env values it becomes. Never imports aws_cdk or model.config (config imports this module; `dictl` reads it).

The defaults are what measured best in bench/routing.py and bench/routing_loopback.py (docs/routing.md): approximate
mode with the PD decider on Dynamo's bounds, epsilon 0.25, load weight 0. The migration limit defaults to 3 rather
than Dynamo's 0: each migration re-prefills the prompt and the tokens so far, which costs one prefill, while a stream
lost to a dying decode costs the client its whole answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODES = ("blind", "approximate", "precise")
# The proxy's own default when a deployment sets no capacity: 16384 blocks of block_bytes per worker (docs/routing.md
# sizes the index to a worker's KV cache: its KV blocks x tokens per block / (block_bytes / 4)).
DEFAULT_CAPACITY = 16384


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PdDeciderConfig(_Model):
    """Disaggregate only when it pays: decode serves a request alone when the part of the prompt it lacks is below
    both bounds (ai-dynamo/dynamo lib/kv-router/src/conditional_disagg.rs@088ca50b defaults)."""

    enabled: bool = Field(default=True, description="Off: every request takes the prefill hop.")
    max_uncached_tokens: int = Field(default=2048, ge=1, le=1_000_000,
                                     description="Decode alone only below this many uncached prompt tokens.")
    max_uncached_ratio: float = Field(default=0.7, gt=0, le=1,
                                      description="... and below this share of the prompt uncached.")


class RoutingConfig(_Model):
    """How DiStack's proxy chooses workers (proxy: distack)."""

    mode: Literal["blind", "approximate", "precise"] = Field(
        default="approximate",
        description="blind: least in flight; approximate: by cached prefix estimated from the request's text (every "
                    "engine); precise: from the workers' vLLM KV events (needs the tokenizers package, not yet in "
                    "the proxy's environment).")
    epsilon: float = Field(default=0.25, ge=0, le=10,
                           description="Bounded load: no worker above (1 + epsilon) of its fair share.")
    load_weight: float = Field(default=0.0, ge=0, le=100_000,
                               description="Blocks of cached prefix one request in flight is worth.")
    block_bytes: int = Field(default=256, ge=16, le=65_536,
                             description="Approximate mode: prompt bytes per block (about 4 bytes a token).")
    capacity: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="Blocks remembered per worker. Size it to the worker's KV cache: KV blocks x tokens per block / "
                    "(block_bytes / 4). Default: 16384.")
    pd_decider: PdDeciderConfig = Field(default_factory=PdDeciderConfig,
                                        description="Serve on decode alone when the uncached part is short.")
    migration_limit: int = Field(default=3, ge=0, le=10,
                                 description="Times a stream whose decode died after the first byte is carried to a "
                                             "new pair (0: never, Dynamo's default).")


def proxy_env(routing: RoutingConfig) -> dict[str, str]:
    """The proxy's DIPROXY_* settings for routing (diproxy/config.py reads them as its --routing* flags)."""
    pd = routing.pd_decider
    return {
        "DIPROXY_ROUTING": routing.mode,
        "DIPROXY_ROUTING_EPSILON": repr(routing.epsilon),
        "DIPROXY_ROUTING_LOAD_WEIGHT": repr(routing.load_weight),
        "DIPROXY_ROUTING_BLOCK_BYTES": str(routing.block_bytes),
        "DIPROXY_ROUTING_CAPACITY": str(routing.capacity or DEFAULT_CAPACITY),
        "DIPROXY_PD_MAX_UNCACHED_TOKENS": str(pd.max_uncached_tokens if pd.enabled else 0),
        "DIPROXY_PD_MAX_UNCACHED_RATIO": repr(pd.max_uncached_ratio),
        "DIPROXY_MIGRATION_LIMIT": str(routing.migration_limit),
    }
