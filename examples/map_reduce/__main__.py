"""The Map Reduce command line, from the repository's root::

    python -m examples.map_reduce wordcount FILE [--nodes N] [--workers W] [--top K]
                                                 [--redis URL] [--kill-a-node]
    python -m examples.map_reduce identity FILE [same options]

It starts N worker nodes as OS processes (LocalCluster) with W workers each,
and a private redis-server unless ``--redis`` names one, runs the job with the
master on this node, and prints the top K words (``word count`` a line, most
frequent first, ties by word) or whether every line came back. A progress bar
on stderr counts the map and reduce jobs done. ``--kill-a-node`` SIGKILLs the
first worker node when half the jobs are done: the answer stays exact.

Errors (an unreadable file, a bad or unreachable Redis, a bad count) are one
line on stderr and exit status 1 (2 for a malformed command line); nothing is
left behind: no child process, no Redis key of the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections import Counter
from typing import Any

from redis.exceptions import RedisError
from tqdm import tqdm

import pybeam
from pybeam import receive, rpc
from pybeam.testing import LocalCluster, free_port

from ..redis_server import RedisServerError, redis_server
from . import IDENTITY, WORD_COUNT, Job, MapReduceError, run_job, start_worker, storage


class CliError(Exception):
    """Reported as one line on stderr, exit status 1."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.map_reduce",
        description="Map Reduce on pybeam nodes and Redis (the training's part 2).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, what in (
        ("wordcount", "count the words of FILE"),
        ("identity", "check every line of FILE comes back"),
    ):
        sub = commands.add_parser(name, help=what, description=what)
        sub.add_argument("file", metavar="FILE")
        sub.add_argument(
            "--nodes", type=int, default=2, metavar="N", help="worker nodes to start (default 2)"
        )
        sub.add_argument("--workers", type=int, default=2, metavar="W", help="workers per node (default 2)")
        sub.add_argument("--redis", metavar="URL", help="a Redis to use (default: start a private one)")
        sub.add_argument("--kill-a-node", action="store_true", help="SIGKILL a worker node halfway")
        if name == "wordcount":
            sub.add_argument("--top", type=int, default=10, metavar="K", help="words to print (default 10)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> str:
    """Refuse bad values before anything starts; returns the file's text."""
    if args.nodes < 1:
        raise CliError(f"--nodes must be at least 1, got {args.nodes}")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if getattr(args, "top", 1) < 1:
        raise CliError(f"--top must be at least 1, got {args.top}")
    if args.kill_a_node and args.nodes < 2:
        raise CliError("--kill-a-node needs --nodes 2 or more: one node must live to finish the job")
    if args.redis is not None:
        try:
            storage.connect(args.redis)
        except ValueError as e:
            raise CliError(f"bad Redis URL {args.redis!r}: {e}") from None
    try:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise CliError(f"{args.file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None


async def check_redis(url: str) -> None:
    client = storage.connect(url)
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        raise CliError(f"cannot reach Redis at {url}: {e}") from None
    finally:
        await client.aclose()


async def show_progress(bar: tqdm[Any], cluster: LocalCluster, kill_a_node: bool) -> None:
    """A process: draws the master's progress reports; kills a node halfway if asked."""
    killed = False
    while True:
        match await receive():
            case ("progress", _, maps_done, maps, reduces_done, reduces):
                bar.n = maps_done + reduces_done
                bar.set_postfix_str(f"map {maps_done}/{maps}, reduce {reduces_done}/{reduces}")
                if kill_a_node and not killed and 2 * bar.n >= maps + reduces:
                    killed = True
                    cluster.kill(cluster.nodes[0])
                    bar.write(f"killed node {cluster.nodes[0]} (SIGKILL) halfway", file=sys.stderr)


async def run(args: argparse.Namespace, text: str) -> int:
    workers = args.nodes * args.workers
    module = WORD_COUNT if args.command == "wordcount" else IDENTITY
    name = f"{args.command}_{secrets.token_hex(4)}"
    # Stopped in reverse order, whatever happens: the nodes first (no worker
    # writes after that), then the job's keys, then the private Redis.
    async with contextlib.AsyncExitStack() as stack:
        if args.redis is None:
            try:
                url = (await stack.enter_async_context(redis_server())).url
            except RedisServerError as e:
                raise CliError(str(e)) from None
        else:
            url = args.redis
        await check_redis(url)
        stack.push_async_callback(_forget_job, url, name)
        job = Job(name, args.file, module, url, maps=max(10, 2 * workers), reduces=max(5, workers))
        cluster = await stack.enter_async_context(LocalCluster(args.nodes, prefix="mr"))
        for node in cluster.nodes:
            for w in range(args.workers):
                await rpc.call(node, start_worker, f"{node.split('@')[0]}_{w}")
        bar = stack.enter_context(
            tqdm(total=job.maps + job.reduces, file=sys.stderr, unit="job", leave=False)
        )
        printer = pybeam.spawn(show_progress, bar, cluster, args.kill_a_node)
        try:
            result = await run_job(job, progress=printer)
        except MapReduceError as e:
            raise CliError(str(e)) from None
        finally:
            pybeam.exit(printer, "kill")
    if args.command == "wordcount":
        counts = Counter(result)
        for word, count in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[: args.top]:
            print(f"{word} {count}")
        return 0
    lines = set(text.splitlines())
    missing, extra = lines - result.keys(), result.keys() - lines
    if missing or extra:
        print(f"NOT every line came back: {len(missing)} missing, {len(extra)} unexpected")
        return 1
    print(f"every line came back: {len(lines)} distinct lines")
    return 0


async def _forget_job(url: str, name: str) -> None:
    with contextlib.suppress(RedisError, OSError):
        await storage.cleanup(url, name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = check_args(args)
        # A port mapper of our own, so nothing meets the nodes of another run.
        os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
        node = pybeam.Node(f"mr_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(16), ticktime=5.0)
        return pybeam.run(run, args, text, node=node)
    except CliError as e:
        print(f"map_reduce: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("map_reduce: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
