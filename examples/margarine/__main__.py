"""The margarine command line, from the repository's root::

    python -m examples.margarine --nodes 3 [--redis URL] [--cache replicated|sharded|none]
                                           [--base-port P] [--batch MS]

It starts N nodes as OS processes (LocalCluster), each serving margarine on
its own port (P, P+1, ... with ``--base-port``, else free ports), and a private
redis-server unless ``--redis`` names one. It prints each node's URL and a
curl line to try, then runs until Ctrl-C (or SIGTERM), which stops every node
and the private Redis. Errors are one line on stderr, exit status 1 (2 for a
malformed command line).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys

from redis.exceptions import RedisError

import pybeam
from pybeam import rpc
from pybeam.testing import LocalCluster, free_port

from ..redis_server import RedisServerError, redis_server
from . import CACHE_MODES, start, storage


class CliError(Exception):
    """Reported as one line on stderr, exit status 1."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.margarine",
        description="Margarine, a link shortener on a cluster of pybeam nodes (the training's parts 3 and 4).",
    )
    parser.add_argument("--nodes", type=int, default=3, metavar="N", help="nodes to start (default 3)")
    parser.add_argument("--redis", metavar="URL", help="a Redis to use (default: start a private one)")
    parser.add_argument(
        "--cache", choices=CACHE_MODES, default="replicated", help="the cache (default replicated)"
    )
    parser.add_argument(
        "--base-port", type=int, metavar="P", help="node i serves on P+i-1 (default: free ports)"
    )
    parser.add_argument(
        "--batch",
        type=float,
        default=5.0,
        metavar="MS",
        help="batch redirect counts over MS ms; 0: one message per redirect (default 5)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")
    if args.base_port is not None and not 1 <= args.base_port <= 65535 - args.nodes:
        parser.error(f"--base-port must leave room for {args.nodes} ports below 65536")
    if args.batch < 0:
        parser.error("--batch must not be negative")
    return args


async def check_redis(url: str) -> None:
    try:
        client = storage.connect(url)
    except ValueError as e:
        raise CliError(f"bad Redis URL {url!r}: {e}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        raise CliError(f"cannot reach Redis at {url}: {e}") from None
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if args.redis is None:
            try:
                redis_url = (await stack.enter_async_context(redis_server())).url
            except RedisServerError as e:
                raise CliError(str(e)) from None
            where = f"{redis_url} (private, stopped at exit)"
        else:
            redis_url = where = args.redis
        await check_redis(redis_url)
        cluster = await stack.enter_async_context(LocalCluster(args.nodes, prefix="margarine"))
        batch = args.batch / 1000 or None
        urls = []
        for i, node in enumerate(cluster.nodes):
            port = free_port() if args.base_port is None else args.base_port + i
            try:
                urls.append(await rpc.call(node, start, port, redis_url, args.cache, batch))
            except rpc.RemoteError as e:
                # The HTTP server's start failed there: say why in one line (a taken port, say).
                why = e.message.rsplit(": ", 1)[-1].rstrip(")")
                raise CliError(f"node {node} cannot serve on port {port}: {why}") from None
        print(f"margarine: {args.nodes} node(s), cache {args.cache}, Redis {where}")
        for node, url in zip(cluster.nodes, urls, strict=True):
            print(f"  {node}  {url}")
        print(
            f"try: curl -i -d url=https://elixir-lang.org {urls[0]}   (then GET the location, and <code>/aggregates)"
        )
        print(
            "Ctrl-C stops every node" + (" and the private Redis" if args.redis is None else ""), flush=True
        )
        await pybeam.receive("stop")  # nobody sends it: runs until Ctrl-C or SIGTERM
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A port mapper of our own, so nothing meets the nodes of another run.
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    # Ctrl-C even when started in the background of a script (which ignores SIGINT),
    # and SIGTERM alike: both stop in order, every node and the private Redis.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    node = pybeam.Node(
        f"margarine_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(16), ticktime=5.0
    )
    try:
        return pybeam.run(run, args, node=node)
    except CliError as e:
        print(f"margarine: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("margarine: stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
