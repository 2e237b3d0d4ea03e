"""The ``pybeam`` command: run a node, call a function on one, list nodes, run the port mapper.

``pybeam node``
    Run a node until SIGTERM/SIGINT (or, with ``--exit-on-stdin-close``, until
    its stdin closes); ``--shell`` gives an interactive asyncio REPL inside the
    node, like ``iex --sname``.
``pybeam rpc NODE module:function [ARGS...]``
    Call a function on a running node from a short-lived hidden node and print
    the result's ``repr`` (like ``erl_call``).
``pybeam processes NODE [--json]``
    A running node's processes, as a table or JSON (like observer's process tab).
``pybeam remsh NODE``
    A shell whose statements run in a shell process of a running node.
``pybeam top NODE``
    A refreshing table of a running node's processes and connections (drawn with rich).
``pybeam names``
    The nodes registered with this host's port mapper (like ``epmd -names``).
``pybeam epmd``
    Run the port mapper in the foreground (:func:`pybeam.distribution.epmd.main`).

Every subcommand returns an exit status: 0 on success, 1 on an error it
explains on stderr, 2 for bad usage (argparse's).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import code
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import math
import os
import secrets
import signal
import sys
import threading
import traceback
import types
from collections.abc import Sequence
from typing import Any

from . import __version__, application, interrupt, net, remsh, rpc, top
from .distribution import epmd
from .distribution.busy_wait import parse_busy_wait
from .distribution.cookie import CookieError
from .distribution.tls import TLSOptions
from .errors import Exit, NodeDown, PybeamError
from .functions import function_name
from .node import Node
from .nodename import parse_address
from .process import Process
from .runtime import new_event_loop

__all__ = ["main", "parse_arg"]

_PROG = "pybeam"


def parse_arg(text: str) -> Any:
    """A command-line argument as a term: a Python literal if it parses as one
    (``2``, ``'x'``, ``[1, 2]``, ``None``), else the text itself (as erl_call's ``-a``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _error(command: str, message: str) -> int:
    print(f"{_PROG} {command}: {message}", file=sys.stderr, flush=True)
    return 1


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def _run(coro: Any) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result: int = runner.run(coro)
        return result


# Errors a node can meet while starting: a bad name, a taken name, a bad cookie
# file, a port in use, no usable port mapper.
_START_ERRORS = (PybeamError, CookieError, epmd.EpmdError, OSError, ValueError)


# -- pybeam node ---------------------------------------------------------------------


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Read stdin until EOF, then stop the node (run in a daemon thread).

    ``os.read`` on the raw descriptor rather than ``sys.stdin``: a daemon
    thread blocked inside a buffered reader's lock can abort the interpreter at
    shutdown, a raw read cannot.
    """
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass
    with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing to stop
        loop.call_soon_threadsafe(stop.set)


async def _serve_node(node: Node, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: interrupt.Signals | None = None
    # The context manager's two halves by hand rather than `async with`, so
    # that an error while starting is told apart from one while running.
    try:
        entered = await node.__aenter__()
    except _START_ERRORS as e:
        return _error("node", f"cannot start node {args.name}: {e}")
    try:
        for peer in args.connect:
            if not await net.connect(peer):
                why = net.connect_failure(peer) or "it is not running, not registered, or has another cookie"
                return _error("node", f"cannot connect to {peer}: {why}")
        for app in args.app:
            try:
                await application.start(app, node=entered, type=args.app_type)
            except application.ApplicationError as e:
                return _error("node", str(e))
        shell: _Shell | None = None
        if args.shell:
            shell = _Shell(entered, loop, stop)
        signals = interrupt.Signals(
            loop,
            stop.set,
            on_sigint=shell.interrupt if shell is not None else None,
            owns=shell.owns if shell is not None else None,
        )
        signals.install()
        dist = entered.dist
        port = getattr(dist, "port", 0)
        print(f"{_PROG} node {entered.name} up (port {port})", flush=True)
        if shell is not None:
            shell.start()  # it reads stdin, and EOF on it stops the node, as --exit-on-stdin-close would
        elif args.exit_on_stdin_close:
            threading.Thread(target=_watch_stdin, args=(loop, stop), name="pybeam-stdin", daemon=True).start()
        # Until told to stop, or until the node stops by itself (a process
        # called Node.stop, a permanent application exited).
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(entered.wait_stopped())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        cause = application.stopped_by(entered)
        if cause is not None:
            _, app, reason = cause
            return _error("node", f"node {entered.name} stopped: application {app} exited: {reason!r}")
        return 0
    finally:
        try:
            # Still heard while stopping: a terminate that never awaits is a held loop too.
            await node.__aexit__(None, None, None)
        finally:
            if signals is not None:
                signals.uninstall()


# -- the shell -------------------------------------------------------------------------

# What the shell process tells the console about one statement.
_OK = "ok"
_ERROR = "error"  # value: the exception, its traceback trimmed to the typed code
_INTERRUPTED = "interrupted"
_QUIT = "quit"  # value: the SystemExit
_DIED = "died"  # value: what to tell the user; the shell process has exited
_Outcome = tuple[str, Any]


def _trim(exc: BaseException) -> BaseException:
    """Drop the shell's own frames from ``exc``'s traceback: start at the typed code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<console>":
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc


async def _guard(coro: Any) -> _Outcome:
    # asyncio re-raises SystemExit and KeyboardInterrupt out of the event loop,
    # which would kill the node: turn them into values here.
    try:
        await coro
    except (SystemExit, KeyboardInterrupt) as e:
        return (_QUIT, e) if isinstance(e, SystemExit) else (_INTERRUPTED, None)
    return (_OK, None)


class _Shell:
    """An interactive console (in a thread) whose statements run in one process of the node.

    The console thread compiles each statement with top-level ``await`` allowed
    and hands the code object to the *shell process*, a process of the node
    that runs the statements one after another, so ``self()``, ``receive`` and
    the mailbox stay the same across statements. A coroutine statement runs as
    a task of that process (so Ctrl-C can cancel it without killing the
    process). If the shell process exits (``pybeam.exit``, a linked process
    crashing) the user is told and the next statement starts a new one, as iex
    does.
    """

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        import pybeam

        self.node = node
        self.loop = loop
        self.stop = stop
        self.namespace: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": __builtins__,
            "asyncio": asyncio,
            "pybeam": pybeam,
        }
        self.proc: Process | None = None
        self.jobs: asyncio.Queue[tuple[types.CodeType, concurrent.futures.Future[_Outcome]]] | None = None
        self.running: asyncio.Task[_Outcome] | None = None

    # -- the loop's side --------------------------------------------------------

    def start(self) -> None:
        """Start the shell process and the console thread."""
        self._spawn()
        threading.Thread(target=self._console, name="pybeam-shell", daemon=True).start()

    def _spawn(self) -> None:
        jobs: asyncio.Queue[tuple[types.CodeType, concurrent.futures.Future[_Outcome]]] = asyncio.Queue()
        pid, _ = self.node.spawn(self._serve, (jobs,))
        self.proc = self.node.process(pid)
        self.jobs = jobs

    def submit(self, code_obj: types.CodeType, future: concurrent.futures.Future[_Outcome]) -> None:
        """Queue a statement for the shell process (on the loop's thread)."""
        if not self.node.running:
            future.set_result((_QUIT, SystemExit(0)))
            return
        if self.proc is None or not self.proc.alive:
            self._spawn()
        assert self.jobs is not None
        self.jobs.put_nowait((code_obj, future))

    def owns(self, frame: types.FrameType | None) -> bool:
        """Whether ``frame`` (where the main thread is) is a statement typed
        at this shell, running now: the shell process's code, or the task
        running its awaiting statement, with the typed code on the stack.
        A Ctrl-C then raises KeyboardInterrupt right there, so that a statement
        that never awaits is interrupted too (the loop cannot run a callback)."""
        task = asyncio.current_task(self.loop)
        proc = self.proc
        if task is None or not (task is self.running or (proc is not None and task is proc.task)):
            return False
        return interrupt.on_stack(frame, lambda f: f.f_code.co_filename == "<console>")

    def interrupt(self) -> None:
        """SIGINT: cancel the running statement (the node goes on)."""
        task = self.running
        if task is not None and not task.done():
            task.cancel()
        else:
            sys.stderr.write("\n(KeyboardInterrupt: exit() or Ctrl-D leaves the shell and stops the node)\n")
            sys.stderr.flush()

    async def _serve(
        self, jobs: asyncio.Queue[tuple[types.CodeType, concurrent.futures.Future[_Outcome]]]
    ) -> None:
        # The shell process's function.
        me = self.proc
        future: concurrent.futures.Future[_Outcome] | None = None
        try:
            while True:
                code_obj, future = await jobs.get()
                try:
                    outcome = await self._execute(code_obj)
                except Exit as e:
                    future.set_result((_DIED, f"** (exit) shell process exited with reason {e.reason!r}"))
                    raise
                future.set_result(outcome)
                future = None
        except asyncio.CancelledError:
            reason = me.reason if me is not None else "killed"
            message = f"** (EXIT) shell process exited with reason {reason!r}"
            if future is not None and not future.done():
                future.set_result((_DIED, message))
            elif self.node.running:  # else the node is stopping: the user asked for that
                sys.stderr.write(f"\n{message}\n")
            raise
        finally:
            while not jobs.empty():
                _, pending = jobs.get_nowait()
                if not pending.done():
                    pending.set_result((_DIED, "** the shell process exited before running this"))

    async def _execute(self, code_obj: types.CodeType) -> _Outcome:
        func = types.FunctionType(code_obj, self.namespace)
        try:
            result = func()
        except Exit:
            raise
        except SystemExit as e:
            return (_QUIT, e)
        except KeyboardInterrupt:
            return (_INTERRUPTED, None)
        except BaseException as e:
            return (_ERROR, _trim(e))
        if not inspect.iscoroutine(result):
            return (_OK, None)
        # A task of this process: it inherits the process context (self() is
        # the shell's pid) and Ctrl-C can cancel it alone.
        task = self.running = asyncio.ensure_future(_guard(result))
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the shell process itself is being killed
            return (_INTERRUPTED, None)
        except Exit:
            raise
        except BaseException as e:
            return (_ERROR, _trim(e))
        finally:
            self.running = None

    # -- the console thread's side --------------------------------------------------

    def _console(self) -> None:
        console = _Console(self)
        try:
            with contextlib.suppress(ImportError):
                if sys.stdin.isatty():
                    import readline  # noqa: F401  (line editing and history at the prompt)
            pid = self.proc.pid if self.proc is not None else None
            banner = (
                f"pybeam shell on node {self.node.name}, shell process {pid!r}\n"
                "Top-level await works; `pybeam` and `asyncio` are imported.\n"
                "exit() or Ctrl-D leaves the shell and stops the node."
            )
            with contextlib.suppress(SystemExit):
                console.interact(banner=banner, exitmsg="")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                self.loop.call_soon_threadsafe(self.stop.set)


