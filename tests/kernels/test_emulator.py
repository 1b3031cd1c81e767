"""The CPU emulator that executes our CUDA kernel sources: barrier semantics, launch schedules (thread and block
order), the shared-memory race/bounds checker, poisoned shared memory, divergence."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels.emulation import SCHEDULES, schedule, under_schedules

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")


@pytest.mark.parametrize("block", [1, 32, 256, 1024])
@pytest.mark.parametrize("n", [1, 31, 1000, 3000])
def test_block_reduction_with_barriers_is_exact_under_every_schedule(block, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    got = under_schedules(lambda: ops._ext.emu_block_sum(x, block, True))
    ref = np.array([x[i:i + block].astype(np.float64).sum() for i in range(0, n, block)])
    assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("block", [32, 256])
@pytest.mark.parametrize("order,seed", SCHEDULES)
def test_missing_barrier_is_reported_by_the_race_checker(block, order, seed):
    x = np.ones(2 * block, np.float32)
    with schedule(order, seed), pytest.raises(RuntimeError, match="data race|uninitialised read"):
        ops._ext.emu_block_sum(x, block, False)


@pytest.mark.parametrize("block", [32, 256])
def test_missing_barrier_changes_the_result_without_the_race_checker(block):
    """The schedules alone expose the race: a reader that runs before the writer sees poisoned shared memory (the
    reverse order happens to run every writer first here, the other orders do not)."""
    x = np.ones(2 * block, np.float32)
    results = {}
    for order, seed in SCHEDULES:
        with schedule(order, seed, race_check=False):
            for _ in range(2):  # not flaky: the same answer every time for one schedule
                got = ops._ext.emu_block_sum(x, block, False)
                assert results.setdefault((order, seed), got).tobytes() == got.tobytes()
    wrong = [k for k, v in results.items() if not np.array_equal(v, np.full(2, block, np.float32))]
    assert ("forward", 0) in wrong and len(wrong) >= 3, results
    with pytest.raises(AssertionError, match="differs between schedule"):
        under_schedules(lambda: ops._ext.emu_block_sum(x, block, False), race_check=False)


def test_a_global_memory_race_shows_as_a_difference_between_schedules():
    with schedule("forward"):
        assert ops._ext.emu_last_writer(3, 64) == 3 * 64 - 1
    with schedule("reverse"):
        assert ops._ext.emu_last_writer(3, 64) == 0
    with pytest.raises(AssertionError, match="differs between schedule"):
        under_schedules(lambda: np.array(ops._ext.emu_last_writer(3, 64)))


def test_random_schedules_are_seeded_and_shuffle_threads_and_blocks():
    seen = set()
    for seed in range(6):
        with schedule("random", seed):
            a = ops._ext.emu_last_writer(4, 32)
            assert ops._ext.emu_last_writer(4, 32) == a, "same seed, same order"
        seen.add(a)
    assert len(seen) >= 3 and not seen <= {0, 127}


def test_shared_index_out_of_bounds_is_an_error():
    with pytest.raises(RuntimeError, match=r"out of bounds: shared 'buf'\[32\]"):
        ops._ext.emu_shared_out_of_bounds()


def test_schedule_is_restored_and_checked():
    before = ops._ext.emu_schedule()
    with schedule("random", 5, race_check=False):
        assert ops._ext.emu_schedule() == ("random", 5, False)
    assert ops._ext.emu_schedule() == before
    with pytest.raises(ValueError, match="order must be"):
        ops._ext.emu_schedule("sideways")


def test_divergent_barrier_is_an_error():
    with pytest.raises(RuntimeError, match="divergent __syncthreads"):
        ops._ext.emu_divergent_barrier()
