"""Part 2 of the training, Map Reduce: the original scenarios, and more failures.

Everything is real: a private redis-server per module (the ``redis_server``
fixture), workers and masters on nodes that are separate OS processes.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

import pybeam
from examples.map_reduce import GROUP, IDENTITY, WORD_COUNT, Job, MapReduceError, run_job, start, start_worker
from examples.map_reduce.storage import counter_key, split_lines
from examples.redis_server import RedisServer
from pybeam import ANY, Pid, pg, receive, rpc, supervisor
from pybeam.testing import eventually, heal, partition

LINES = [str(i) for i in range(100_000)]


def new_job(tmp_path: Path, server: RedisServer, lines: list[str], module: str, **options: Any) -> Job:
    name = f"t{secrets.token_hex(4)}"
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Job(name, str(path), module, server.url, **options)


async def add_worker(
    node: str, worker_id: str, die_after: int | None = None, hang_after: int | None = None, pause: float = 0.0
) -> Pid:
    pid: Pid = await rpc.call(node, start_worker, worker_id, die_after, hang_after, pause)
    return pid


def jobs_done_by(server: RedisServer, job: Job, worker_id: str) -> int:
    with redis.Redis.from_url(server.url) as client:
        return int(client.get(counter_key(job.name, worker_id)) or 0)


async def wait_for_result(job: Job, timeout: float) -> dict[Any, Any]:
    _, _, result = await receive(("result", job.name, ANY), timeout=timeout)
    assert isinstance(result, dict)
    return result


# -- the pieces ----------------------------------------------------------------------


def test_split_lines_keeps_every_line_whole_and_in_order() -> None:
    text = "a\nbb\r\nccc\n\nd é\u2028x\n" * 7 + "last without newline"
    for count in (1, 3, 10, 100):
        chunks = split_lines(text, count)
        assert len(chunks) == count
        assert "".join(chunks) == text
        assert sum(len(c.splitlines()) for c in chunks) == len(text.splitlines())


def test_split_lines_cuts_utf8_bytes_after_a_newline_only() -> None:
    # The master cuts the file's bytes: no cut may fall inside a character.
    data = ("é日本\n🙂 x\r\n\u2028y\n" * 50).encode()
    for count in (1, 3, 10, 100):
        chunks = split_lines(data, count)
        assert len(chunks) == count
        assert b"".join(chunks) == data
        for chunk in chunks[:-1]:
            assert chunk == b"" or chunk.endswith(b"\n")
            chunk.decode()


# -- the training's scenarios -------------------------------------------------------------


async def test_scenario_1_word_count_of_foo_bar_baz(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    words = ["foo"] * 10 + ["bar"] * 20 + ["baz"] * 30
    random.Random(1).shuffle(words)
    job = new_job(tmp_path, redis_server, words, WORD_COUNT)
    async with cluster(2) as c:
        for i, node in enumerate(c.nodes, 1):
            await add_worker(node, f"w{i}")
        assert await run_job(job, timeout=30) == {"foo": 10, "bar": 20, "baz": 30}


async def test_scenario_2_a_worker_dies_after_3_jobs(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    job = new_job(tmp_path, redis_server, LINES, IDENTITY)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await add_worker(n1, "1", die_after=3)
        await add_worker(n2, "2")
        t0 = time.monotonic()
        result = await run_job(job, timeout=30)
        elapsed = time.monotonic() - t0
    assert result.keys() == set(LINES)
    assert jobs_done_by(redis_server, job, "1") > 0
    assert jobs_done_by(redis_server, job, "2") > 0
    assert elapsed < 3.0, f"the result took {elapsed:.2f}s"


async def test_scenario_3_waves_of_short_lived_workers(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    job = new_job(tmp_path, redis_server, LINES, IDENTITY)
    async with cluster(2) as c:
        sup = await start(pybeam.self(), job)
        wave = 0
        result = None
        while result is None:
            wave += 1
            for i, node in enumerate(c.nodes):
                await add_worker(node, f"w{wave}_{i}", die_after=3)
            try:
                result = await wait_for_result(job, timeout=0.5)
            except TimeoutError:
                assert wave < 60, "no result after 60 waves"
        await supervisor.stop(sup)
    assert result.keys() == set(LINES)
    assert wave > 1  # 15 jobs, 6 per wave: the first wave alone cannot have done it


async def test_scenario_4_partitions_every_100ms(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Jobs that last a little (a pause in each), so that the job is still
    # running when the schedule has gone round once.
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=20, reduces=10, job_timeout=1.0)
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await add_worker(n2, "a", pause=0.05)
        await add_worker(n3, "b", pause=0.05)
        await add_worker(n3, "c", pause=0.05)
        schedule = [
            (partition, [n1, n2]),
            (heal, [n1, n2]),
            (partition, [n1, n3]),
            (heal, [n1, n2, n3]),
            (partition, [n1]),
            (heal, [n1, n2, n3]),
        ]
        t0 = time.monotonic()
        sup = await rpc.call(n1, start, pybeam.self(), job.as_term())
        result = None
        steps = 0
        try:
            # The schedule, again and again, until the result arrives.
            while result is None:
                action, nodes = schedule[steps % len(schedule)]
                await action(nodes)
                steps += 1
                try:
                    result = await wait_for_result(job, timeout=0.1)
                except TimeoutError:
                    assert time.monotonic() - t0 < 30, "no result within 30 s"
            elapsed = time.monotonic() - t0
        finally:
            await heal([n1, n2, n3])
        await supervisor.stop(sup)
    assert result.keys() == set(LINES)
    assert steps >= len(schedule), "the job finished before the schedule did: the test proves less"
    assert elapsed < 5.0, f"the result took {elapsed:.2f}s"


# -- more failures ---------------------------------------------------------------------


async def wait_for_progress(job: Job, maps_done: int, timeout: float = 30) -> None:
    """Wait for the master's report that at least ``maps_done`` map jobs are done."""
    while True:
        _, _, maps, _, _, _ = await receive(("progress", job.name, ANY, ANY, ANY, ANY), timeout=timeout)
        if maps >= maps_done:
            return