class _FdLineReader:
    """Lines from a raw file descriptor (see :func:`_watch_stdin` for why not ``sys.stdin``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def readline(self) -> str:
        while b"\n" not in self.buffer and not self.eof:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buffer += chunk
        line, sep, self.buffer = self.buffer.partition(b"\n")
        return (line + sep).decode("utf-8", errors="replace")


class _Console(code.InteractiveConsole):
    def __init__(self, shell: _Shell) -> None:
        super().__init__(shell.namespace, filename="<console>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.shell = shell
        self.tty = sys.stdin.isatty()
        self.reader = None if self.tty else _FdLineReader(0)

    def raw_input(self, prompt: str = "") -> str:
        if self.reader is None:
            return input(prompt)
        # Not a terminal (a pipe, a file): prompts go to stderr so that stdout
        # holds only what the statements print.
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = self.reader.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def runcode(self, code: types.CodeType) -> None:
        future: concurrent.futures.Future[_Outcome] = concurrent.futures.Future()
        try:
            self.shell.loop.call_soon_threadsafe(self.shell.submit, code, future)
        except RuntimeError:  # the loop is closed: the node has stopped
            raise SystemExit(0) from None
        kind, value = future.result()
        sys.stdout.flush()
        if kind == _ERROR:
            self.write("".join(traceback.format_exception(value)))
        elif kind == _INTERRUPTED:
            self.write("\nKeyboardInterrupt\n")
        elif kind == _DIED:
            self.write(f"{value}\n")
        elif kind == _QUIT:
            raise value


# -- pybeam rpc ------------------------------------------------------------------------


async def _rpc_main(args: argparse.Namespace) -> int:
    address: str = args.node
    try:
        target, host, _ = parse_address(address, "target node")
        function_name(args.function)  # a bad name is refused here, not by the other node
    except ValueError as e:
        return _error("rpc", str(e))
    name = args.name or f"rpc_{secrets.token_hex(4)}@{host}"
    call_args = [parse_arg(a) for a in args.args]
    try:
        node = _client_node(name, args)
    except _START_ERRORS as e:
        return _error("rpc", str(e))
    try:
        async with node:
            if not await net.connect(address):
                why = net.connect_failure(address) or "is it running, registered, and using the same cookie?"
                return _error("rpc", f"node {target} cannot be reached: {why}")
            try:
                result = await rpc.call(target, args.function, *call_args, timeout=args.timeout)
            except rpc.RemoteError as e:
                lines = [f"{args.function} raised on {target}: {e.kind}: {e.message}"]
                if e.remote_traceback:
                    lines.append("remote traceback:\n" + e.remote_traceback.rstrip())
                return _error("rpc", "\n".join(lines))
            except NodeDown as e:
                if e.reason:
                    return _error("rpc", str(e))
                return _error("rpc", f"node {target} cannot be reached (it went down during the call)")
            except rpc.RpcTimeout as e:
                return _error("rpc", f"timeout: {e}")
            except PybeamError as e:
                return _error("rpc", str(e))
            print(repr(result), flush=True)
            return 0
    except _START_ERRORS as e:
        return _error("rpc", f"cannot start the calling node {name}: {e}")


# -- pybeam processes ---------------------------------------------------------------------

_COLUMNS = (
    ("pid", "PID"),
    ("registered_name", "NAME"),
    ("initial_call", "INITIAL CALL"),
    ("status", "STATUS"),
    ("message_queue_len", "MSGS"),
    ("links", "LINKS"),
    ("monitors", "MONITORS"),
)


async def _call_remote(
    command: str, args: argparse.Namespace, function: str, *call_args: Any
) -> tuple[int, Any]:
    """Call ``function`` on ``args.node`` from a short-lived hidden node: (0,
    the result), or (1, None) after saying on stderr why not."""
    address: str = args.node
    try:
        target, host, _ = parse_address(address, "target node")
    except ValueError as e:
        return _error(command, str(e)), None
    name = f"{command}_{secrets.token_hex(4)}@{host}"
    try:
        node = _client_node(name, args)
    except _START_ERRORS as e:
        return _error(command, str(e)), None
    try:
        async with node:
            if not await net.connect(address):
                why = net.connect_failure(address) or "is it running, registered, and using the same cookie?"
                return _error(command, f"node {target} cannot be reached: {why}"), None
            try:
                return 0, await rpc.call(target, function, *call_args, timeout=args.timeout)
            except rpc.RemoteError as e:
                return _error(command, f"{function} raised on {target}: {e.kind}: {e.message}"), None
            except NodeDown as e:
                return _error(
                    command, str(e) if e.reason else f"node {target} went down during the call"
                ), None
            except rpc.RpcTimeout as e:
                return _error(command, f"timeout: {e}"), None
            except PybeamError as e:
                return _error(command, str(e)), None
    except _START_ERRORS as e:
        return _error(command, f"cannot start the calling node {name}: {e}"), None


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


async def _processes_main(args: argparse.Namespace) -> int:
    status, rows = await _call_remote("processes", args, "pybeam.observer:processes_info")
    if status:
        return status
    if args.json:
        import json

        out = [{**row, "pid": repr(row["pid"])} for row in rows]
        print(json.dumps(out, indent=1), flush=True)
        return 0
    table = [[title for _, title in _COLUMNS]]
    table += [[_cell(row.get(key)) for key, _ in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    sys.stdout.flush()
    return 0


# -- pybeam top -----------------------------------------------------------------------------


async def _top_main(args: argparse.Namespace) -> int:
    status, snapshot = await _call_remote("top", args, "pybeam.observer:snapshot")
    if status:
        return status
    out = top.console()
    if args.once:
        out.print(top.render(top.Frame(snapshot, sort=args.sort, reverse=args.reverse, limit=args.limit)))
        return 0
    # A second, long-lived connection for the refreshes (the check above used its own node).
    target, host, _ = parse_address(args.node, "target node")
    node = _client_node(f"top_{secrets.token_hex(4)}@{host}", args)
    loop = asyncio.get_running_loop()
    quit_ = asyncio.Event()
    wake = asyncio.Event()
    frame = top.Frame(
        snapshot, sort=args.sort, reverse=args.reverse, interval=args.interval, limit=args.limit
    )

    def on_key(key: str) -> None:  # on the loop's thread
        if key in "qQ":
            quit_.set()
            return
        if key in "<>":
            frame.sort = top.next_sort(frame.sort, 1 if key == ">" else -1)
        elif key in "rR":
            frame.reverse = not frame.reverse
        else:
            return
        wake.set()

    from rich.live import Live

    async with node:
        if not await net.connect(args.node):
            return _error("top", f"node {target} cannot be reached: {net.connect_failure(args.node)}")
        loop.add_signal_handler(signal.SIGINT, quit_.set)
        try:
            keys = top.Keys(lambda key: loop.call_soon_threadsafe(on_key, key))
            with keys.reading(), Live(top.render(frame), console=out, auto_refresh=False) as live:
                while not quit_.is_set():
                    waits = [asyncio.ensure_future(e.wait()) for e in (quit_, wake)]
                    await asyncio.wait(waits, timeout=args.interval, return_when=asyncio.FIRST_COMPLETED)
                    for w in waits:
                        w.cancel()
                    if quit_.is_set():
                        break
                    if wake.is_set():  # a key: redraw the frame we have, sorted anew
                        wake.clear()
                    else:
                        try:
                            snapshot = await rpc.call(
                                target, "pybeam.observer:snapshot", timeout=args.timeout
                            )
                        except (NodeDown, PybeamError) as e:
                            live.stop()
                            return _error("top", f"node {target}: {e}")
                        frame = top.Frame(
                            snapshot,
                            previous=frame.reductions,
                            sort=frame.sort,
                            reverse=frame.reverse,
                            interval=args.interval,
                            limit=args.limit,
                        )
                    live.update(top.render(frame), refresh=True)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
    return 0


# -- pybeam remsh ---------------------------------------------------------------------------


class _RemoteConsole(code.InteractiveConsole):
    """A console whose complete statements run in a session process of a remote node."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: str, client: Any, stall_limit: float) -> None:
        super().__init__(filename="<remsh>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop
        self.target = target
        self.session: Any = None
        self.key = secrets.token_hex(8)
        self.client = client
        self.stall_limit = stall_limit
        self.reader = None if sys.stdin.isatty() else _FdLineReader(0)
        #: The statement running on the node (set on the console's thread, read on the loop's).
        self.running: concurrent.futures.Future[Any] | None = None

    def call(self, function: str, *args: Any) -> Any:
        coro = rpc.call(self.target, function, *args, timeout=None)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self.running = future
        try:
            return future.result()
        finally:
            self.running = None

    def raw_input(self, prompt: str = "") -> str:
        if self.reader is None:
            return input(prompt)
        sys.stderr.write(prompt)  # as the local shell: stdout holds only what statements print
        sys.stderr.flush()
        line = self.reader.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def runsource(self, source: str, filename: str = "<input>", symbol: str = "single") -> bool:
        try:
            if self.compile(source, filename, symbol) is None:
                return True  # incomplete: read more lines
        except (OverflowError, SyntaxError, ValueError):
            self.showsyntaxerror(filename)
            return False
        try:
            if self.session is None:
                self.session = self.call("pybeam.remsh:open_session", self.key, self.client, self.stall_limit)
            output = self.call("pybeam.remsh:evaluate", self.session, source)
        except rpc.RemoteError as e:
            if e.kind != "pybeam.remsh.SessionEnded":
                raise
            self.session = None  # the next statement starts a new one, as iex does
            output = f"{e.message}\n"
        sys.stdout.write(output)
        sys.stdout.flush()
        return False


class _RemoteInterrupts:
    """Ctrl-C in ``pybeam remsh`` (on the loop's thread): interrupt the statement
    running on the node, over the distribution.

    A node whose loop a statement holds cannot read the interrupt: its own
    watchdog interrupts such a statement after the stall limit. If the node
    has not answered within a second, the user is told; a second Ctrl-C
    meanwhile leaves the remote shell.
    """

    def __init__(self, node: Node, console: _RemoteConsole, leave: asyncio.Future[str]) -> None:
        self.node = node
        self.console = console
        self.leave = leave
        self.pending: concurrent.futures.Future[Any] | None = None  # the statement interrupted

    def __call__(self) -> None:
        running = self.console.running
        if running is None or running.done():
            sys.stderr.write("\n(KeyboardInterrupt: Ctrl-D leaves the remote shell)\n")
            sys.stderr.flush()
            return
        if self.pending is running:
            if not self.leave.done():
                self.leave.set_result(f"left while a statement still holds node {self.console.target}")
            return
        self.pending = running
        # From a short-lived process of ours: a cast is sent by a process.
        self.node.spawn(rpc.cast, (self.console.target, "pybeam.remsh:interrupt", self.console.key))
        self.console.loop.call_later(1.0, self._unanswered, running)

    def _unanswered(self, running: concurrent.futures.Future[Any]) -> None:
        if running.done():
            return
        sys.stderr.write(
            f"\npybeam remsh: node {self.console.target} does not answer: a statement that never awaits "
            f"holds its event loop; it is interrupted when it has held it for {self.console.stall_limit:g}s "
            "(--stall-limit). Ctrl-C again leaves the remote shell.\n"
        )
        sys.stderr.flush()


async def _wait_forever() -> None:
    await asyncio.Event().wait()


def _interact(console: _RemoteConsole, banner: str, done: asyncio.Future[str]) -> None:
    # The console's thread: a daemon, so that leaving does not wait for a
    # statement the node never answers.
    error = ""
    try:
        console.interact(banner, "")
    except SystemExit:
        pass  # exit() leaves, as Ctrl-D does
    except (NodeDown, PybeamError) as e:
        error = str(e)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"

    def finish() -> None:
        if not done.done():
            done.set_result(error)

    with contextlib.suppress(RuntimeError):  # the loop has already stopped
        console.loop.call_soon_threadsafe(finish)


async def _remsh_main(args: argparse.Namespace) -> int:
    status, _ = await _call_remote("remsh", args, "pybeam.kernel:node_name")
    if status:
        return status
    # A second, long-lived connection for the session (the check above used its own node).
    target, host, _ = parse_address(args.node, "target node")
    node = _client_node(f"remsh_{secrets.token_hex(4)}@{host}", args)
    loop = asyncio.get_running_loop()
    async with node:
        if not await net.connect(args.node):
            return _error("remsh", f"node {target} cannot be reached: {net.connect_failure(args.node)}")
        # A process of ours for the session to monitor: if this command is
        # killed, the connection drops and the session ends on its own.
        client, _ = node.spawn(_wait_forever)
        console = _RemoteConsole(loop, target, client, args.stall_limit)
        banner = f"pybeam remsh on node {target}\nTop-level await works; `pybeam` and `asyncio` are imported."
        done: asyncio.Future[str] = loop.create_future()
        loop.add_signal_handler(signal.SIGINT, _RemoteInterrupts(node, console, done))
        # In a copy of this context, as asyncio.to_thread would: the rpc calls
        # it makes are this node's.
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(_interact, console, banner, done), name="pybeam-remsh", daemon=True
        ).start()
        try:
            error = await done
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            with contextlib.suppress(Exception):
                await rpc.call(target, "pybeam.remsh:close_session", console.key, console.session, timeout=2)
        if error:
            return _error("remsh", error)
    return 0


