"""The exposition parser on the proxy's own output, and the command line."""

from __future__ import annotations

import pytest

from diproxy.metrics import Counter
from diproxy.shipper.prometheus_text import parse
from diproxy.shipper.service import main


def test_parser_reads_back_label_values_the_proxy_escapes() -> None:
    counter = Counter("diproxy_errors_total", "Failures.", ("kind",))
    counter.inc('quote " backslash \\ newline \n end', amount=2)
    scrape = parse("\n".join(counter.render()))
    (sample,) = scrape.samples
    assert sample.label("kind") == 'quote " backslash \\ newline \n end' and sample.value == 2
    assert scrape.types == {"diproxy_errors_total": "counter"}


def test_missing_settings_exit_2_with_the_variable_to_set(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--once"], env={"DIPROXY_PORT": "9000"})
    assert stopped.value.code == 2
    assert "--deployment is required: pass it or set DIPROXY_CLOUDWATCH_DEPLOYMENT" in capsys.readouterr().err
