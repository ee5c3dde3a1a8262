"""The shipper's two loops: journal lines to CloudWatch Logs, and one /metrics scrape per interval to CloudWatch
metrics. AWS calls run in threads, failures are retried, and nothing is marked shipped until CloudWatch took it."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from diproxy.shipper.cloudwatch import LogStreamWriter, MetricPublisher
from diproxy.shipper.journal import journal_command, read_journal
from diproxy.shipper.log_batches import LogEntry, batches
from diproxy.shipper.metric_data import MetricTranslator
from diproxy.shipper.prometheus_text import ExpositionError, Scrape, parse
from diproxy.shipper.settings import ShipperSettings, parse_settings
from diproxy.shipper.state import ShipperState

log = logging.getLogger("diproxy.shipper")
AWS_ERRORS = (BotoCoreError, ClientError)
RETRY_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
# Backpressure: past this many unsent entries, stop reading journalctl until CloudWatch catches up.
MAX_BUFFERED_ENTRIES = 50_000


class LogShipper:
    def __init__(self, settings: ShipperSettings, writer: LogStreamWriter, state: ShipperState) -> None:
        self.settings, self.writer, self.state = settings, writer, state
        self.buffer: list[LogEntry] = []
        self.read_cursor = state.cursor()
        self.shipped = 0
        self.rejected = 0
        self._room = asyncio.Event()
        self._room.set()

    async def read_once(self) -> None:
        """Read the journal until journalctl exits (at its end when not following)."""
        command = journal_command(self.settings.journalctl, self.settings.unit, self.read_cursor,
                                  follow=not self.settings.once)
        async for entry in read_journal(command):
            self.buffer.append(entry)
            self.read_cursor = entry.cursor
            if not self.settings.once and len(self.buffer) >= MAX_BUFFERED_ENTRIES:
                self._room.clear()
                await self._room.wait()

    async def read_forever(self) -> None:
        while True:
            try:
                await self.read_once()
                log.warning("journalctl stopped; following again")
            except (OSError, RuntimeError) as exc:
                log.error("cannot read the journal: %s", exc)
            await asyncio.sleep(5)

    async def flush(self) -> None:
        """Send everything buffered, batch by batch; the cursor moves only past what CloudWatch Logs took."""
        pending, self.buffer = self.buffer, []
        self._room.set()
        sent = 0
        try:
            for batch in batches(pending):
                rejected = await asyncio.to_thread(self.writer.put, batch)
                sent += len(batch)
                self.state.save_cursor(batch[-1].cursor)
                self.shipped += len(batch) - rejected
                self.rejected += rejected
                if rejected:
                    log.warning("CloudWatch Logs rejected %d of %d events (too old or too new)", rejected, len(batch))
        except BaseException:
            self.buffer = pending[sent:] + self.buffer  # unsent entries go back in front, in journal order
            raise

    async def flush_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.settings.flush_interval if not failures else
                                RETRY_PAUSES[min(failures, len(RETRY_PAUSES)) - 1])
            if not self.buffer:
                continue
            try:
                await self.flush()
                failures = 0
            except AWS_ERRORS as exc:
                failures += 1
                log.error("cannot send logs to %s (attempt %d, %d entries kept): %s",
                          self.settings.log_group, failures, len(self.buffer), exc)


class MetricShipper:
    def __init__(self, settings: ShipperSettings, publisher: MetricPublisher, state: ShipperState,
                 session: aiohttp.ClientSession) -> None:
        self.settings, self.publisher, self.state, self.session = settings, publisher, state, session
        self.translator = MetricTranslator(settings.deployment, baseline=state.baseline())

    async def scrape(self) -> Scrape | None:
        try:
            timeout = aiohttp.ClientTimeout(total=min(10.0, self.settings.interval))
            async with self.session.get(self.settings.metrics_url, timeout=timeout) as reply:
                reply.raise_for_status()
                return parse(await reply.text())
        except (aiohttp.ClientError, asyncio.TimeoutError, ExpositionError) as exc:
            log.warning("cannot scrape %s: %s", self.settings.metrics_url, exc)
            return None

    async def ship_once(self) -> None:
        scrape = await self.scrape()
        datums = self.translator.translate(scrape, datetime.now(timezone.utc))
        await asyncio.to_thread(self.publisher.put, datums)
        self.translator.commit()
        self.state.save_baseline(self.translator.baseline)

    async def ship_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.ship_once()
            except AWS_ERRORS as exc:
                # Counters stay at the old baseline, so the next interval carries this one's counts.
                log.error("cannot send metrics to %s: %s", self.settings.namespace, exc)


def _clients(settings: ShipperSettings) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=15)
    session = boto3.session.Session(region_name=settings.region) if settings.region else boto3.session.Session()
    return session.client("logs", config=config), session.client("cloudwatch", config=config)


async def run(settings: ShipperSettings, clients: Callable[[ShipperSettings], tuple[Any, Any]] = _clients) -> int:
    logs_client, metrics_client = clients(settings)
    state = ShipperState(settings.state_dir)
    logs = LogShipper(settings, LogStreamWriter(logs_client, settings.log_group, settings.log_stream), state)
    async with aiohttp.ClientSession() as session:
        metrics = MetricShipper(settings, MetricPublisher(metrics_client, settings.namespace), state, session)
        if settings.once:
            return await _run_once(logs, metrics)
        log.info("shipping %s to %s:%s and %s to namespace %s every %gs", settings.unit, settings.log_group,
                 settings.log_stream, settings.metrics_url, settings.namespace, settings.interval)
        tasks = [asyncio.create_task(job) for job in (logs.read_forever(), logs.flush_forever(), metrics.ship_forever())]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(logs.flush(), 10)  # the last lines before a stop are often the interesting ones
        except (*AWS_ERRORS, asyncio.TimeoutError) as exc:
            log.error("could not send the last %d journal entries: %s", len(logs.buffer), exc)
        return 0


async def _run_once(logs: LogShipper, metrics: MetricShipper) -> int:
    failed = False
    try:
        await logs.read_once()
        await logs.flush()
        log.info("sent %d journal entries (%d rejected)", logs.shipped, logs.rejected)
    except (*AWS_ERRORS, OSError, RuntimeError) as exc:
        log.error("logs not sent: %s (%d entries sent before that)", exc, logs.shipped)
        failed = True
    try:
        await metrics.ship_once()
        log.info("sent one scrape of %s", metrics.settings.metrics_url)
    except AWS_ERRORS as exc:
        log.error("metrics not sent: %s", exc)
        failed = True
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(settings))
