"""The deployment model: everything DiStack knows and checks without the CDK (config, rules, catalogs,
images, names, node values, engines' settings, the time-to-serving model). `dictl` and the CDK app both read it;
nothing here imports aws_cdk (tests/test_model_boundary.py).
"""
