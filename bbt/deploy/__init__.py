"""Ship the bento: AWS EC2 behind nginx (`bbt deploy ec2`) and the same setup locally (`bbt deploy staging`)."""

from bbt.errors import BbtError


class DeployError(BbtError):
    """A deployment problem the user can fix (credentials, region, AWS quota, missing bento, nginx)."""