async def test_sigkill_of_a_worker_node_in_the_middle_of_a_job(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=20, reduces=10)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        for i in range(2):
            await add_worker(n1, f"doomed{i}", pause=0.05)
            await add_worker(n2, f"lives{i}", pause=0.05)
        sup = await start(pybeam.self(), job, progress=pybeam.self())
        await wait_for_progress(job, 4)
        c.kill(n1)  # its workers are in the middle of jobs: they pause in each
        result = await wait_for_result(job, timeout=30)
        await supervisor.stop(sup)
    assert result.keys() == set(LINES)
    assert jobs_done_by(redis_server, job, "doomed0") > 0


async def test_a_stuck_worker_times_out_and_its_job_goes_to_another(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, job_timeout=0.5)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await add_worker(n1, "stuck", hang_after=1)
        await add_worker(n2, "fine")
        assert (await run_job(job, timeout=30)).keys() == set(LINES)
    assert jobs_done_by(redis_server, job, "stuck") == 1


async def test_a_slow_worker_finishes_a_job_that_was_also_done_by_another(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # The slow worker's jobs time out and go to the fast one; its answers still
    # come, late, for jobs already done: harmless, and counted once.
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=20, reduces=10, job_timeout=0.2)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await add_worker(n1, "slow", pause=0.4)
        await add_worker(n2, "fast", pause=0.05)
        assert (await run_job(job, timeout=30)).keys() == set(LINES)
        await eventually(lambda: jobs_done_by(redis_server, job, "slow") > 0)


async def test_the_supervisor_restarts_a_killed_master_which_still_answers_once(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=20, reduces=10)
    async with cluster(1) as c:
        for i in range(2):
            await add_worker(c.nodes[0], f"w{i}", pause=0.02)
        sup = await start(pybeam.self(), job, progress=pybeam.self())
        [child] = await supervisor.which_children(sup)
        await wait_for_progress(job, 3)
        assert child.pid is not None
        pybeam.exit(child.pid, "kill")
        assert (await wait_for_result(job, timeout=30)).keys() == set(LINES)
        [restarted] = await supervisor.which_children(sup)
        assert restarted.pid != child.pid
        await supervisor.stop(sup)
        with pytest.raises(TimeoutError):
            await receive(("result", job.name, ANY), timeout=0.3)


