"""Ship the bento: AWS EC2 behind nginx (`bbt deploy ec2`, a fleet or one instance) and the same setup locally
(`bbt deploy staging`). Imports `bbt.serving` (readiness), `bbt.review` (the feedback folder) and the layers below."""

from bbt.errors import BbtError


class DeployError(BbtError):
    """A deployment problem the user can fix (credentials, region, AWS quota, missing bento, nginx)."""
