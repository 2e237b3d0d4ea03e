"""Part 2 of the training, Map Reduce: a distributed word count on Redis that
gives the exact answer through worker crashes, node kills and partitions.

- :mod:`.master`: splits the input, hands jobs to workers, notices failures
  and hands the jobs out again, merges the result (under a supervisor);
- :mod:`.worker`: does map and reduce jobs, found by masters in a process group;
- :mod:`.word_count`, :mod:`.identity`: the job modules (``map``, ``reduce``);
- :mod:`.storage`: the Redis keys, derived from the job and its ids.

See docs/map_reduce.md, and ``python -m examples.map_reduce --help``.
"""

from .master import Job, MapReduceError, run_job, start
from .worker import GROUP, start_worker

WORD_COUNT = "examples.map_reduce.word_count"
IDENTITY = "examples.map_reduce.identity"

__all__ = ["GROUP", "IDENTITY", "WORD_COUNT", "Job", "MapReduceError", "run_job", "start", "start_worker"]
