"""`dictl compare`: two LLMPerf summary files side by side (DI vs baseline), local paths or s3:// URIs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from ops.aws import objects
from ops.errors import UsageError
from ops.output import table
from model import naming
from model.write_scope import split_key

# (label, key in LLMPerf's *_summary.json, unit scale, unit, True when higher is better)
METRICS: tuple[tuple[str, str, float, str, bool], ...] = (
    ("TTFT mean", "results_ttft_s_mean", 1000.0, "ms", False),
    ("TTFT p50", "results_ttft_s_quantiles_p50", 1000.0, "ms", False),
    ("TTFT p90", "results_ttft_s_quantiles_p90", 1000.0, "ms", False),
    ("TTFT p99", "results_ttft_s_quantiles_p99", 1000.0, "ms", False),
    ("inter-token latency mean", "results_inter_token_latency_s_mean", 1000.0, "ms", False),
    ("inter-token latency p50", "results_inter_token_latency_s_quantiles_p50", 1000.0, "ms", False),
    ("inter-token latency p99", "results_inter_token_latency_s_quantiles_p99", 1000.0, "ms", False),
    ("end-to-end latency mean", "results_end_to_end_latency_s_mean", 1.0, "s", False),
    ("output throughput", "results_mean_output_throughput_token_per_s", 1.0, "tok/s", True),
    ("per-request throughput mean", "results_request_output_throughput_token_per_s_mean", 1.0, "tok/s", True),
    ("completed requests/min", "results_num_completed_requests_per_min", 1.0, "req/min", True),
    ("errors", "results_number_errors", 1.0, "", False),
)
SUMMARY_SUFFIX = "_summary.json"
# The workload LLMPerf records in every summary (token_benchmark_ray.py's metadata); two runs compare only if
# these match. A key missing from either file is not compared (older or hand-made summaries).
WORKLOAD: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("mean_input_tokens", "mean input tokens"),
    ("stddev_input_tokens", "stddev input tokens"),
    ("mean_output_tokens", "mean output tokens"),
    ("stddev_output_tokens", "stddev output tokens"),
    ("num_concurrent_requests", "concurrency"),
)


def load_summary(location: str, s3: Callable[[], Any]) -> dict[str, Any]:
    """A summary file, or the one *_summary.json inside a results directory or s3:// prefix."""
    if location.startswith("s3://"):
        return json.loads(_read_s3(location, s3()))
    path = Path(location)
    if path.is_dir():
        found = sorted(path.rglob(f"*{SUMMARY_SUFFIX}"))
        if not found:
            raise UsageError(f"{location}: no *{SUMMARY_SUFFIX} inside\n  fix: point at LLMPerf's --results-dir")
        path = found[0]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{location}: cannot read: {err.strerror}\n  fix: check the path") from None
    except ValueError as err:
        raise UsageError(f"{location}: not JSON ({err})\n  fix: pass LLMPerf's *{SUMMARY_SUFFIX}") from None


def _read_s3(uri: str, s3: Any) -> str:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    try:
        if not key.endswith(".json"):
            prefix = key.rstrip("/") + "/" if key else ""
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
            keys = sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(SUMMARY_SUFFIX))
            if not keys:
                keys = _in_writer_folder(s3, bucket, uri, prefix)
            if not keys:
                raise UsageError(f"{uri}: no *{SUMMARY_SUFFIX} under this prefix\n"
                                 "  fix: pass s3://BUCKET/bench/ROLE-ID:INSTANCE-ID/RUN-ID/ as printed by `dictl bench`")
            key = keys[0]
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except (ClientError, BotoCoreError) as err:
        raise UsageError(f"{uri}: cannot read: {err}\n  fix: check the URI and your credentials") from None


def _in_writer_folder(s3: Any, bucket: str, uri: str, prefix: str) -> list[str]:
    """For s3://BUCKET/bench/RUN-ID/: the summaries of RUN-ID in the one node folder that holds it, the control host
    writing bench/ROLE-ID:INSTANCE-ID/RUN-ID/ (model/write_scope.py); the writer is printed. Several folders with the
    same run ID are ambiguous and named."""
    bench = naming.BUCKET_PREFIX_BENCH
    run_id = prefix[len(bench):].strip("/")
    if not prefix.startswith(bench) or not run_id or "/" in run_id:
        return []
    found: dict[str, list[str]] = {}
    for obj in objects(s3, bucket, bench):
        writer, rest = split_key(bench, obj["Key"])
        if writer is not None and rest.startswith(f"{run_id}/") and obj["Key"].endswith(SUMMARY_SUFFIX):
            found.setdefault(writer.userid, []).append(obj["Key"])
    if len(found) > 1:
        raise UsageError(f"{uri}: run {run_id} is in several node folders\n"
                         + "".join(f"  s3://{bucket}/{bench}{userid}/{run_id}/\n" for userid in sorted(found))
                         + "  fix: pass one of them")
    for userid, keys in found.items():
        print(f"{uri}: results written by {userid.split(':', 1)[1]} (s3://{bucket}/{bench}{userid}/{run_id}/)",
              file=sys.stderr)
        return sorted(keys)
    return []


def compare(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric present in either file, with the change of `first` relative to `second`."""
    rows = []
    for label, key, scale, unit, higher_better in METRICS:
        a, b = _number(first.get(key)), _number(second.get(key))
        if a is None and b is None:
            continue
        change = None
        if a is not None and b not in (None, 0):
            change = (a - b) / b * 100.0
        better = None if change is None or change == 0 else (change > 0) == higher_better
        rows.append({"metric": label, "unit": unit, "first": None if a is None else a * scale,
                     "second": None if b is None else b * scale, "change_percent": change, "first_better": better})
    return rows


def workload_differences(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Workload fields both summaries record with different values."""
    return [{"field": key, "label": label, "first": first[key], "second": second[key]}
            for key, label in WORKLOAD
            if key in first and key in second and str(first[key]) != str(second[key])]


def render_differences(differences: list[dict[str, Any]], first_name: str, second_name: str) -> str:
    """One indented line per differing workload field."""
    return "\n".join(f"  {d['label']}: {d['first']} ({first_name}) vs {d['second']} ({second_name})"
                     for d in differences)


def render(rows: list[dict[str, Any]], first_name: str, second_name: str) -> str:
    """The comparison as a text table."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    lines = []
    for row in rows:
        change = "-" if row["change_percent"] is None else f"{row['change_percent']:+.1f}%"
        verdict = {True: "better", False: "worse", None: ""}[row["first_better"]]
        lines.append((row["metric"], row["unit"], cell(row["first"]), cell(row["second"]), change, verdict))
    return table(("METRIC", "UNIT", first_name.upper(), second_name.upper(), "CHANGE", ""), lines)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
