"""Start throw-away service processes for tests: a memcached server on a free loopback port.

Examples
--------
>>> from dvl_dask.testing.servers import start_memcached
>>> server = start_memcached()  # doctest: +SKIP
>>> server.address  # doctest: +SKIP
('127.0.0.1', 40123)
>>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from ..errors import InvalidParameterError
from ..validation import check_name, check_positive_int, check_real

__all__ = ["MemcachedServer", "free_port", "start_memcached"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    Raises
    ------
    InvalidParameterError
        If ``host`` is not a string naming a local interface (nothing can be bound there).
    """
    check_name(host, "host", "free_port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:  # an unknown name, or an address of another machine
            raise InvalidParameterError(
                f"The 'host' argument of free_port must name a local interface such as '127.0.0.1'. Nothing can "
                f"listen on {host!r}: {exc}."
            ) from None
        return int(s.getsockname()[1])


class MemcachedServer:
    """Handle of a memcached process started by :func:`start_memcached`.

    Attributes
    ----------
    host, port : str, int
        Where it listens.
    process : subprocess.Popen
        The server process (owned by the caller: call :meth:`stop`).
    """

    def __init__(self, host: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.host = host
        self.port = port
        self.process = process

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as ``MemcachedClientConfig(server=...)`` takes it."""
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Kill the server (immediately, like a crash) and reap it; safe to call twice."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck process
            pass
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> MemcachedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MemcachedServer({self.host}:{self.port}, pid={self.process.pid}, {state})"


def _ready(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION")
    except OSError:
        return False


def start_memcached(
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    memory_mb: int = 64,
    timeout: float = 5.0,
    executable: str | None = None,
) -> MemcachedServer:
    """Start ``memcached -l host -p port -U 0 -m memory_mb`` in the foreground and wait until it answers.

    Parameters
    ----------
    port : int, optional
        Port to listen on; default a free one (never a fixed port: other
        servers may run on this machine). Pass the port of a stopped server to
        restart it at the same address.
    host : str
        Interface; loopback by default.
    memory_mb : int
        Memory limit of the server in MiB.
    timeout : float
        Seconds to wait until the server answers ``version``.
    executable : str, optional
        Path of the ``memcached`` binary; default the one on ``PATH``.

    Returns
    -------
    MemcachedServer
        With ``.port``, ``.address`` and ``.stop()``.

    Raises
    ------
    FileNotFoundError
        If memcached is not installed (``apt-get install memcached``).
    RuntimeError
        If the server does not start or answer within ``timeout``.
    """
    owner = "start_memcached"
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise InvalidParameterError(f"The 'port' argument of {owner} must be None or an int in [1, 65535]. "
                                    f"Got {port!r:.60}.")
    check_name(host, "host", owner)
    check_positive_int(memory_mb, "memory_mb", owner)
    check_real(timeout, "timeout", owner, low=0.0, low_open=True, finite=True)
    binary = executable or shutil.which("memcached")
    if binary is None:
        raise FileNotFoundError(
            "The memcached server is not installed (not on PATH). To fix, install it, e.g. "
            "`apt-get install memcached` or `brew install memcached`."
        )
    last_error = ""
    for _ in range(1 if port is not None else 3):
        chosen = port if port is not None else free_port(host)
        cmd = [binary, "-l", host, "-p", str(chosen), "-U", "0", "-m", str(memory_mb)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["-u", "root"]  # memcached refuses to run as root otherwise
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _ready(host, chosen):
                return MemcachedServer(host, chosen, proc)
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last_error = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
        if proc.stderr:
            proc.stderr.close()
    raise RuntimeError(
        f"memcached did not start on {host}:{port if port is not None else '<free port>'} within "
        f"{timeout} s. Exit code {proc.returncode}; stderr: {last_error or '(empty)'}"
    )
