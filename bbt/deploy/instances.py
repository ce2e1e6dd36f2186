"""EC2 instance types: the default, their memory, and the systemd memory limits of the service on each."""

from __future__ import annotations

from dataclasses import dataclass

# 4 GiB: the service's measured ceiling (idle after load 1668 MiB with its photo processes + 2 workers x
# serve.worker_memory_mb 768 MiB = about 3200 MiB, docs/serving.md#memory-and-time-limits) fits under its
# MemoryHigh (3307 MiB); a t3.small's 1740 MiB MemoryMax does not.
DEFAULT_INSTANCE_TYPE = "t3.medium"
# The types the docs suggest; others are looked up with ec2:DescribeInstanceTypes at deploy time.
INSTANCE_MEMORY_MIB = {
    "t3.small": 2048, "t3.medium": 4096, "t3.large": 8192, "t3.xlarge": 16384,
    "t3a.small": 2048, "t3a.medium": 4096, "t3a.large": 8192, "t3a.xlarge": 16384,
    "c7i.large": 4096, "c7i.xlarge": 8192, "m7i.large": 8192, "m7i.xlarge": 16384,
}
# The rest is for the kernel, nginx, sshd, journald and the page cache.
SERVICE_SHARE = 0.85
# Past MemoryHigh the kernel reclaims and slows the service down, before MemoryMax stops it: 95% keeps the
# measured ceiling under it on the default type, with MemoryMax's last 5% for a burst.
HIGH_SHARE_OF_MAX = 0.95


@dataclass(frozen=True)
class MemoryLimits:
    """The unit's MemoryHigh and MemoryMax, in MiB."""

    high_mib: int
    max_mib: int

    @classmethod
    def of_max(cls, max_mib: int) -> MemoryLimits:
        return cls(high_mib=int(max_mib * HIGH_SHARE_OF_MAX), max_mib=max_mib)

    @classmethod
    def for_instance(cls, memory_mib: int) -> MemoryLimits:
        """What the service may use on a machine of `memory_mib` RAM (no swap, as EC2 instances come)."""
        return cls.of_max(int(memory_mib * SERVICE_SHARE))

