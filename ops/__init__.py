"""`dictl`: day-2 operations on a DiStack deployment through SSM Run Command (boto3 only, never aws_cdk)."""