# -- pybeam names ------------------------------------------------------------------------


async def _names_main(args: argparse.Namespace) -> int:
    try:
        port = epmd.epmd_port(args.epmd_port)
        tls = _tls(args)
        # As a node asks its port mapper: the CA checked, no hostname check.
        context = tls.client_context(check_hostname=False) if tls is not None else None
        entries = await epmd.names(port, host=args.host, tls=context)
    except ValueError as e:
        return _error("names", str(e))
    except epmd.EpmdError as e:
        return _error("names", f"no port mapper answers on {args.host} ({e})")
    except OSError as e:  # a TLS file that cannot be read, a TLS handshake refused
        return _error("names", f"cannot ask the port mapper on {args.host}: {e}")
    for name, node_port in sorted(entries):
        print(f"{name} {node_port}")
    sys.stdout.flush()
    return 0


# -- argument parsing --------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _busy_wait(text: str) -> float:
    try:
        return parse_busy_wait(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _client_options(command: argparse.ArgumentParser, timeout_help: str) -> None:
    """The options of every command that talks to a running node from a short-lived one."""
    command.add_argument("--cookie", help="the cookie (default: $PYBEAM_COOKIE or ~/.pybeam.cookie)")
    command.add_argument("--timeout", type=_positive, default=rpc.DEFAULT_TIMEOUT, help=timeout_help)
    command.add_argument("--epmd-port", type=int, default=None, help="port mapper's port")
    command.add_argument("-v", "--verbose", action="store_true", help="log connections")
    _tls_options(command)


def _tls_options(command: argparse.ArgumentParser) -> None:
    """The TLS options, the same for a node and for a command that talks to one."""
    command.add_argument("--tls-cert", metavar="FILE", help="TLS: this node's certificate (PEM)")
    command.add_argument("--tls-key", metavar="FILE", help="TLS: its private key (PEM)")
    command.add_argument(
        "--tls-ca", metavar="FILE", help="TLS: the CA that signs every node's certificate (PEM)"
    )
    command.add_argument(
        "--tls-verify-hostname",
        action="store_true",
        help="TLS: check that a dialled node's certificate names its host",
    )


def _tls(args: argparse.Namespace) -> TLSOptions | None:
    """The TLS options given (None: plain TCP); ValueError if only some files are."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(files) and not all(files):
        raise ValueError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    return TLSOptions(*files, verify_hostname=args.tls_verify_hostname) if all(files) else None


def _client_node(name: str, args: argparse.Namespace) -> Node:
    """The short-lived hidden node a command talks to a running node from."""
    return Node(name, cookie=args.cookie, hidden=True, epmd_port=args.epmd_port, tls=_tls(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="Run and talk to pybeam nodes.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser("node", help="run a node until SIGTERM/SIGINT", description="Run a node.")
    node.add_argument("--name", required=True, help="the node's name, name@host (e.g. a@127.0.0.1)")
    node.add_argument("--cookie", help="the cookie (default: $PYBEAM_COOKIE or ~/.pybeam.cookie)")
    node.add_argument(
        "--connect", action="append", default=[], metavar="NODE", help="connect to NODE at start (repeatable)"
    )
    node.add_argument("--ticktime", type=_positive, default=60.0, help="net_ticktime in seconds (default 60)")
    node.add_argument(
        "--hidden", action="store_true", help="a hidden node: left out of nodes() and of the mesh"
    )
    node.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    node.add_argument(
        "--listen",
        metavar="HOST",
        default=None,
        help="address to listen on, e.g. 0.0.0.0 (default: the host of --name); peers still dial --name",
    )
    node.add_argument(
        "--epmd-port", type=int, default=None, help="port mapper's port (default $PYBEAM_EPMD_PORT or 4370)"
    )
    _tls_options(node)
    node.add_argument(
        "--busy-limit",
        type=int,
        default=None,
        metavar="BYTES",
        help="bytes queued to one peer above which senders wait (default 1 MB, as dist_buf_busy_limit)",
    )
    node.add_argument(
        "--busy-wait",
        type=_busy_wait,
        default=None,
        metavar="SECONDS|LEVEL",
        help="how long to keep polling after traffic before sleeping, as erl's +sbwt: seconds, or "
        "none, very_short, short, medium, long, very_long (default: $PYBEAM_BUSY_WAIT or medium)",
    )
    node.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MOD[:FN]",
        help="start an application at boot: MOD.FN() (default FN: start) returns its top supervisor's "
        "pid; repeatable, started in order and stopped in reverse order when the node stops",
    )
    node.add_argument(
        "--app-type",
        choices=application.TYPES,
        default="temporary",
        help="what an --app whose top supervisor exits does: temporary (default: logged, the node goes "
        "on), permanent (the node stops, exit status 1), transient (permanent unless it exited normally)",
    )
    node.add_argument("--shell", action="store_true", help="an interactive asyncio shell inside the node")
    node.add_argument(
        "--exit-on-stdin-close",
        action="store_true",
        help="stop when stdin reaches EOF (so a child node never outlives its parent)",
    )
    node.add_argument("-v", "--verbose", action="store_true", help="log connections and more")

    call = sub.add_parser(
        "rpc",
        help="call module:function on a node and print the result",
        description="Call module:function(*ARGS) on NODE and print repr(result). Each ARG is a "
        "Python literal if it parses as one, else a string.",
    )
    call.add_argument("node", metavar="NODE")
    call.add_argument("function", metavar="module:function")
    call.add_argument("args", nargs="*", metavar="ARGS")
    call.add_argument("--name", help="the calling node's name (default rpc_<random>@<NODE's host>)")
    _client_options(call, "seconds (default 5)")

    procs = sub.add_parser(
        "processes",
        help="list a running node's processes",
        description="List NODE's processes: pid, registered name, initial call, status, "
        "mailbox length, links and monitors (like observer's process tab).",
    )
    procs.add_argument("node", metavar="NODE")
    procs.add_argument(
        "--json", action="store_true", help="print JSON (a list of objects) instead of a table"
    )
    _client_options(procs, "seconds (default 5)")

    remote = sub.add_parser(
        "remsh",
        help="a shell whose statements run on a running node",
        description="A shell connected to NODE (like iex --remsh): each statement runs in a "
        "shell process of NODE, over the distribution.",
    )
    remote.add_argument("node", metavar="NODE")
    remote.add_argument(
        "--stall-limit",
        type=_positive,
        default=remsh.DEFAULT_STALL_LIMIT,
        metavar="S",
        help="seconds a statement may hold NODE's event loop without awaiting before NODE interrupts it "
        "(default 5)",
    )
    _client_options(remote, "seconds to connect")

    top_ = sub.add_parser(
        "top",
        help="a refreshing table of a running node's processes",
        description="Observer's process tab in the terminal: NODE's processes (pid, name, initial "
        "call, status, mailbox length, memory estimate, links, monitors, reductions and activity "
        "since the last refresh) and its connections, refreshed every --interval seconds. "
        "Keys: < and > (or the arrow keys) change the sort column, r reverses it, q quits.",
    )
    top_.add_argument("node", metavar="NODE")
    top_.add_argument("--once", action="store_true", help="print one frame and exit (for pipes and scripts)")
    top_.add_argument("--interval", type=_positive, default=2.0, help="seconds between refreshes (default 2)")
    top_.add_argument(
        "--sort",
        choices=top.SORT_KEYS,
        default="activity",
        help="the column to sort by (default activity: reductions since the last refresh)",
    )
    top_.add_argument("--reverse", action="store_true", help="reverse the sort order")
    top_.add_argument("--limit", type=_count, default=None, metavar="N", help="show at most N processes")
    _client_options(top_, "seconds to wait for each refresh (default 5)")

    names = sub.add_parser("names", help="list the nodes registered with the port mapper")
    names.add_argument("--epmd-port", type=int, default=None, help="port mapper's port")
    names.add_argument(
        "--host", default=epmd.DEFAULT_HOST, help=f"port mapper's host (default {epmd.DEFAULT_HOST})"
    )
    _tls_options(names)

    sub.add_parser("epmd", help="run the port mapper (see `pybeam epmd --help`)", add_help=False)
    return parser


def _add_working_directory() -> None:
    # As `python -m pybeam` does (its sys.path[0] is the working directory),
    # so that `pybeam node` run from a project folder can import its modules.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pybeam`` command; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`pybeam processes N --json | head`): as other
        # Unix tools, stop quietly, and keep Python's exit-time flush from
        # failing on the same closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a tool


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _add_working_directory()
    if argv and argv[0] == "epmd":
        # Its own parser, options and help.
        return epmd.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "names":
        return _run(_names_main(args))
    _setup_logging(args.verbose)
    if args.command == "rpc":
        return _run(_rpc_main(args))
    if args.command == "processes":
        return _run(_processes_main(args))
    if args.command == "remsh":
        return _run(_remsh_main(args))
    if args.command == "top":
        return _run(_top_main(args))
    try:
        return _run(_serve_node_checked(args))
    except KeyboardInterrupt:
        # A second Ctrl-C on a held loop, raised into code of no process: out of the loop.
        return _error("node", "interrupted while its event loop was held")


async def _serve_node_checked(args: argparse.Namespace) -> int:
    try:
        tls = _tls(args)
    except ValueError as e:
        return _error("node", str(e))
    try:
        node = Node(
            args.name,
            cookie=args.cookie,
            ticktime=args.ticktime,
            hidden=args.hidden,
            port=args.port,
            listen=args.listen,
            epmd_port=args.epmd_port,
            tls=tls,
            busy_limit=args.busy_limit,
            busy_wait=args.busy_wait,
        )
    except _START_ERRORS as e:
        return _error("node", f"cannot start node {args.name}: {e}")
    return await _serve_node(node, args)
