"""The sampler's gauges: read on every sample beside the processes, and Redis's used memory
read from a real Redis."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import redis

from loadtests.sampler import ProcessSampler, redis_used_mb
from runtime.processes import free_port
from tests.conftest import Servers

PROBE = "loadtests:sampler-probe"


def test_redis_used_memory_follows_what_redis_holds(clean: Servers) -> None:
    gauge = redis_used_mb(clean.redis_url)
    before = gauge()
    with redis.Redis.from_url(clean.redis_url) as client:
        client.set(PROBE, b"x" * (4 * 1024 * 1024))
        try:
            held = gauge()
        finally:
            client.delete(PROBE)

    assert before is not None and before > 0
    assert held is not None and held - before >= 3.9


def test_a_redis_that_does_not_answer_gives_no_reading() -> None:
    assert redis_used_mb(f"redis://127.0.0.1:{free_port()}/0")() is None


def test_each_sample_reads_the_gauges_and_keeps_only_answers(clean: Servers) -> None:
    answers = iter([1.5, None, 2.5])
    sampler = ProcessSampler(
        lambda: {},
        gauges={"redis": redis_used_mb(clean.redis_url), "flaky": lambda: next(answers)},
    )

    for _ in range(3):
        sampler.sample()

    assert len(sampler.readings["redis"]) == 3
    assert [value for _, value in sampler.readings["flaky"]] == [1.5, 2.5]
    at = sampler.readings["flaky"][1][0]
    assert sampler.reading_at("flaky", at) == 2.5
    assert math.isnan(sampler.reading_at("flaky", at - 3600))


def test_a_process_counts_in_the_first_group_that_reaches_it() -> None:
    # A load tool that started the stack has the server below it: the server's CPU must
    # not be counted again as the load's.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = ProcessSampler(lambda: {"server": [child.pid], "load": [os.getpid()]})
        sampler.sample()
    finally:
        child.kill()
        child.wait()
    (server,) = sampler.samples["server"]
    (load,) = sampler.samples["load"]
    assert set(server.cpu_s) == {child.pid}
    assert os.getpid() in load.cpu_s
    assert child.pid not in load.cpu_s
