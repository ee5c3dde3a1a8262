"""The shipper's loop: one /metrics scrape per interval to CloudWatch metrics. The AWS call runs in a thread, and a
scrape's counts stay unpublished (folded into the next interval) until CloudWatch took them."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from diproxy.shipper.metric_data import MetricTranslator
from diproxy.shipper.prometheus_text import ExpositionError, Scrape, parse
from diproxy.shipper.settings import ShipperSettings, parse_settings
from diproxy.shipper.state import ShipperState

log = logging.getLogger("diproxy.shipper")
AWS_ERRORS = (BotoCoreError, ClientError)
# PutMetricData takes up to 1,000 datums per call:
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html
MAX_DATUMS_PER_CALL = 1000


class MetricShipper:
    def __init__(self, settings: ShipperSettings, client: Any, state: ShipperState,
                 session: aiohttp.ClientSession) -> None:
        self.settings, self.client, self.state, self.session = settings, client, state, session
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

    def _put(self, datums: list[dict[str, Any]]) -> None:
        for start in range(0, len(datums), MAX_DATUMS_PER_CALL):
            self.client.put_metric_data(Namespace=self.settings.namespace,
                                        MetricData=datums[start:start + MAX_DATUMS_PER_CALL])

    async def ship_once(self) -> None:
        scrape = await self.scrape()
        datums = self.translator.translate(scrape, datetime.now(timezone.utc))
        await asyncio.to_thread(self._put, datums)
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


def _client(settings: ShipperSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=15)
    session = boto3.session.Session(region_name=settings.region) if settings.region else boto3.session.Session()
    return session.client("cloudwatch", config=config)


async def run(settings: ShipperSettings, client: Callable[[ShipperSettings], Any] = _client) -> int:
    async with aiohttp.ClientSession() as session:
        shipper = MetricShipper(settings, client(settings), ShipperState(settings.state_dir), session)
        if settings.once:
            try:
                await shipper.ship_once()
            except AWS_ERRORS as exc:
                log.error("metrics not sent: %s", exc)
                return 1
            log.info("sent one scrape of %s", settings.metrics_url)
            return 0
        log.info("shipping %s to namespace %s every %gs", settings.metrics_url, settings.namespace, settings.interval)
        task = asyncio.create_task(shipper.ship_forever())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    settings = parse_settings(argv, env)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(settings))
