"""DiStack proxy: routes OpenAI-style requests to prefill/decode worker pairs (NeuronConnector protocol)."""

__version__ = "0.1.0"
