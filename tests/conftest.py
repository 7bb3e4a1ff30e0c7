"""Shared fixtures. `smoke_root`: a smoke-size synth300w (32/8/4/8 faces) generated once per test session."""
from __future__ import annotations

import pytest
import torch

from nbutils.data import ensure_synth300w


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """Path of a smoke synth300w data set (CSV layout at the root, raw iBUG tree under root/images)."""
    return ensure_synth300w(tmp_path_factory.mktemp("data") / "synth300w-smoke-s0", size="smoke", seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: faster for tiny convolutions, and no
    OpenMP spinning when the 2-core machine is busy. Use with pytestmark = pytest.mark.usefixtures(...)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
