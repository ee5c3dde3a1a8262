"""The CDK side of observability: the constructs that carry the agent configuration model/observability generates."""
