"""Whether a request takes the prefill hop, decided per request from the decode candidate's cached prefix: when the
part of the prompt that decode lacks is short, decode prefills it itself (vLLM without kv_transfer_params prefills
locally) and the request skips a prefill queue, a KV transfer and a second HTTP leg.

Two published rules, both on the uncached suffix on the chosen decode worker:
- llm-d's prefix-based PD decider (llm-d/llm-d-inference-scheduler pkg/epp/framework/plugins/scheduling/
  profilehandler/disagg/prefix_based_pd_decider.go@520af478): disaggregate only if prompt - cached >= nonCachedTokens
  (default 0 = decider off; deploy/config/pd-epp-config.yaml uses 16, the plugin README's example 512).
- Dynamo's conditional disaggregation (ai-dynamo/dynamo lib/kv-router/src/conditional_disagg.rs@088ca50b
  IslBoundingPolicy): serve on decode alone if eff_isl < 2048 tokens AND eff_isl / prompt < 0.7, eff_isl being the
  prompt minus decode's cached prefix.
The default here is Dynamo's pair, the only published default with a rationale (bounded net-new prefill on decode,
and only when the cache covers most of the prompt, so long fresh prompts still go to prefill). bench/routing.py
measures it against always disaggregating (docs/routing.md)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_UNCACHED_TOKENS = 2048  # Dynamo DEFAULT_CONDITIONAL_DISAGG_EFF_ISL_THRESHOLD
DEFAULT_MAX_UNCACHED_RATIO = 0.7  # Dynamo DEFAULT_CONDITIONAL_DISAGG_EFF_ISL_RATIO_THRESHOLD


@dataclass(frozen=True)
class PdDecider:
    enabled: bool = True
    max_uncached_tokens: int = DEFAULT_MAX_UNCACHED_TOKENS
    max_uncached_ratio: float = DEFAULT_MAX_UNCACHED_RATIO

    def __post_init__(self) -> None:
        if self.max_uncached_tokens < 0 or not 0.0 <= self.max_uncached_ratio <= 1.0:
            raise ValueError("max_uncached_tokens must be >= 0 and max_uncached_ratio within [0, 1]")

    def decode_alone(self, prompt_tokens: int, cached_tokens_on_decode: int) -> bool:
        """True: send the request to decode without the prefill hop. Both bounds are strict, as Dynamo's."""
        if not self.enabled:
            return False
        uncached = max(0, prompt_tokens - cached_tokens_on_decode)
        if uncached >= self.max_uncached_tokens:
            return False
        return uncached / max(prompt_tokens, 1) < self.max_uncached_ratio
