"""Who owns a temporary folder or a lease, and whether that owner provably died.

An owner is recorded as ``{"host", "machine", "pid", "started"}``: the host
name, where known the kernel's boot id and the process-id namespace (so two
containers or machines sharing a host name are told apart), the process id and
the process's start time (seconds since the epoch). Process ids are reused, so
a holder counts as dead only when it ran here and no process with its id runs
now, or one does but started at another time. Holders elsewhere are never
judged dead here (callers fall back on a heartbeat or an age).
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["owner_is_dead", "owner_is_here", "process_owner", "process_start_time"]

#: Two start times closer than this (seconds) are the same process (clock-tick rounding).
_START_TOLERANCE = 1.0


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch); None if it does not run or is unknown."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return None if not _exists(pid) else float("nan")
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None
    except (psutil.Error, OSError):  # no permission to look: it exists, start time unknown
        return float("nan")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def process_owner() -> dict[str, Any]:
    """This process as an owner record: host, pid and start time."""
    pid = os.getpid()
    started = process_start_time(pid)
    return {"host": socket.gethostname(), "machine": _machine(), "pid": pid,
            "started": started if started == started else None}


def _machine() -> str | None:
    """This kernel's boot id and pid namespace (Linux), or None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


def owner_is_here(owner: Any) -> bool:
    """Whether ``owner`` ran on this host, in this boot and pid namespace (where recorded): its pid is visible."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    recorded, machine = owner.get("machine"), _machine()
    # the same host name on another machine, container or boot: its processes are not the ones seen here
    return recorded is None or machine is None or recorded == machine


def owner_is_dead(owner: Any) -> bool:
    """Whether the process described by ``owner`` provably no longer runs.

    True only for an owner on this host whose pid runs no process, or runs one
    that started at another time (the pid was reused). Anything else -- another
    host, an unreadable record, a start time that cannot be checked -- is False.
    """
    if not owner_is_here(owner):
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    started = process_start_time(pid)
    if started is None:
        return True
    recorded = owner.get("started")
    if not isinstance(recorded, (int, float)) or recorded != recorded or started != started:
        return False  # a live pid whose identity cannot be compared: assume it is the owner
    return abs(float(recorded) - started) > _START_TOLERANCE
