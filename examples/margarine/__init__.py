"""Margarine, the training's parts 3 and 4: a link shortener on every node of a cluster.

Each node serves the same HTTP contract (``web.py``) on its own port, stores
links in Redis (``storage.py``), answers lookups from a replicated or sharded
cache (``cache.py``, ``sharded.py``) and counts redirects with G-Counters that
converge across partitions (``aggregates.py``, ``gcounter.py``).

Start it on a node with ``await rpc.call(node, examples.margarine.start, port,
redis_url, cache_mode)``, or a whole cluster from the command line::

    python -m examples.margarine --nodes 3

See ``docs/margarine.md``.
"""

from .app import CACHE_MODES, CacheMode, start, stats, stop
from .codes import short_code

__all__ = ["CACHE_MODES", "CacheMode", "short_code", "start", "stats", "stop"]
