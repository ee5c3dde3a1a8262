"""Elasticity rules beyond the one-mistake corpus (tests/data/invalid/): the Capacity Block warning, a reservation in a
named placement group, and the cron grammar scheduled actions are checked against."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from model import cron
from model.loader import CONFIG_DIR, ConfigError, load_config_file


def _prod_with(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    for key, value in changes.items():
        if key in data["fleets"]:
            data["fleets"][key].update(value)
        else:
            data[key] = value
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_capacity_block_fleet_nothing_empties_is_accepted_with_a_warning_naming_the_deadline(tmp_path):
    block = {"capacity": {"type": "capacity-block", "reservation_id": "cr-0123456789abcdef0"}, "warm_pool": None}
    warnings: list[str] = []
    config = load_config_file(_prod_with(tmp_path, decode=block), warn=warnings.append)
    assert config.fleet_placement_group("decode") is None and config.fleet_placement_group("prefill") is None
    (warning,) = warnings
    assert "fleets.decode.schedule: no scheduled action empties this Capacity Block fleet" in warning
    # 30 minutes of reclaim, the 600 s drain and the hook's 180 s: 43 minutes ahead of the end.
    assert "at least 43 minutes before the block's end" in warning


def test_a_reservation_in_a_named_placement_group_launches_there_and_a_new_group_is_refused(tmp_path):
    reserved = {"capacity": {"type": "reservation", "reservation_id": "cr-0123456789abcdef0"}}
    config = load_config_file(_prod_with(tmp_path, decode=reserved, placement_group_name="odcr-group"))
    assert {n: config.fleet_placement_group(n) for n in config.fleets} == {"prefill": "odcr-group",
                                                                          "decode": "odcr-group"}
    with pytest.raises(ConfigError) as caught:
        load_config_file(_prod_with(tmp_path, decode=reserved, placement_group=True))
    assert "placement_group: fleet(s) decode launch into a reservation" in str(caught.value)
    assert "name that group instead: placement_group_name: NAME" in str(caught.value)


@pytest.mark.parametrize("expression,first_two", [
    # Day of week 7 is Sunday too; a restricted day of month OR a restricted weekday (crontab(5)).
    ("0 6 * * 7", ["2026-03-01T06:00", "2026-03-08T06:00"]),
    ("30 2 15 * 1", ["2026-03-02T02:30", "2026-03-09T02:30"]),
    ("*/20 9 * mar *", ["2026-03-01T09:00", "2026-03-01T09:20"]),
])
def test_cron_fires_as_crontab_says(expression, first_two):
    start, end = datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 31, tzinfo=timezone.utc)
    fired = [at.strftime("%Y-%m-%dT%H:%M") for at in cron.parse(expression).occurrences(start, end)]
    assert fired[:2] == first_two


def test_cron_in_a_time_zone_follows_its_daylight_saving():
    night = cron.parse("0 22 * * *")
    start, end = datetime(2026, 3, 28, tzinfo=timezone.utc), datetime(2026, 3, 30, tzinfo=timezone.utc)
    # Berlin moves from UTC+1 to UTC+2 on 29 March 2026.
    assert [at.strftime("%d %H:%M") for at in night.occurrences(start, end, "Europe/Berlin")] == ["28 21:00",
                                                                                                 "29 20:00"]


@pytest.mark.parametrize("expression,error", [
    ("0 22 * *", "has 4 field(s)"),
    ("0 24 * * *", "hour '24': 24 is outside 0-23"),
    ("0 22 * * mon-fri", "'mon' is not a number"),
    ("0 22 */0 * *", "step '0' must be a whole number above 0"),
    ("0 22 * 12-1 *", "range 12-1 runs backwards"),
])
def test_cron_errors_name_the_field(expression, error):
    with pytest.raises(cron.CronError, match=re.escape(error)):
        cron.parse(expression)
