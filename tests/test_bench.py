# SPDX-License-Identifier: MIT
"""`python -m fastrnn bench` (python/fastrnn/_bench.py) at a tiny size: every peer computes the
same outputs as fastrnn (so its timings compare like with like), the rows carry what the
tables print, and the command line refuses bad arguments. No timing is asserted: machines are
noisy, and speed claims come from the benchmark itself.
"""

import contextlib
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
    if fastrnn.backends()["cpu"]["simd"] in ("avx2+fma", "avx512+fma"):
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
    (["--repeats", "0"], "--repeats: expected an int >= 1, got 0"),
    (["--streaming", "--device", "cuda"], "--streaming: the streaming section runs on the CPU"),
])
def test_command_line_refuses_bad_arguments(args, message):
    run = subprocess.run([sys.executable, "-m", "fastrnn", "bench", *args], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert message in run.stderr


# ----------------------------------------------------------------------------------------------
# --streaming: one time step per call, state carried; batch-1 sequences


def _numpy(y):
    return y.numpy() if hasattr(y, "numpy") else np.asarray(y)  # torch's steps give tensors


def _inference_mode():
    torch = _bench._import_peer("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


@pytest.mark.parametrize("contender", list(_bench.STREAM_COLUMNS))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_streaming_runners_compute_what_fastrnn_computes(cell, contender):
    # K inputs, cycled twice: 2K steps must equal one forward call over the 2K inputs, so each
    # runner carries its state from call to call (and the wrap-around keeps it too)
    K = 4
    available = {p: _bench._import_peer(p) for p in ("torch", "onnxruntime")}
    rng = np.random.default_rng(0)
    weights = _bench._weights(cell, I, H, 1, rng)
    xs = rng.standard_normal((K, B, I)).astype(np.float32)
    with _inference_mode():
        runners = _bench._stream_runners(cell, xs, weights, available)
        if contender not in runners:
            pytest.skip(f"{contender}: its peer is not installed")
        theirs = np.stack([_numpy(runners[contender]()).copy() for _ in range(2 * K)])
    if contender == "prepare_step_bf16":  # computes with the matrices rounded to bfloat16
        import torch

        weights = [torch.from_numpy(w).to(torch.bfloat16).float().numpy() if w.ndim == 2 else w
                   for w in weights]
    if contender == "prepare_step_int8":  # with the matrices quantized row by row
        weights = list(fastrnn.prepare(cell, weights, weights_dtype="int8")._flat)
    ours = getattr(fastrnn, f"{cell}_forward")(np.concatenate([xs, xs]), weights).y
    assert theirs.shape == ours.shape == (2 * K, B, H)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)  # float32, O(1) values


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_runners_compute_what_fastrnn_computes(cell):
    available = {p: _bench._import_peer(p) for p in ("torch", "onnxruntime")}
    rng = np.random.default_rng(0)
    weights = _bench._weights(cell, I, H, 1, rng)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    ours = getattr(fastrnn, f"{cell}_forward")(x, weights).y
    runners = _bench._seq_runners(cell, x, weights, available, 1)
    assert set(runners) >= {"prepared", "functional"}
    assert ("onnxruntime" in runners) == (available["onnxruntime"] is not None)
    for name, fn in runners.items():
        theirs = fn()
        assert theirs.shape == ours.shape == (T, 1, H), name
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5, err_msg=name)


def test_streaming_rows_and_json(capsys):
    threads = fastrnn.backends()["cpu"]["threads"]
    rows = _bench.run_streaming(rows=["tiny"], seq_rows=["tiny seq"], seq_threads=(1, 2),
                                repeats=1, custom={"tiny": ("gru", 2, I, H)},
                                custom_seq={"tiny seq": ("lstm", T, 1, I, H)})
    table = capsys.readouterr().out
    assert fastrnn.backends()["cpu"]["threads"] == threads  # restored
    assert [(r["section"], r["threads"]) for r in rows] == [
        ("streaming", 1), ("sequence", 1), ("sequence", 2)]
    stream, seqs = rows[0], rows[1:]
    assert (stream["cell"], stream["T"], stream["B"], stream["H"]) == ("gru", 1, 2, H)
    for key in ("prepare_step", "functional", "numpy_step"):
        assert stream[f"{key}_us"] > 0
    if _bench._import_peer("onnxruntime") is not None:
        best = min(stream["onnxruntime_us"], stream["numpy_step_us"])
        assert stream["speedup_step_vs_best_of_onnxruntime_numpy"] == pytest.approx(
            best / stream["prepare_step_us"])
    assert stream["speedup_functional_vs_numpy_step"] == pytest.approx(
        stream["numpy_step_us"] / stream["functional_us"])
    if _bench._import_peer("torch") is not None:
        assert stream["speedup_fastrnn_torch_vs_torch_nn"] == pytest.approx(
            stream["torch_nn_us"] / stream["fastrnn_torch_us"])
    else:
        assert stream["fastrnn_torch_us"] is None and "-" in table
    for row in seqs:
        assert row["prepared_ms"] > 0 and row["functional_ms"] > 0 and row["T"] == T
        if _bench._import_peer("onnxruntime") is not None:
            assert row["speedup_prepared_vs_onnxruntime"] == pytest.approx(
                row["onnxruntime_ms"] / row["prepared_ms"])
    assert all(r["cpu"] == _bench.cpu_model() and r["repeats"] == 1 for r in rows)
    assert "tiny " in table and "tiny seq" in table and "load average" in table
    assert _bench.cpu_model() in table and "median over 1 blocks" in table
    json.dumps(rows)  # what --json writes


def test_streaming_is_on_the_command_line():
    run = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--streaming" in run.stdout
    assert "--streaming" in _bench.__doc__


def test_keras_section_rows():
    """bench --keras on a tiny model: a row per installed backend and masking, both models
    timed (the numbers are not checked: timings are never asserted)."""
    import importlib.util
    import io

    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("keras or torch is not installed")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):  # as .ci/sanitize leaves test_keras.py out
        pytest.skip("Keras' backends throw C++ exceptions, which abort under the ASan runtime")

    out = io.StringIO()
    rows = _bench.run_keras(backends=("torch",), shape=(4, 6, 50, 8, 5), repeats=1, out=out)
    assert [(r["backend"], r["mask_zero"]) for r in rows] == [("torch", False), ("torch", True)]
    for r in rows:
        assert r["keras_ms"] > 0 and r["fastrnn_ms"] > 0 and r["speedup"] > 0
    assert "fastrnn.keras" in out.getvalue()
