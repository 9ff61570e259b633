# SPDX-License-Identifier: MIT
"""`python -m fastrnn bench` (python/fastrnn/_bench.py) at a tiny size: every peer computes the
same outputs as fastrnn (so its timings compare like with like), the rows carry what the
tables print, and the command line refuses bad arguments. No timing is asserted: machines are
noisy, and speed claims come from the benchmark itself.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _bench

pytestmark = pytest.mark.skipif(
    not __import__("fastrnn").backends()["cpu"]["available"], reason="compiled engine not built")

T, B, I, H = 5, 3, 4, 6


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("peer", ["reference", "torch", "onnxruntime"])
def test_peers_compute_what_fastrnn_computes(peer, cell, layers):
    module = _bench._import_peer(peer)
    if module is None:
        pytest.skip(f"{peer} is not installed")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _bench._weights(cell, I, H, layers, rng)
    ours = _bench._fastrnn_runners(cell, x, weights, layers, "cpu")[0]["inference"]()
    if peer == "torch":
        theirs = _bench._torch_runners(module, cell, x, weights, layers)["inference"]()
    elif peer == "onnxruntime":
        theirs = _bench._onnxruntime_runner(module, cell, x, weights, layers, 1)["inference"]()
    else:
        theirs = _bench._fastrnn_runners(cell, x, weights, layers, "reference")[0]["inference"]()
    assert theirs.shape == ours.shape == (T, B, H)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)  # float32, O(1) values


def test_rows_and_json(tmp_path, capsys):
    rows = _bench.run(shapes=["tiny"], cells=("lstm", "gru"), threads=(1, 2), repeats=1,
                      peers=("torch", "onnxruntime", "reference"),
                      custom={"tiny": (T, B, I, H, 2)})
    table = capsys.readouterr().out
    assert len(rows) == 2 * 2 * 2  # threads x cells x modes
    for row in rows:
        assert row["fastrnn_ms"] > 0 and row["gflops"] > 0
        assert (row["reserve_mib"] is None) == (row["mode"] == "inference")
        for peer in ("torch", "reference"):
            if _bench._import_peer(peer) is not None:
                assert row[f"speedup_vs_{peer}"] == pytest.approx(row[f"{peer}_ms"] / row["fastrnn_ms"])
        if _bench._import_peer("onnxruntime") is not None:
            assert ("onnxruntime_ms" in row) == (row["mode"] == "inference")
    assert "GEMM rate" in table and "tiny  lstm inference" in table
    if fastrnn.backends()["cpu"]["simd"] == "avx2+fma":
        assert all(row["fma_peak_gflops"] > 0 for row in rows) and "FMA peak" in table
    json.dumps(rows)  # what --json writes


def test_fma_peak_only_with_fma_kernels():
    # the baseline kernel table has no FMA loop: no peak, rather than a number from a
    # different instruction mix (the table is chosen once per process, hence the child)
    code = "from fastrnn import _bench; print(_bench.fma_peak(1))"
    env = dict(os.environ, FASTRNN_SIMD="baseline")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "None"


def test_fma_peak_leaves_the_thread_count():
    before = fastrnn.backends()["cpu"]["threads"]
    _bench.fma_peak(before + 1)
    assert fastrnn.backends()["cpu"]["threads"] == before


@pytest.mark.parametrize("args, message", [
    (["--cells", "lstm,cnn"], "--cells: expected names from lstm,gru,rnn, got 'cnn'"),
    (["--shapes", "S9"], "--shapes: expected names from S1,S2,S3,S4,S5, got 'S9'"),
    (["--threads", "0"], "--threads: expected ints >= 1, got '0'"),
    (["--threads", "two"], "--threads: expected comma-separated ints, got 'two'"),
    (["--shape", "5,3,4"], "--shape: expected T,B,I,H or T,B,I,H,L of ints >= 1, got '5,3,4'"),
    (["--peers", "tensorflow"], "--peers: expected names from torch,onnxruntime,reference"),
])
def test_command_line_refuses_bad_arguments(args, message):
    run = subprocess.run([sys.executable, "-m", "fastrnn", "bench", *args], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert message in run.stderr
