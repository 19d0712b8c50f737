"""Pulumi entry point: `cd infra && pulumi up --stack prod` (see docs/deploy.md)."""

import sys
from pathlib import Path

# The node labels and taints come from the platform's own placement code (resources/kubernetes.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiplat_infra.settings import Settings  # noqa: E402
from aiplat_infra.stack import build, export  # noqa: E402

import pulumi  # noqa: E402

# The Redis auth token is a stack secret: `pulumi config set --secret redisAuthToken ...`.
export(build(Settings.from_pulumi_config(), redis_auth_token=pulumi.Config("aiplat-infra").require_secret("redisAuthToken")))
