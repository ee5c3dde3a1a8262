"""The exposition parser on the proxy's own output, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diproxy.metrics import Counter
from diproxy.shipper.prometheus_text import parse

ROOT = Path(__file__).resolve().parents[2]


def test_parser_reads_back_label_values_the_proxy_escapes() -> None:
    counter = Counter("diproxy_errors_total", "Failures.", ("kind",))
    counter.inc('quote " backslash \\ newline \n end', amount=2)
    scrape = parse("\n".join(counter.render()))
    (sample,) = scrape.samples
    assert sample.label("kind") == 'quote " backslash \\ newline \n end' and sample.value == 2
    assert scrape.types == {"diproxy_errors_total": "counter"}


def test_missing_settings_exit_2_with_the_variable_to_set_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIPROXY_")}
    done = subprocess.run([sys.executable, "-m", "diproxy.shipper", "--once"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "--deployment is required: pass it or set DIPROXY_CLOUDWATCH_DEPLOYMENT" in done.stderr
    assert "Traceback" not in done.stderr
