"""The five-field cron of Auto Scaling scheduled actions: parse (for the config rules) and list occurrences (for
`dictl preflight`'s Capacity Block deadline).

EC2 Auto Scaling's Recurrence is "[Minute] [Hour] [Day_of_Month] [Month_of_Year] [Day_of_Week]" in the crontab.org
format, in UTC unless a TimeZone is given (botocore autoscaling PutScheduledUpdateGroupAction.Recurrence;
https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-scheduled-scaling.html). crontab.org's rules
(Vixie cron, crontab(5)): `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; three-letter names in
the month and day-of-week fields (not in ranges or lists); day of week 0-7 with 0 and 7 both Sunday; when both day
fields are restricted, a day matches if either matches.

Own code rather than a dependency: synth needs it (requirements.txt is the synth set), and it is this one grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names) per field, in order.
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, DAYS))


class CronError(ValueError):
    """An expression Auto Scaling would refuse; the message says which field and why."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    any_day: bool  # day of month is *
    any_weekday: bool  # day of week is *

    def matches_day(self, day: date) -> bool:
        """Vixie cron: a restricted day of month OR a restricted day of week; a `*` field defers to the other."""
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return by_weekday
        if self.any_weekday:
            return by_day
        return by_day or by_weekday

    def occurrences(self, start: datetime, end: datetime, zone: str = "UTC") -> Iterator[datetime]:
        """Every firing in [start, end] as UTC datetimes, evaluated in `zone` (an IANA name)."""
        tz = ZoneInfo(zone)
        day = start.astimezone(tz).date()
        last = end.astimezone(tz).date()
        while day <= last:
            if self.matches_day(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        local = datetime.combine(day, time(hour, minute), tzinfo=tz)
                        at = local.astimezone(timezone.utc)
                        if start <= at <= end:
                            yield at
            day += timedelta(days=1)


def parse(expression: str) -> Cron:
    """Parse a five-field expression or raise CronError naming the field."""
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"'{expression}' has {len(parts)} field(s); Auto Scaling takes five: "
                        "minute hour day-of-month month day-of-week")
    values = [_field(text, *spec) for text, spec in zip(parts, FIELDS)]
    weekdays = frozenset(d % 7 for d in values[4])
    return Cron(expression, frozenset(values[0]), frozenset(values[1]), frozenset(values[2]),
                frozenset(values[3]), weekdays, parts[2] == "*", parts[4] == "*")


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    if text.lower() in names:
        return {names[text.lower()]}
    found: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name} '{text}': step '{step_text}' must be a whole number above 0")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, _, last_text = span.partition("-")
            first, last = _number(first_text, name, text), _number(last_text, name, text)
        else:
            first = _number(span, name, text)
            last = high if step_text else first
        for value in (first, last):
            if not low <= value <= high:
                raise CronError(f"{name} '{text}': {value} is outside {low}-{high}")
        if first > last:
            raise CronError(f"{name} '{text}': range {first}-{last} runs backwards")
        found.update(range(first, last + 1, step))
    return found


def _number(text: str, name: str, whole: str) -> int:
    if not text.isdigit():
        raise CronError(f"{name} '{whole}': '{text}' is not a number (names are allowed alone, not in ranges "
                        "or lists)")
    return int(text)
