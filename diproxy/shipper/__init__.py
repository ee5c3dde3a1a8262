"""Ship the proxy's journal to CloudWatch Logs and its Prometheus metrics to CloudWatch metrics.

A process of its own (``python -m diproxy.shipper``, unit ``distack-proxy-shipper.service``) so that a slow or
unreachable CloudWatch never costs the proxy a cycle, and so that the proxy's last words before a crash, which
only the journal holds, still reach CloudWatch.
"""
