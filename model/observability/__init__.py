"""Observability that is not a construct: the CloudWatch agent's configuration per node kind, generated from the
deployment's config (pure Python, no aws_cdk), and the metric names it keeps with where each was read."""
