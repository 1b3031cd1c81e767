"""The CPU emulator that executes our CUDA kernel sources: barrier semantics, poisoned shared memory, divergence."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="C++ extension not built")


@pytest.mark.parametrize("block", [1, 32, 256, 1024])
@pytest.mark.parametrize("n", [1, 31, 1000, 3000])
def test_block_reduction_with_barriers_is_exact(block, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    got = ops._ext.emu_block_sum(x, block, True)
    ref = np.array([x[i:i + block].astype(np.float64).sum() for i in range(0, n, block)])
    assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("block", [32, 256])
def test_missing_barrier_is_caught_deterministically(block):
    x = np.ones(2 * block, np.float32)
    for _ in range(3):  # not flaky: the same wrong answer every time
        bad = ops._ext.emu_block_sum(x, block, False)
        assert not np.allclose(bad, block), "a missing __syncthreads must change the result"


def test_divergent_barrier_is_an_error():
    with pytest.raises(RuntimeError, match="divergent __syncthreads"):
        ops._ext.emu_divergent_barrier()
