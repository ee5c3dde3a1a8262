"""Publish what the CloudWatch agent cannot carry of the proxy's metrics: latency histograms as distributions, the
per-role load as a time average, and counters without losing a series' first count (metric_data.py says why).

A process of its own (``python -m diproxy.shipper``, unit ``distack-proxy-shipper.service``) so that a slow or
unreachable CloudWatch never costs the proxy a cycle, and so that a proxy that stopped answering is reported as
``ProxyUp`` 0. The proxy's journal goes to CloudWatch Logs through the CloudWatch agent's journald input.
"""