async def test_redis_restarted_in_the_middle_of_a_job_gives_the_exact_answer(
    cluster: Any, tmp_path: Path
) -> None:
    # A server of its own: restarting it loses everything in it.
    with RedisServer.start() as server:
        job = new_job(tmp_path, server, LINES, IDENTITY, maps=20, reduces=10, redis_patience=10.0)
        async with cluster(2) as c:
            for i, node in enumerate(c.nodes):
                await add_worker(node, f"w{i}", pause=0.02)
            sup = await start(pybeam.self(), job, progress=pybeam.self())
            await wait_for_progress(job, 5)
            # On the loop's thread: the server dies with the thread that started it.
            server.restart()
            # The master notices the data is gone and starts over (its progress
            # goes back to 0): exact, or a clear error, never a wrong answer.
            # With Redis back at once, exact.
            await wait_for_progress_back_to_0(job)
            result = await wait_for_result(job, timeout=30)
            await supervisor.stop(sup)
    assert result.keys() == set(LINES)


async def wait_for_progress_back_to_0(job: Job) -> None:
    await receive(("progress", job.name, 0, ANY, 0, ANY), timeout=30)


async def test_redis_gone_for_good_is_a_clear_error(cluster: Any, tmp_path: Path) -> None:
    with RedisServer.start() as server:
        job = new_job(tmp_path, server, LINES, IDENTITY, maps=20, reduces=10, redis_patience=1.0)
        async with cluster(1) as c:
            await add_worker(c.nodes[0], "w", pause=0.02)
            sup = await start(pybeam.self(), job, progress=pybeam.self())
            await wait_for_progress(job, 2)
            server.stop()
            _, _, why = await receive(("error", job.name, ANY), timeout=30)
            await supervisor.stop(sup)
    assert f"Redis at {server.url} is unreachable" in why


async def test_unreadable_input_is_a_clear_error(tmp_path: Path, redis_server: RedisServer) -> None:
    job = Job("missing", str(tmp_path / "nope.txt"), WORD_COUNT, redis_server.url)
    with pytest.raises(MapReduceError, match=r"cannot read .*nope\.txt: No such file"):
        await run_job(job, timeout=10)


