"""Shared fixtures. `smoke_root`: a smoke-size synth300w (32/8/4/8 faces) generated once per test session."""
from __future__ import annotations

import pytest

from nbutils.data import ensure_synth300w


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """Path of a smoke synth300w data set (CSV layout at the root, raw iBUG tree under root/images)."""
    return ensure_synth300w(tmp_path_factory.mktemp("data") / "synth300w-smoke-s0", size="smoke", seed=0)
