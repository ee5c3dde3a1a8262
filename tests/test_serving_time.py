"""The time-to-serving model (model/serving_time.py) and its bench script, on every shipped environment."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from model import serving_time
from model.loader import available_environments, load_environment

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("instance start", "node preparation", "image pull", "model download", "compiled-artifact sync",
         "load and warm-up")


@pytest.fixture(scope="module")
def configs():
    return {name: load_environment(name, warn=lambda _: None) for name in available_environments()}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("time_to_serving", ROOT / "bench" / "time_to_serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_estimate_is_the_sum_of_sourced_steps(configs):
    for config in configs.values():
        for fleet in config.fleets:
            for layout in serving_time.LAYOUTS.values():
                cold, warm = (serving_time.estimate(config, fleet, warm=w, layout=layout) for w in (False, True))
                for estimate in (cold, warm):
                    assert tuple(step.name for step in estimate.steps) == STEPS
                    assert estimate.total_seconds == pytest.approx(sum(s.seconds for s in estimate.steps))
                    for step in estimate.steps:
                        kinds = {part.split(":", 1)[0] for part in step.source.split(" | ")}
                        assert kinds <= {"cited", "measured", "estimated"}, (config.name, step)
                        # A step is only as firm as its weakest figure.
                        assert step.basis == ("estimated" if "estimated" in kinds else
                                              "measured" if "measured" in kinds else "cited"), (config.name, step)
                        assert step.seconds >= 0
                assert warm.total_seconds < cold.total_seconds, (config.name, fleet, layout.name)


def test_warm_pool_keeps_only_what_lives_on_ebs(configs):
    prod = configs["prod"]
    target = {s.name: s for s in serving_time.estimate(prod, "decode", warm=True).steps}
    current = {s.name: s for s in serving_time.estimate(prod, "decode", warm=True, layout=serving_time.CURRENT).steps}
    assert target["model download"].seconds == 0 and target["image pull"].seconds < 10
    # Instance-store NVMe is wiped by the stop: today's layout downloads the 141 GB again.
    assert current["model download"].seconds > 300
    # On EBS the weights come back at the volume's throughput: the gp3 default makes the load step the wait.
    slow = dataclasses.replace(serving_time.TARGET, ebs_throughput_mibps=125, ebs_iops=3000)
    slow_load = serving_time.estimate(prod, "decode", warm=True, layout=slow).steps[-1].seconds
    assert slow_load > target["load and warm-up"].seconds + 600
    # A layout EC2 would refuse at launch (gp3 gives at most 0.25 MiB/s per provisioned IOPS) is refused here.
    with pytest.raises(ValueError, match="1000 MiB/s needs at least 4000 IOPS"):
        dataclasses.replace(serving_time.TARGET, ebs_iops=3000)


def test_prod_goal_needs_the_target_layout(configs):
    prod = configs["prod"]
    for fleet in prod.fleets:
        assert serving_time.estimate(prod, fleet, warm=True).total_seconds <= 600
        assert serving_time.estimate(prod, fleet, warm=True, layout=serving_time.CURRENT).total_seconds > 600


def test_unknown_fleet_is_refused(configs):
    with pytest.raises(serving_time.UnknownFleet, match=r"no fleet 'gpu' \(fleets: decode, prefill\)"):
        serving_time.estimate(configs["prod"], "gpu", warm=True)


def test_bench_prints_every_environment(bench, capsys, configs):
    assert bench.main(["--plain"]) == 0
    out = capsys.readouterr().out
    for name, config in configs.items():
        assert f"{name} (fleet" in out
    assert "Goal: a prod worker from the warm pool serves within 10 min: met" in out
    assert "total" in out and "[1] estimated:" in out

    assert bench.main(["--json", "--layout", "current"]) == 0
    data = json.loads(capsys.readouterr().out)
    seen = {(e["environment"], e["fleet"], e["warm"]) for e in data["estimates"]}
    assert seen == {(n, f, w) for n, c in configs.items() for f in c.fleets for w in (False, True)}
    assert "NOT met" in data["goal"]

    # With rich installed (the default rendering) the same table comes out.
    assert bench.main(["--env", "dev"]) == 0
    assert "dev (fleet colocated)" in capsys.readouterr().out


def test_bench_refuses_an_unknown_environment(bench, capsys):
    assert bench.main(["--env", "nope"]) == 2
    assert "config/nope.yaml: no such environment (known: baseline, dev" in capsys.readouterr().err