async def test_input_that_is_not_utf8_is_a_clear_error_naming_the_byte(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # The master stores the bytes as they are; the worker that decodes the bad
    # chunk says so, and the master fails the job with the byte's offset in the file.
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\n" * 1000 + b"bad \xff byte\n" + b"good line\n" * 1000)
    job = Job(f"t{secrets.token_hex(4)}", str(path), WORD_COUNT, redis_server.url, maps=4, reduces=2)
    async with cluster(1) as c:
        await add_worker(c.nodes[0], "w")
        with pytest.raises(
            MapReduceError, match=r"latin1\.txt is not UTF-8 text \(invalid start byte at byte 10004\)"
        ):
            await run_job(job, timeout=30)
        # The worker did not crash: it serves the next job.
        good = new_job(tmp_path, redis_server, ["foo bar", "foo"], WORD_COUNT)
        assert await run_job(good, timeout=30) == {"foo": 2, "bar": 1}


def generated_text(seed: int, words: int) -> str:
    rnd = random.Random(seed)
    vocabulary = ["the", "The", "THE", "and", "And", "Straße", "strasse", "élan", "Élan", "日本語", "naïve",
                  "ΣΊΣΥΦΟΣ", "σίσυφος", "🙂", "x", "İstanbul", "ﬁne", "a-b", "don't", "2026"]  # fmt: skip
    spaces = [" ", " ", "  ", "\t", "\n", " \n", "\u00a0", "\u3000", "\r\n"]
    return "".join(rnd.choice(vocabulary) + rnd.choice(spaces) for _ in range(words))


async def test_word_count_equals_collections_counter_on_unicode_mixed_case_text(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    text = generated_text(7, 50_000)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    job = Job(f"t{secrets.token_hex(4)}", str(path), WORD_COUNT, redis_server.url, maps=7, reduces=3)
    async with cluster(2) as c:
        # Two nodes, so two hash seeds: a word sent to the reduce job chosen by
        # hash() would be counted in two places.
        for i, node in enumerate(c.nodes):
            await add_worker(node, f"w{i}")
        assert await run_job(job, timeout=30) == Counter(text.split())


async def test_a_job_that_crashes_every_worker_fails_with_the_crash(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    lines = [f"word{i % 10}" for i in range(1000)]
    lines[500] = "poison"
    job = new_job(tmp_path, redis_server, lines, "map_reduce_jobs", maps=4, reduces=2)
    async with cluster(1) as c:
        for i in range(5):
            await add_worker(c.nodes[0], f"w{i}")
        with pytest.raises(
            MapReduceError, match=r"map job \d crashed 3 workers; the last with .*ZeroDivisionError"
        ):
            await run_job(job, timeout=30)


async def test_the_training_word_count_map_gives_the_same_answer(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # map_reduce_jobs.map emits (word, 1) per word, as the training's does.
    text = generated_text(8, 20_000)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    job = Job(f"t{secrets.token_hex(4)}", str(path), "map_reduce_jobs", redis_server.url, maps=5, reduces=3)
    async with cluster(2) as c:
        for i, node in enumerate(c.nodes):
            await add_worker(node, f"w{i}")
        assert await run_job(job, timeout=30) == Counter(text.split())


# -- fair work distribution (the training's extra exercise) ---------------------------------


async def wait_for_workers(count: int) -> None:
    """Until this node's pg view has ``count`` workers: the master starts with those it sees."""
    await eventually(lambda: len(pg.get_members(GROUP)) == count)


async def test_jobs_go_to_whoever_is_idle_so_a_slow_worker_does_few(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # A worker gets a job only when it has none (pull, not round-robin): the
    # fast one keeps coming back for more while the slow one sits on one job.
    # Round-robin would give each half of the 30 jobs.
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=20, reduces=10, backups=False)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await add_worker(n1, "slow", pause=1.0)
        await add_worker(n2, "fast")
        await wait_for_workers(2)
        assert (await run_job(job, timeout=60)).keys() == set(LINES)
    slow, fast = jobs_done_by(redis_server, job, "slow"), jobs_done_by(redis_server, job, "fast")
    assert slow + fast == 30
    assert slow >= 1 and fast > 3 * slow, f"slow did {slow} jobs, fast {fast}"


async def test_a_stragglers_job_gets_a_copy_so_a_slow_worker_does_not_hold_up_the_result(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # The slow worker takes 30 s over its first job, far within job_timeout
    # (60 s): alive, not stuck, so neither a monitor nor the timeout moves
    # the job. When the fast worker has nothing left to do, it gets a copy.
    job = new_job(tmp_path, redis_server, LINES, IDENTITY, maps=10, reduces=5, job_timeout=60.0)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await add_worker(n1, "slow", pause=30.0)
        await add_worker(n2, "fast")
        await wait_for_workers(2)
        assert (await run_job(job, timeout=20)).keys() == set(LINES)
        # Every map job and every reduce job, the slow one's copy included.
        assert jobs_done_by(redis_server, job, "fast") == 15
        assert jobs_done_by(redis_server, job, "slow") == 0


async def test_jobs_are_spread_over_nodes_before_a_node_gets_a_second(
    cluster: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Three idle workers on node 1, one on node 2, two jobs a phase: each
    # phase gives one job to each node (the least loaded first), whatever
    # order the master learnt of the workers in.
    lines = LINES[:1000]
    job = new_job(tmp_path, redis_server, lines, IDENTITY, maps=2, reduces=2, backups=False)
    async with cluster(2) as c:
        n1, n2 = c.nodes
        for i in range(3):
            await add_worker(n1, f"a{i}")
        await add_worker(n2, "b")
        await wait_for_workers(4)
        assert (await run_job(job, timeout=30)).keys() == set(lines)
    assert jobs_done_by(redis_server, job, "b") == 2
    assert sum(jobs_done_by(redis_server, job, f"a{i}") for i in range(3)) == 2
