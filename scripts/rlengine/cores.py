"""How many CPU cores this process may use: the default for a model's `threads`.

Torch-free. `os.cpu_count()` counts the machine's cores, not this process's: under
`taskset`, a CPU set (docker --cpuset-cpus) or a CPU quota (docker --cpus, Kubernetes
limits, systemd CPUQuota) it overstates them, and torch then runs more compute threads
than there are cores; OpenMP's barriers wait on threads that are not running and a
step gets slower than with fewer threads.
"""

from __future__ import annotations

import math
import os


def _quota_cores(cpu_max: str) -> float | None:
    """Cores allowed by a cgroup v2 `cpu.max` line ("max 100000" or "200000 100000")."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: str) -> float | None:
    try:
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            period = int(f.read())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_limit(root: str = "/sys/fs/cgroup",
                 self_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The tightest CPU quota (in cores) over this process's cgroup and its ancestors,
    v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`); None when unlimited or unknown."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        parts = [x for x in path.strip().split("/") if x]
        if hid == "0" and ctrls == "":
            dirs = [os.path.join(root, *parts[:i]) for i in range(len(parts), -1, -1)]
            read = lambda d: _read_v2(os.path.join(d, "cpu.max"))  # noqa: E731
        elif "cpu" in ctrls.split(","):
            dirs = [os.path.join(root, name, *parts[:i]) for name in {"cpu", ctrls}
                    for i in range(len(parts), -1, -1)]
            read = _v1_quota
        else:
            continue
        for d in dirs:
            q = read(d)
            if q is not None:
                found.append(q)
    return min(found) if found else None


def _read_v2(path: str) -> float | None:
    try:
        with open(path) as f:
            return _quota_cores(f.read())
    except OSError:
        return None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (rounded up: a quota of 1.5 cores keeps 2 threads busy part of the time), >= 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = cgroup_limit()
    if q is not None:
        n = min(n, max(1, math.ceil(q)))
    return max(1, n)
