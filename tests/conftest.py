# SPDX-License-Identifier: MIT
"""Shared pytest setup for fastrnn's tests."""

import os
import sys

import pytest

# Tests import their helpers as top-level modules (`from _tolerances import ...`), whatever
# pytest's import mode: put this directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_threads():
    """Put fastrnn's engine thread count back after a test that changes it."""
    import fastrnn

    threads = fastrnn.backends()["cpu"]["threads"]
    yield
    fastrnn.set_num_threads(threads)
