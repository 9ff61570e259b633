# SPDX-License-Identifier: MIT
"""Run fastrnn's benchmark from a source checkout: the same as `python -m fastrnn bench`.

The code lives in python/fastrnn/_bench.py so that an installed package can run it too;
this file only forwards the command line. See benchmarks/README.md for recorded results.
"""
import sys

from fastrnn._bench import main

if __name__ == "__main__":
    sys.exit(main())
