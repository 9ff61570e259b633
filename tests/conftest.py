# SPDX-License-Identifier: MIT
"""Shared pytest setup for fastrnn's tests."""

import os
import sys

# Tests import their helpers as top-level modules (`from _tolerances import ...`), whatever
# pytest's import mode: put this directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
