#!/usr/bin/env bash
# Asking a local vLLM endpoint how it is: its /health status and its own Prometheus metrics. Sourced, never run.
# vLLM's metrics (vllm-project/vllm vllm/v1/metrics/loggers.py@005a810bc40f, PrometheusStatLogger):
# "vllm:num_requests_running" ("Number of requests in model execution batches") and "vllm:num_requests_waiting"
# ("Number of requests waiting to be processed"), one series per engine (labels model_name, engine);
# "vllm:kv_cache_usage_perc" ("KV-cache usage. 1 means 100 percent usage"; BlockPool.get_usage in
# vllm/v1/core/block_pool.py, 0 when every block is free).

# health_code PORT: HTTP status of a local vLLM endpoint's /health (000 when nothing answers).
health_code() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1/health" 2>/dev/null) || true
  printf '%s\n' "${code:-000}"
}

# vllm_metrics PORT: the endpoint's /metrics text. Status 7 when nothing listens there (the server is down).
vllm_metrics() { curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null; }

# metric_sum NAME: the sum of NAME over its series in the exposition text on stdin; fails when there is none.
metric_sum() {
  awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $NF; found = 1 }
    END { if (!found) exit 1; printf "%g\n", sum }'
}
