"""The activation cache: what one job stores, another reads back; jobs may fill one cache at once."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from detectors.calibration.activation_cache import ActivationCache, TokenActivations
from detectors.calibration.data import Example


def _example(writer: int, i: int) -> Example:
    return Example((("user", f"writer {writer} example {i}"),), 0, "test", "test.jsonl", f"g{writer}-{i}", "train")


def _tokens(writer: int, i: int) -> TokenActivations:
    n = 1 + (i % 5)  # examples of different lengths: offsets inside a shard matter
    value = writer * 1000 + i
    return TokenActivations(np.full((n, 4), value, dtype=np.float16), np.full(n, value, dtype=np.int32),
                            np.zeros(n, dtype=np.uint8), np.arange(n, dtype=np.int32))


def _fill(root, writer: int, n: int, start) -> None:
    cache = ActivationCache(root, "m", 3)  # each job opens the cache before the others have written
    start.wait()
    examples = [_example(writer, i) for i in range(n)]
    cache.ensure(examples, lambda todo: ((k, _tokens(writer, int(e.group.split("-")[1]))) for k, e in enumerate(todo)),
                 flush_every=7, progress=False)


def test_two_jobs_filling_one_cache_keep_every_entry_intact(tmp_path):
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    jobs = [ctx.Process(target=_fill, args=(tmp_path, w, 60, start)) for w in (1, 2)]
    for j in jobs:
        j.start()
    start.wait()
    for j in jobs:
        j.join(60)
        assert j.exitcode == 0
    cache = ActivationCache(tmp_path, "m", 3)
    for w in (1, 2):
        for i in range(60):
            t = cache.get(_example(w, i).key)  # KeyError: an entry was dropped
            assert len(t.acts) == 1 + i % 5
            assert (t.acts == w * 1000 + i).all() and (t.token_ids == w * 1000 + i).all()  # another job's shard
    assert len(cache.index) == 120
