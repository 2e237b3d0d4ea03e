"""A node restarted with the same name is reachable again (issue 8).

Real nodes: ``python -m pybeam node`` in child processes, SIGKILLed and
started again under the same name, so that they come back on a new port with
a new creation. The test's own node must find the new incarnation through the
port mapper, not keep dialling the port it knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

import pybeam
from pybeam import net, rpc
from pybeam.distribution import epmd
from pybeam.distribution.net_kernel import NetKernel
from pybeam.testing import eventually

# -- run on the restarted node ------------------------------------------------------------


async def _echo() -> None:
    while True:
        match await pybeam.receive():
            case (pybeam.Pid() as sender, msg):
                pybeam.send(sender, ("echo", msg))


def start_echo() -> pybeam.Pid:
    pid = pybeam.whereis("echo")
    if pid is not None:
        return pid
    pid = pybeam.spawn(_echo)
    pybeam.register("echo", pid)
    return pid


# -- the node's process ------------------------------------------------------------------

Launch = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def launch(epmd_port: int, tmp_path: object) -> Iterator[Launch]:
    """``launch(name, cookie, *options)`` starts ``pybeam node``; every one is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, cookie: str, *options: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env["PYBEAM_COOKIE"] = cookie
        env["PYBEAM_EPMD_PORT"] = str(epmd_port)
        argv = [sys.executable, "-m", "pybeam", "node", "--name", name, "--exit-on-stdin-close", *options]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdin is not None:
                proc.stdin.close()


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


async def pong(node: str) -> bool:
    return await net.ping(node) == "pong"


async def answers_as(node: str, os_pid: int) -> bool:
    """``node`` is the incarnation in OS process ``os_pid``, and rpc, send to
    ``(name, node)`` and a reply all work with it."""
    if await rpc.call(node, "os:getpid", timeout=5) != os_pid:
        return False
    await rpc.call(node, start_echo, timeout=5)
    pybeam.send(("echo", node), (pybeam.self(), "hello"))
    return await pybeam.receive(("echo", "hello"), timeout=5, default=None) is not None


# -- the tests --------------------------------------------------------------------------------


async def test_a_node_restarted_with_the_same_name_is_reachable_again(
    beam_node: pybeam.Node, launch: Launch
) -> None:
    cookie = net.get_cookie()
    name = f"restarted_{secrets.token_hex(3)}@127.0.0.1"
    first = launch(name, cookie)
    await eventually(lambda: pong(name), 30, what="the first incarnation answers")
    assert await answers_as(name, first.pid)

    sigkill(first)
    await eventually(lambda: name not in net.nodes(), 30, what="its connection is seen down")
    second = launch(name, cookie)
    # It registered a new port with the port mapper: we must ask it again.
    await eventually(lambda: pong(name), 30, what="the second incarnation answers")
    await eventually(lambda: answers_as(name, second.pid), 30)


async def test_a_given_address_is_dropped_once_it_fails(beam_node: pybeam.Node, launch: Launch) -> None:
    cookie = net.get_cookie()
    name = f"moved_{secrets.token_hex(3)}@127.0.0.1"
    first = launch(name, cookie)
    await eventually(lambda: pong(name), 30)
    port = await epmd.lookup(name, beam_node.dist.options.epmd_port)  # type: ignore[union-attr]
    assert port is not None
    net.disconnect(name)
    await eventually(lambda: name not in net.nodes(), 30)
    assert await net.ping(f"{name}:{port}") == "pong"  # the address, given explicitly

    sigkill(first)
    await eventually(lambda: name not in net.nodes(), 30)
    second = launch(name, cookie)
    await eventually(lambda: pong(name), 30, what="found through the port mapper")
    await eventually(lambda: answers_as(name, second.pid), 30)


class _HalfOpenProxy:
    """A TCP relay that, when the node behind it dies, keeps our side of the
    connection open: as a peer that vanished without a word (a cable pulled),
    not yet noticed by ticks."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.writers.append(down_w)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            return  # our side stays open: the caller's handshake times out
        self.writers.append(up_w)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()

        for r, w in ((down_r, up_w), (up_r, down_w)):
            task = asyncio.ensure_future(pump(r, w))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxies() -> AsyncIterator[list[_HalfOpenProxy]]:
    made: list[_HalfOpenProxy] = []
    try:
        yield made
    finally:
        for p in made:
            await p.close()


async def test_a_node_restarted_before_its_old_connection_is_seen_down(
    epmd_port: int, launch: Launch, proxies: list[_HalfOpenProxy]
) -> None:
    cookie = secrets.token_hex(16)
    # Ticks far apart: the dead connection is not noticed during the test.
    async with pybeam.Node(
        f"a_{secrets.token_hex(3)}@127.0.0.1", cookie=cookie, ticktime=120.0, epmd_port=epmd_port
    ) as a:
        name = f"b_{secrets.token_hex(3)}@127.0.0.1"
        first = launch(name, cookie)

        async def registered() -> bool:
            return await epmd.lookup(name, epmd_port) is not None

        await eventually(registered, 30)
        port = await epmd.lookup(name, epmd_port)
        assert port is not None
        proxy = _HalfOpenProxy(port)
        proxies.append(proxy)
        through = await proxy.start()
        assert await net.ping(f"{name}:{through}") == "pong"
        assert await answers_as(name, first.pid)
        kernel = a.dist
        assert isinstance(kernel, NetKernel)
        old = kernel.connection(name)
        assert old is not None

        sigkill(first)
        second = launch(name, cookie, "--connect", a.name)
        assert name in net.nodes() and not old.closed  # not noticed: our side is still open
        # The new incarnation connects to us: it replaces the dead connection.
        await eventually(lambda: answers_as(name, second.pid), 30, what="the restarted node answers")
        assert old.closed
        # And once that connection is gone, we find it again ourselves.
        net.disconnect(name)
        await eventually(lambda: name not in net.nodes(), 30)
        await eventually(lambda: pong(name), 30, what="reconnected to the second incarnation")
        assert await answers_as(name, second.pid)


async def test_after_a_lost_connection_the_port_mapper_is_asked_first(epmd_port: int, launch: Launch) -> None:
    # The dead incarnation's port is taken by something that accepts and never
    # answers: dialling it first would wait out the whole connect timeout.
    cookie = secrets.token_hex(16)
    async with pybeam.Node(
        f"a_{secrets.token_hex(3)}@127.0.0.1", cookie=cookie, epmd_port=epmd_port, connect_timeout=60.0
    ):
        name = f"b_{secrets.token_hex(3)}@127.0.0.1"
        first = launch(name, cookie)
        await eventually(lambda: pong(name), 30)
        old_port = await epmd.lookup(name, epmd_port)
        assert old_port is not None
        sigkill(first)
        await eventually(lambda: name not in net.nodes(), 30)
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", old_port)
        try:
            second = launch(name, cookie)

            async def registered_again() -> bool:
                return await epmd.lookup(name, epmd_port) not in (None, old_port)

            await eventually(registered_again, 30)
            assert await asyncio.wait_for(net.ping(name), 20) == "pong"
            assert await answers_as(name, second.pid)
        finally:
            silent.close()
