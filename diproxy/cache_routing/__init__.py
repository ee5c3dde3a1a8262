"""Cache-aware worker choice: which prefill and which decode hold the request's prefix, whether the prefill hop pays,
and how a stream is carried to a new decode. Pure and bounded: nothing here does I/O but kv_events.Subscriber.

Modules, one concern each:
- blocks: a request's prefix as chained block keys (text for the approximate mode, token ids for the precise one).
- index: which worker holds which block, bounded per worker with LRU eviction.
- choice: a worker per role from cached prefix and load, with bounded load and a deterministic tie-break.
- kv_events: vLLM's KV events (BlockStored/BlockRemoved/AllBlocksCleared) decoded, and a ZMQ subscriber.
- precise: a BlockIndex fed by those events, and the request side through an injected tokenizer.
- pd_decider: serve on decode alone when the uncached part of the prompt is short.
- migration: the continuation request for a stream whose decode died.
docs/routing.md gives the design and the sources."""
