"""`dictl compare`: LLMPerf summaries side by side, from local files, results directories or S3."""

from __future__ import annotations

import json
from pathlib import Path

from ops import bench
from tests.ops.conftest import BUCKET

DI = {"results_ttft_s_mean": 0.5, "results_ttft_s_quantiles_p50": 0.45,
      "results_inter_token_latency_s_mean": 0.020, "results_mean_output_throughput_token_per_s": 300.0,
      "results_number_errors": 0, "model": "m"}
BASELINE = {"results_ttft_s_mean": 1.0, "results_ttft_s_quantiles_p50": 0.9,
            "results_inter_token_latency_s_mean": 0.025, "results_mean_output_throughput_token_per_s": 200.0,
            "results_number_errors": 0}


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_compare_rows_show_change_and_which_side_is_better() -> None:
    rows = {r["metric"]: r for r in bench.compare(DI, BASELINE)}
    assert rows["TTFT mean"]["first"] == 500.0 and rows["TTFT mean"]["second"] == 1000.0
    assert rows["TTFT mean"]["change_percent"] == -50.0 and rows["TTFT mean"]["first_better"] is True
    assert rows["output throughput"]["change_percent"] == 50.0 and rows["output throughput"]["first_better"] is True
    assert rows["inter-token latency mean"]["first_better"] is True
    assert rows["errors"]["first_better"] is None
    assert "TTFT p99" not in rows, "metrics neither file has are left out"


def test_compare_local_files_and_directories(world, tmp_path) -> None:
    di = _write(tmp_path / "di" / "llama_1024_100_summary.json", DI)
    _write(tmp_path / "base" / "llama_1024_100_summary.json", BASELINE)
    code, out, _ = world.dictl("compare", str(di), str(tmp_path / "base"))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["METRIC", "UNIT", "DI", "BASELINE"]
    ttft = next(line for line in lines if line.startswith("TTFT mean"))
    assert "500.00" in ttft and "1,000.00" in ttft and "-50.0%" in ttft and "better" in ttft


def test_compare_reads_s3_run_prefixes_as_json(world) -> None:
    s3 = world.client("s3")
    s3.put_object(Bucket=BUCKET, Key="bench/di-1/m_1024_100_summary.json", Body=json.dumps(DI).encode())
    s3.put_object(Bucket=BUCKET, Key="bench/di-1/m_1024_100_individual_responses.json", Body=b"[]")
    s3.put_object(Bucket=BUCKET, Key="bench/base-1/m_summary.json", Body=json.dumps(BASELINE).encode())
    code, out, _ = world.dictl("compare", f"s3://{BUCKET}/bench/di-1/", f"s3://{BUCKET}/bench/base-1/m_summary.json",
                               "--names", "di", "base", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["first"] == "di"
    throughput = next(m for m in payload["metrics"] if m["metric"] == "output throughput")
    assert throughput["first"] == 300.0 and throughput["second"] == 200.0


def test_compare_finds_a_run_in_the_node_folder_that_wrote_it_and_says_which(world) -> None:
    s3 = world.client("s3")
    folder = "bench/AROAEXAMPLECONTROL001:i-0aaaaaaaaaaaaaaaa/di-2/"
    s3.put_object(Bucket=BUCKET, Key=folder + "m_summary.json", Body=json.dumps(DI).encode())
    s3.put_object(Bucket=BUCKET, Key="bench/AROAEXAMPLECONTROL001:i-0aaaaaaaaaaaaaaaa/other/m_summary.json",
                  Body=json.dumps(BASELINE).encode())
    code, out, err = world.dictl("compare", f"s3://{BUCKET}/bench/di-2/", f"s3://{BUCKET}/{folder}", "--json")
    assert code == 0, err
    assert f"s3://{BUCKET}/bench/di-2/: results written by i-0aaaaaaaaaaaaaaaa" in err
    throughput = next(m for m in json.loads(out)["metrics"] if m["metric"] == "output throughput")
    assert throughput["first"] == throughput["second"] == 300.0
    # The same run ID in two node folders is not guessed between.
    s3.put_object(Bucket=BUCKET, Key="bench/AROAEXAMPLECONTROL001:i-0bbbbbbbbbbbbbbbb/di-2/m_summary.json",
                  Body=json.dumps(BASELINE).encode())
    code, _, err = world.dictl("compare", f"s3://{BUCKET}/bench/di-2/", f"s3://{BUCKET}/{folder}")
    assert code == 2 and "run di-2 is in several node folders" in err and "i-0bbbbbbbbbbbbbbbb/di-2/" in err


def test_compare_without_llmperf_metrics_exits_2(world, tmp_path) -> None:
    a = _write(tmp_path / "a.json", {"hello": 1})
    code, _, err = world.dictl("compare", str(a), str(a))
    assert code == 2 and "LLMPerf summary" in err


def test_compare_missing_s3_object_exits_2(world) -> None:
    code, _, err = world.dictl("compare", f"s3://{BUCKET}/bench/none/", f"s3://{BUCKET}/bench/none/")
    assert code == 2 and "no *_summary.json" in err


WORKLOAD = {"model": "meta-llama/Llama-3.3-70B-Instruct", "mean_input_tokens": 1024, "stddev_input_tokens": 0,
            "mean_output_tokens": 100, "stddev_output_tokens": 10, "num_concurrent_requests": 8}


def _dictl(capsys, *argv: str) -> tuple[int, str, str]:
    """dictl in-process without AWS (local files only)."""
    from ops.cli import main

    code = main(list(argv), clients_factory=lambda region, profile: None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_refuses_runs_with_different_workloads_unless_forced(capsys, tmp_path) -> None:
    di = _write(tmp_path / "di_summary.json", {**DI, **WORKLOAD})
    long = _write(tmp_path / "base_summary.json", {**BASELINE, **WORKLOAD, "mean_input_tokens": 7936,
                                                   "num_concurrent_requests": 16})
    code, out, err = _dictl(capsys, "compare", str(di), str(long))
    assert code == 2 and not out
    assert "mean input tokens: 1024 (DI) vs 7936 (baseline)" in err and "concurrency: 8 (DI) vs 16 (baseline)" in err
    assert "--force" in err and "model:" not in err
    code, out, _ = _dictl(capsys, "compare", str(di), str(long), "--force")
    assert code == 0
    assert out.startswith("WORKLOADS DIFFER") and out.index("mean input tokens") < out.index("METRIC")
    code, out, _ = _dictl(capsys, "compare", str(di), str(long), "--force", "--json")
    assert [d["field"] for d in json.loads(out)["workload_differences"]] == ["mean_input_tokens",
                                                                              "num_concurrent_requests"]
    same = _write(tmp_path / "same_summary.json", {**BASELINE, **WORKLOAD})
    assert _dictl(capsys, "compare", str(di), str(same))[0] == 0
