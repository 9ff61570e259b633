# SPDX-License-Identifier: MIT
"""The benchmark behind every speed claim: `python -m fastrnn bench` (also benchmarks/bench.py).

CPU (default): a grid of standard shapes (GRID: S1-S5) x cells x modes x thread counts, float32.
Times fastrnn's compiled engine and, in the same run, each installed peer: torch.nn
(inference and training), ONNX Runtime's LSTM/GRU/RNN operators (inference; it has no
training) and, when asked, the NumPy reference. Each timing is the median of repeats after a
warm-up. Rows also give the GEMM work rate (GFLOP/s), its share of the single-precision GEMM
rate measured on this machine in the same run (OpenBLAS through NumPy, in a child process per
thread count), and the training reserve fastrnn keeps for backward; each thread count's header
also gives the machine's float32 FMA peak (a loop of multiply-adds alone), the ceiling of any
GEMM. Peers are imported lazily and skipped when missing. Not here: correctness
(`python -m fastrnn check`).

Streaming (`--streaming`, instead of the grid): serving, streaming and generation, where a
call is one time step and the state is carried from call to call. STREAM_ROWS (LSTM T=1 at
B=1 I=H=256, B=1 I=H=512, B=16 I=H=256; GRU T=1 B=1 I=H=256), one thread everywhere (fastrnn,
torch, ONNX Runtime's intra-op pool, NumPy's BLAS through threadpoolctl), float32, µs per call:
fastrnn.prepare(...).step with out=, lstm_forward / gru_forward at T=1, fastrnn.torch.LSTM,
torch.nn.LSTM (modules with their state, under torch.inference_mode), torch.nn.LSTMCell /
GRUCell, ONNX Runtime (an LSTM / GRU node over T=1, state in and out) and the NumPy step a user
would write (_numpy_step). Then SEQ_ROWS: whole batch-1 sequences (T=100, I=H=256) through a
prepared network's net(x) and lstm_forward / gru_forward against ONNX Runtime, at 1 and 2
threads. All contenders of a row run in one process, timed in round-robin blocks of calls
(_interleaved), so drift of the machine hits all alike; each number is the median over the
blocks. Every runner computes what fastrnn computes (tests/test_bench.py).

Keras (`--keras`, instead of the grid): one training step (train_on_batch: forward, backward,
Adam) of the Keras IMDB model, Embedding(20000, 32) -> LSTM(32) -> Dense(1), batch 100, 300
steps, 1 thread, with keras.layers.LSTM and with fastrnn.keras.LSTM from the same weights, on
the torch and JAX backends (a child process each), without and with mask_zero; the two
models take turns step by step, medians in ms (KERAS_SCRIPT).

CUDA (`--device cuda`): fastrnn's CUDA engine against torch.nn / cuDNN over a fixed grid.
"""

import contextlib
import gc
import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np

from . import _api, _backends

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# The standard CPU grid: name -> (T, B, I, H, layers)
GRID = {
    "S1": (28, 128, 28, 128, 1),  # MNIST rows as a sequence
    "S2": (35, 20, 200, 200, 2),  # PTB language model, 2 layers
    "S3": (100, 64, 256, 256, 1),
    "S4": (100, 64, 512, 512, 1),
    "S5": (100, 1, 256, 256, 1),  # batch-1 latency
}
QUICK = {"shapes": ("S1", "S5"), "repeats": 3}


def gemm_flops(cell, T, B, I, H, training, layers=1):
    """2·T·B·G·H·(I+H) per layer-direction forward (layer l > 0 reads H inputs); training
    counts 3x (forward, dh and dx, weight gradients), the usual accounting for RNN training."""
    fwd = sum(2.0 * T * B * GATES[cell] * H * ((I if l == 0 else H) + H) for l in range(layers))
    return 3 * fwd if training else fwd


# Pause before timing each contender: the peers' thread pools (torch's OpenMP, ONNX Runtime's
# intra-op pool) keep spinning for a while after a call returns, and on a small machine their
# spinning threads would take cores from whatever is timed next.
SETTLE_SECONDS = 0.25


def _timeit(fn, repeats, warmup=1):
    """(min, median) seconds of `repeats` calls after `warmup` untimed ones."""
    time.sleep(SETTLE_SECONDS)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


GEMM_RATE_SCRIPT = """
import sys, time, numpy as np
m, n, k = 6400, 2048, 1024  # S4's input projection: (T*B) x (4H) x I
a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
a @ b
times = []
for _ in range(5):
    t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
print(2.0 * m * n * k / float(np.median(times)) / 1e9)
"""


def gemm_rate(threads):
    """GFLOP/s of a large float32 GEMM on `threads` threads (NumPy's OpenBLAS in a child
    process, so its thread count can be set), or None if it cannot be measured."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    try:
        run = subprocess.run([sys.executable, "-c", GEMM_RATE_SCRIPT], env=env, timeout=300,
                             capture_output=True, text=True)
        return float(run.stdout.strip()) if run.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def fma_peak(threads):
    """GFLOP/s of float32 multiply-adds on `threads` of fastrnn's threads at once, from a loop
    of nothing else: the compute peak no GEMM can pass. None without AVX2+FMA or AVX-512 kernels."""
    core = _backends._core
    if core is None:
        return None
    before = core.num_threads()
    core.set_num_threads(threads)
    try:
        return core.fma_peak_gflops() or None
    finally:
        core.set_num_threads(before)


def _weights(cell, I, H, layers, rng):
    """Canonical weights (torch init, U(-1/sqrt(H), 1/sqrt(H))) of a unidirectional stack."""
    G, k = GATES[cell], 1 / np.sqrt(H)
    weights = []
    for layer in range(layers):
        for shape in [(G * H, I if layer == 0 else H), (G * H, H), (G * H,), (G * H,)]:
            weights.append(rng.uniform(-k, k, shape).astype(np.float32))
    return weights


# Runners: {mode: fn}; an inference fn returns y (T, B, H), so tests can check that every
# peer computes the same thing as fastrnn.


def _fastrnn_runners(cell, x, weights, layers, backend):
    fwd = getattr(_api, f"{cell}_forward")
    bwd = getattr(_api, f"{cell}_backward")
    state = {}

    def infer():
        return fwd(x, weights, num_layers=layers, backend=backend).y

    def train():
        out = fwd(x, weights, num_layers=layers, training=True, backend=backend)
        state["saved_bytes"] = _saved_bytes(out.saved)
        bwd(out.saved, np.ones_like(out.y))

    return {"inference": infer, "training": train}, state


def _saved_bytes(saved):
    """What a training forward keeps for backward beyond the inputs: the engine's reserve."""
    reserve = saved.state
    if isinstance(reserve, np.ndarray):
        return reserve.nbytes
    return None  # the reference keeps Python caches


def _torch_runners(torch, cell, x, weights, layers):
    T, B, I = x.shape
    H = weights[1].shape[1]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    mod = cls(I, H, num_layers=layers)
    with torch.no_grad():
        for p, w in zip(mod._flat_weights, weights):
            p.copy_(torch.from_numpy(w))
    xt = torch.from_numpy(x)

    def infer():
        with torch.no_grad():
            return mod(xt)[0].numpy()

    def train():
        xg = xt.clone().requires_grad_(True)
        y, _ = mod(xg)
        y.backward(torch.ones_like(y))

    return {"inference": infer, "training": train}


def _onnx_model(cell, weights, layers, shape, state=False):
    """An ONNX model of `layers` LSTM/GRU/RNN operators (forward direction, PyTorch's GRU
    variant) over x of `shape` (T, B, I), with fastrnn's weights converted by
    fastrnn.convert.to_onnx. Without `state`: input X, output Y (T, 1, B, H) of the last
    layer. With `state` (one layer): inputs X, initial_h (1, B, H) [, initial_c], outputs Y_h
    [, Y_c] (1, B, H): the new state, so a caller can carry it from one call to the next."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from . import convert

    T, B, I = shape
    H = weights[1].shape[1]
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    nodes, inits, inp = [], [], "X"
    for layer in range(layers):
        W, R, Bias = convert.to_onnx(cell, weights[4 * layer:4 * layer + 4])
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        inits += [numpy_helper.from_array(a, n) for a, n in zip((W, R, Bias), names)]
        attrs = {"hidden_size": H}
        if cell == "gru":
            attrs["linear_before_reset"] = 1
        out = f"Y{layer}"
        if state:
            states = ["initial_h", "initial_c"] if cell == "lstm" else ["initial_h"]
            outs = ["", "Y_h", "Y_c"] if cell == "lstm" else ["", "Y_h"]
            nodes.append(helper.make_node(op, [inp] + names + [""] + states, outs, **attrs))
        else:
            nodes.append(helper.make_node(op, [inp] + names, [out], **attrs))
        if layer < layers - 1:  # (T, 1, B, H) -> (T, B, H) for the next layer
            axes = f"axes{layer}"
            inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            nodes.append(helper.make_node("Squeeze", [out, axes], [f"X{layer + 1}"]))
            inp = f"X{layer + 1}"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    if state:
        if layers != 1:
            raise ValueError(f"layers: the model with state inputs has one layer, got {layers}")
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, B, H]) for n in states]
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, B, H])
                   for n in outs if n]
    else:
        outputs = [helper.make_tensor_value_info(f"Y{layers - 1}", TensorProto.FLOAT,
                                                 [T, 1, B, H])]
    graph = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # what onnxruntime 1.32 reads
    onnx.checker.check_model(model)
    return model


def _onnx_session(ort, model, threads):
    """An ONNX Runtime CPU session of `model` on `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _onnxruntime_runner(ort, cell, x, weights, layers, threads):
    """ONNX Runtime's LSTM/GRU/RNN operators (see _onnx_model) over x, inference."""
    session = _onnx_session(ort, _onnx_model(cell, weights, layers, x.shape), threads)

    def infer():
        return session.run(None, {"X": x})[0][:, 0]  # (T, 1, B, H) -> (T, B, H)

    return {"inference": infer}


def _import_peer(name):
    """The module of a peer, or None when it is not installed."""
    try:
        if name == "torch":
            import torch
            return torch
        if name == "onnxruntime":
            import onnx  # noqa: F401 - the graph is built with it
            import onnxruntime
            return onnxruntime
    except ImportError:
        return None
    return name  # "reference": always there


class _Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.live = hasattr(stream, "isatty") and stream.isatty()

    def step(self, what):
        self.done += 1
        if self.live:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                              f"{what:<40}")
            self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


def run(shapes=tuple(GRID), cells=("lstm", "gru", "rnn"), modes=("inference", "training"),
        threads=(1, 2), repeats=5, peers=("torch", "onnxruntime"), out=None, custom=None):
    """Run the CPU benchmark; print a table per thread count to `out` (default stdout);
    return the rows. shapes: names from GRID; custom: extra {name: (T, B, I, H, layers)}."""
    out = sys.stdout if out is None else out
    grid = dict(GRID, **(custom or {}))
    available = {p: _import_peer(p) for p in peers}
    missing = [p for p, m in available.items() if m is None]
    peers = [p for p in peers if available[p] is not None]
    info = _backends.backends()["cpu"]
    print(f"fastrnn bench: float32, kernels {info.get('simd')}, {info.get('blas')}; median of "
          f"{repeats} after a warm-up; peers: {', '.join(peers) or 'none'}"
          + (f" (not installed: {', '.join(missing)})" if missing else ""), file=out)
    jobs = [(n, shape, cell, mode) for n in threads for shape in shapes for cell in cells
            for mode in modes]
    progress = _Progress(len(jobs) + len(threads))
    restore = (info["threads"], available["torch"].get_num_threads() if "torch" in peers else None)
    try:
        return _run_grid(grid, shapes, cells, modes, threads, repeats, peers, available, progress,
                         out)
    finally:
        progress.close()
        _backends.set_num_threads(restore[0])
        if restore[1] is not None:
            available["torch"].set_num_threads(restore[1])


def _run_grid(grid, shapes, cells, modes, threads, repeats, peers, available, progress, out):
    rows = []
    for n in threads:
        _backends.set_num_threads(n)
        if "torch" in peers:
            available["torch"].set_num_threads(n)
        progress.step(f"GEMM rate and FMA peak, {n} thread(s)")
        peak = gemm_rate(n)
        fma = fma_peak(n)
        print(f"\n{n} thread(s); float32 GEMM rate on this machine: "
              + (f"{peak:.1f} GFLOP/s" if peak else "not measured")
              + (f"; FMA peak: {fma:.1f} GFLOP/s" if fma else "")
              + (f" (the GEMM at {100 * peak / fma:.0f} % of it)" if fma and peak else ""),
              file=out)
        header = f"{'shape':5} {'cell':4} {'mode':9} {'fastrnn ms':>10}"
        for p in peers:
            header += f" {p + ' ms':>16} {'x ' + p:>14}"
        header += f" {'GFLOP/s':>8} {'% GEMM':>6} {'reserve MiB':>11}"
        print(header, file=out)
        for shape in shapes:
            T, B, I, H, layers = grid[shape]
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            for cell in cells:
                weights = _weights(cell, I, H, layers, rng)
                runners, state = _fastrnn_runners(cell, x, weights, layers, "cpu")
                peer_runners = {}
                for p in peers:
                    if p == "torch":
                        peer_runners[p] = _torch_runners(available[p], cell, x, weights, layers)
                    elif p == "onnxruntime":
                        peer_runners[p] = _onnxruntime_runner(available[p], cell, x, weights,
                                                              layers, n)
                    else:
                        peer_runners[p] = _fastrnn_runners(cell, x, weights, layers, "reference")[0]
                for mode in modes:
                    progress.step(f"{shape} {cell} {mode}, {n} thread(s)")
                    row = {"shape": shape, "cell": cell, "mode": mode, "T": T, "B": B, "I": I,
                           "H": H, "layers": layers, "threads": n, "dtype": "float32",
                           "gemm_rate_gflops": peak, "fma_peak_gflops": fma}
                    tmin, tmed = _timeit(runners[mode], repeats)
                    row["fastrnn_ms"], row["fastrnn_ms_min"] = 1e3 * tmed, 1e3 * tmin
                    line = f"{shape:5} {cell:4} {mode:9} {row['fastrnn_ms']:10.2f}"
                    for p in peers:
                        fn = peer_runners[p].get(mode)
                        if fn is None:  # onnxruntime has no training
                            line += f" {'-':>16} {'-':>14}"
                            continue
                        reps = repeats if p != "reference" else max(1, min(repeats, 3))
                        pmin, pmed = _timeit(fn, reps)
                        row[f"{p}_ms"], row[f"{p}_ms_min"] = 1e3 * pmed, 1e3 * pmin
                        if p == "onnxruntime":  # done with it: end its (spinning) threads
                            peer_runners[p] = {}
                            gc.collect()
                        row[f"speedup_vs_{p}"] = pmed / tmed
                        line += f" {row[p + '_ms']:16.2f} {row[f'speedup_vs_{p}']:13.2f}x"
                    flops = gemm_flops(cell, T, B, I, H, mode == "training", layers)
                    row["gflops"] = flops / (tmed * 1e9)
                    row["percent_of_gemm"] = 100 * row["gflops"] / peak if peak else None
                    row["reserve_mib"] = (state.get("saved_bytes") or 0) / 2**20 \
                        if mode == "training" else None
                    line += f" {row['gflops']:8.1f} " + (
                        f"{row['percent_of_gemm']:5.0f}%" if peak else f"{'-':>6}")
                    line += (f" {row['reserve_mib']:11.1f}" if row["reserve_mib"] is not None
                             else f" {'-':>11}")
                    print(line, file=out, flush=True)
                    rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Streaming: one time step per call with the state carried from call to call (serving,
# streaming, generation), and whole batch-1 sequences. Every contender runs in this one
# process, float32, timed in round-robin blocks of calls (_interleaved).

# name -> (cell, B, I, H): one layer, one time step per call, one thread
STREAM_ROWS = {
    "lstm B=1 H=256": ("lstm", 1, 256, 256),
    "lstm B=1 H=512": ("lstm", 1, 512, 512),
    "lstm B=16 H=256": ("lstm", 16, 256, 256),
    "gru B=1 H=256": ("gru", 1, 256, 256),
}
# name -> (cell, T, B, I, H): one layer, the whole sequence per call, at each of SEQ_THREADS
SEQ_ROWS = {
    "lstm T=100 B=1 H=256": ("lstm", 100, 1, 256, 256),
    "gru T=100 B=1 H=256": ("gru", 100, 1, 256, 256),
}
SEQ_THREADS = (1, 2)
# contender -> column title. prepare_step: fastrnn.prepare(...).step(x_t, h, c, out=(h, c));
# functional: *_forward on (1, B, I) with h0 (, c0); fastrnn_torch / torch_nn: the module on
# (1, B, I) with its state, under torch.inference_mode; torch_cell: torch.nn.LSTMCell / GRUCell;
# onnxruntime: an LSTM / GRU node over T=1 with initial_h (, initial_c) in and Y_h (, Y_c) out;
# numpy_step: the NumPy lines a user would write (_numpy_step).
STREAM_COLUMNS = {"prepare_step": "prepare.step", "prepare_step_bf16": "bf16 step",
                  "prepare_step_int8": "int8 step", "functional": "*_forward", "fastrnn_torch":
                  "fastrnn.torch", "torch_nn": "torch.nn", "torch_cell": "torch *Cell",
                  "onnxruntime": "ONNX Runtime", "numpy_step": "NumPy step"}
# prepared: fastrnn.prepare(...)(x); functional: *_forward(x, weights); onnxruntime: a node
# over all T steps (the grid's runner)
SEQ_COLUMNS = {"prepared": "net(x)", "functional": "*_forward", "onnxruntime": "ONNX Runtime"}
STREAM_REPEATS, STREAM_QUICK_REPEATS = 15, 5  # timed blocks of calls per contender
STREAM_BLOCK_SECONDS = 0.004  # a block runs this long, about (calls per block set by a warm-up)
SEQ_BLOCK_SECONDS = 0.02  # the sequences' blocks: several calls of a few ms each
STREAM_INPUTS = 8  # distinct x_t, cycled through: the inputs change from call to call
# Before each block at more than one thread: ONNX Runtime's intra-op workers spin for a while
# after a call returns and take a core from the next contender (see SETTLE_SECONDS). Measured
# on 2 cores, GRU T=100 at 2 threads: after a 20 ms pause fastrnn's blocks that follow ONNX
# Runtime's still ran at 3-4x their time (net(x) 2.8 against 1.2 ms, the median of 10 rounds);
# after 200 ms, or with ONNX Runtime's spinning turned off, they did not.
SEQ_SETTLE_SECONDS = SETTLE_SECONDS


def _numpy_step(cell, weights):
    """One time step as a NumPy user writes it: step(x (B, I), h (B, H), c) -> (h, c), with
    c None for the GRU. weights: w_ih, w_hh, b_ih, b_hh of one layer (torch layout)."""
    W_ih, W_hh, b_ih, b_hh = weights
    H = W_hh.shape[1]

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    def lstm_step(x, h, c):
        a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # B,4H: gates i, f, g, o
        i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 3 * H:])
        c = f * c + i * np.tanh(a[:, 2 * H:3 * H])
        return o * np.tanh(c), c

    def gru_step(x, h, c=None):
        gi, gh = x @ W_ih.T + b_ih, h @ W_hh.T + b_hh  # B,3H: gates r, z, n
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        return (1 - z) * n + z * h, None

    return lstm_step if cell == "lstm" else gru_step


# Streaming runners: each returns step(), which runs one time step of a one-layer network on
# the next of xs (K, B, I) float32 (cycling), keeps the new state for the next call and returns
# this step's output (B, H) (a NumPy array, or a torch tensor for torch's). Torch's
# steps must run under torch.inference_mode() (run_streaming times them inside it).

def _stream_prepared(cell, xs, weights, weights_dtype=None):
    from ._prepared import prepare

    net = prepare(cell, weights, weights_dtype=weights_dtype)
    B, H = xs.shape[1], weights[1].shape[1]
    h = np.zeros((1, B, H), xs.dtype)
    c = np.zeros((1, B, H), xs.dtype) if cell == "lstm" else None
    inputs = itertools.cycle(list(xs))

    def step():
        net.step(next(inputs), h, c, out=(h, c))  # the state is updated in place
        return h[0]

    return step


def _stream_functional(cell, xs, weights):
    fwd = getattr(_api, f"{cell}_forward")
    B, H = xs.shape[1], weights[1].shape[1]
    state = {"h0": np.zeros((1, B, H), xs.dtype)}
    if cell == "lstm":
        state["c0"] = np.zeros((1, B, H), xs.dtype)
    inputs = itertools.cycle([x[None] for x in xs])  # (1, B, I): T = 1

    def step():
        out = fwd(next(inputs), weights, **state)
        state["h0"] = out.h_n
        if cell == "lstm":
            state["c0"] = out.c_n
        return out.y[0]

    return step


def _stream_torch_module(torch, cls, cell, xs, weights):
    """cls: torch.nn.LSTM / GRU or fastrnn.torch's."""
    _, B, I = xs.shape
    H = weights[1].shape[1]
    mod = cls(I, H)
    with torch.no_grad():
        for p, w in zip(mod._flat_weights, weights):
            p.copy_(torch.from_numpy(w))
    zeros = torch.zeros(1, B, H)
    state = [(zeros, zeros.clone()) if cell == "lstm" else zeros]
    inputs = itertools.cycle([torch.from_numpy(x[None].copy()) for x in xs])

    def step():
        y, state[0] = mod(next(inputs), state[0])
        return y[0]

    return step


def _stream_torch_cell(torch, cell, xs, weights):
    _, B, I = xs.shape
    H = weights[1].shape[1]
    mod = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(I, H)
    with torch.no_grad():
        for p, w in zip((mod.weight_ih, mod.weight_hh, mod.bias_ih, mod.bias_hh), weights):
            p.copy_(torch.from_numpy(w))
    zeros = torch.zeros(B, H)
    state = [(zeros, zeros.clone()) if cell == "lstm" else zeros]
    inputs = itertools.cycle([torch.from_numpy(x.copy()) for x in xs])

    def step():
        state[0] = mod(next(inputs), state[0])
        return state[0][0] if cell == "lstm" else state[0]

    return step


def _stream_onnxruntime(ort, cell, xs, weights):
    _, B, I = xs.shape
    H = weights[1].shape[1]
    session = _onnx_session(ort, _onnx_model(cell, weights, 1, (1, B, I), state=True), 1)
    names = ["Y_h", "Y_c"] if cell == "lstm" else ["Y_h"]
    feed = {"initial_h": np.zeros((1, B, H), np.float32)}
    if cell == "lstm":
        feed["initial_c"] = np.zeros((1, B, H), np.float32)
    inputs = itertools.cycle([x[None] for x in xs])

    def step():
        feed["X"] = next(inputs)
        new = session.run(names, feed)
        feed["initial_h"] = new[0]
        if cell == "lstm":
            feed["initial_c"] = new[1]
        return new[0][0]

    return step


def _stream_numpy(cell, xs, weights):
    step_fn = _numpy_step(cell, weights)
    B, H = xs.shape[1], weights[1].shape[1]
    state = [np.zeros((B, H), xs.dtype), np.zeros((B, H), xs.dtype) if cell == "lstm" else None]
    inputs = itertools.cycle(list(xs))

    def step():
        state[:] = step_fn(next(inputs), *state)
        return state[0]

    return step


def _stream_runners(cell, xs, weights, available):
    """{contender: step} for the contenders of STREAM_COLUMNS whose peers are installed;
    available: {"torch": module or None, "onnxruntime": module or None}."""
    runners = {"prepare_step": _stream_prepared(cell, xs, weights),
               "prepare_step_bf16": _stream_prepared(cell, xs, weights, "bfloat16"),
               "prepare_step_int8": _stream_prepared(cell, xs, weights, "int8"),
               "functional": _stream_functional(cell, xs, weights)}
    torch = available.get("torch")
    if torch is not None:
        import fastrnn.torch as fastrnn_torch

        name = {"lstm": "LSTM", "gru": "GRU"}[cell]
        runners["fastrnn_torch"] = _stream_torch_module(torch, getattr(fastrnn_torch, name),
                                                        cell, xs, weights)
        runners["torch_nn"] = _stream_torch_module(torch, getattr(torch.nn, name), cell, xs,
                                                   weights)
        runners["torch_cell"] = _stream_torch_cell(torch, cell, xs, weights)
    if available.get("onnxruntime") is not None:
        runners["onnxruntime"] = _stream_onnxruntime(available["onnxruntime"], cell, xs, weights)
    runners["numpy_step"] = _stream_numpy(cell, xs, weights)
    return runners


def _seq_runners(cell, x, weights, available, threads):
    """{contender: fn} of SEQ_COLUMNS: fn() returns y (T, B, H) of the whole sequence x."""
    from ._prepared import prepare

    net = prepare(cell, weights)
    runners = {"prepared": lambda: net(x).y,
               "functional": _fastrnn_runners(cell, x, weights, 1, "cpu")[0]["inference"]}
    if available.get("onnxruntime") is not None:
        runners["onnxruntime"] = _onnxruntime_runner(available["onnxruntime"], cell, x, weights,
                                                     1, threads)["inference"]
    return runners


def _interleaved(fns, repeats, block_seconds=STREAM_BLOCK_SECONDS, settle=0.0):
    """({name: (median, min) seconds per call}, {name: calls per block}) of fns {name: fn}.
    After a warm-up that also sizes each fn's block (about block_seconds of calls), each of
    `repeats` rounds times one block of every fn in turn, the order rotated from round to
    round, so drift of the machine (other processes, frequency) hits every contender alike.
    settle: seconds to sleep before each block, which then starts with one untimed call (it
    wakes the thread pools that the sleep let doze off)."""
    names = list(fns)
    calls = {}
    for name in names:
        fn = fns[name]
        fn()  # first call: lazy set-up (plans, sessions, caches) outside the timing
        warm, start = [], time.perf_counter()
        while len(warm) < 5 or time.perf_counter() - start < 2 * block_seconds:
            t0 = time.perf_counter()
            fn()
            warm.append(time.perf_counter() - t0)
        # the median call, so that one slow warm-up call (a page fault, a preempted thread)
        # does not shrink the blocks to a call or two; at least 3 calls per block
        calls[name] = max(3, round(block_seconds / float(np.median(warm))))
    per_call = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], calls[name]
            if settle:
                time.sleep(settle)
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            per_call[name].append((time.perf_counter() - t0) / n)
    return {k: (float(np.median(v)), min(v)) for k, v in per_call.items()}, calls


def cpu_model():
    """The CPU's model name (/proc/cpuinfo, else lscpu, else platform), or "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        run = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10)
        for line in run.stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    import platform

    return platform.processor() or "unknown"


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _numpy_blas_one_thread():
    """A context that runs NumPy's BLAS on one thread (threadpoolctl), or None without it."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.threadpool_limits(1, user_api="blas")


def _ratio(peer, ours):
    return peer / ours if peer is not None and ours is not None else None


def _fmt(value, width, digits=1, unit=""):
    """value in `width` characters with `digits` decimals and `unit`; "-" when None."""
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:{width - len(unit)}.{digits}f}{unit}"


def run_streaming(rows=tuple(STREAM_ROWS), seq_rows=tuple(SEQ_ROWS), seq_threads=SEQ_THREADS,
                  repeats=STREAM_REPEATS, out=None, custom=None, custom_seq=None):
    """Time the streaming section (see STREAM_COLUMNS, SEQ_COLUMNS); print its two tables to
    `out` (default stdout) and return the rows. custom / custom_seq: extra rows
    {name: (cell, B, I, H)} / {name: (cell, T, B, I, H)} that `rows` / `seq_rows` may name."""
    out = sys.stdout if out is None else out
    stream_grid = dict(STREAM_ROWS, **(custom or {}))
    seq_grid = dict(SEQ_ROWS, **(custom_seq or {}))
    available = {p: _import_peer(p) for p in ("torch", "onnxruntime")}
    torch = available["torch"]
    missing = [p for p, m in available.items() if m is None]
    info = _backends.backends()["cpu"]
    restore = (info["threads"], torch.get_num_threads() if torch is not None else None)
    versions = [f"numpy {np.__version__}"] + [
        f"{p} {m.__version__}" for p, m in available.items() if m is not None]
    load_start = _load()
    blas = _numpy_blas_one_thread()
    print(f"fastrnn bench --streaming: float32 on {cpu_model()} ({os.cpu_count()} CPUs), "
          f"kernels {info.get('simd')}, {info.get('blas')}; {', '.join(versions)}"
          + (f" (not installed: {', '.join(missing)})" if missing else "")
          + f"; load average (1 min) at start: {load_start}", file=out)
    print(f"Each number: the median over {repeats} blocks of calls (each ~"
          f"{1e3 * STREAM_BLOCK_SECONDS:.0f} ms, after a warm-up) of the µs per call; the "
          "contenders' blocks run in turn, round-robin, in this one process. Speedup = the "
          "peer's µs / fastrnn's µs.", file=out)
    result = []
    try:
        _backends.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        result += _run_stream_rows(rows, stream_grid, available, repeats, blas, out)
        if blas is not None:  # the sequences' thread counts are fastrnn's and ORT's own
            blas.unregister()
            blas = None
        result += _run_seq_rows(seq_rows, seq_grid, seq_threads, available, repeats, out)
    finally:
        if blas is not None:
            blas.unregister()
        _backends.set_num_threads(restore[0])
        if restore[1] is not None:
            torch.set_num_threads(restore[1])
    load_end = _load()
    print(f"load average (1 min) at the end: {load_end}", file=out)
    for row in result:
        row["cpu"], row["load_start"], row["load_end"] = cpu_model(), load_start, load_end
    return result


def _run_stream_rows(names, grid, available, repeats, blas, out):
    torch = available["torch"]
    print(f"\nOne time step per call, state carried; 1 thread (fastrnn, torch, ONNX Runtime "
          f"intra-op; NumPy's BLAS {'too' if blas is not None else 'unlimited: no threadpoolctl'}"
          "); µs per call", file=out)
    header = f"{'row':17}" + "".join(f" {t:>13}" for t in STREAM_COLUMNS.values())
    header += (f" {'step vs best':>12} {'fwd vs NumPy':>12} {'fr.torch vs':>11} {'bf16 time':>10}"
               f" {'int8 time':>10}")
    print(header, file=out)
    print(f"{'':17}" + " " * 14 * len(STREAM_COLUMNS)
          + f" {'(ORT, NumPy)':>12} {'step':>12} {'torch.nn':>11} {'/ float32':>10}"
          f" {'/ float32':>10}", file=out)
    rows = []
    context = torch.inference_mode if torch is not None else contextlib.nullcontext
    for name in names:
        cell, B, I, H = grid[name]
        rng = np.random.default_rng(0)
        weights = _weights(cell, I, H, 1, rng)
        xs = rng.standard_normal((STREAM_INPUTS, B, I)).astype(np.float32)
        # the modules are made outside inference_mode, as a server loads its model: parameters
        # made inside it are inference tensors, which have no version counter, so
        # fastrnn.torch could not keep a prepared network for them
        runners = _stream_runners(cell, xs, weights, available)
        with context():
            times, calls = _interleaved(runners, repeats)
        del runners
        gc.collect()
        us = {k: 1e6 * times[k][0] if k in times else None for k in STREAM_COLUMNS}
        row = {"section": "streaming", "row": name, "cell": cell, "T": 1, "B": B, "I": I, "H": H,
               "layers": 1, "threads": 1, "dtype": "float32", "repeats": repeats,
               "calls_per_block": calls}
        for k in STREAM_COLUMNS:
            row[f"{k}_us"] = us[k]
            row[f"{k}_us_min"] = 1e6 * times[k][1] if k in times else None
        best = min((v for v in (us["onnxruntime"], us["numpy_step"]) if v is not None))
        row["speedup_step_vs_best_of_onnxruntime_numpy"] = _ratio(best, us["prepare_step"])
        row["speedup_functional_vs_numpy_step"] = _ratio(us["numpy_step"], us["functional"])
        row["speedup_fastrnn_torch_vs_torch_nn"] = _ratio(us["torch_nn"], us["fastrnn_torch"])
        row["bf16_step_over_float32_step"] = _ratio(us["prepare_step_bf16"], us["prepare_step"])
        row["int8_step_over_float32_step"] = _ratio(us["prepare_step_int8"], us["prepare_step"])
        line = f"{name:17}" + "".join(f" {_fmt(us[k], 13)}" for k in STREAM_COLUMNS)
        line += (f" {_fmt(row['speedup_step_vs_best_of_onnxruntime_numpy'], 12, 2, 'x')}"
                 f" {_fmt(row['speedup_functional_vs_numpy_step'], 12, 2, 'x')}"
                 f" {_fmt(row['speedup_fastrnn_torch_vs_torch_nn'], 11, 2, 'x')}"
                 f" {_fmt(row['bf16_step_over_float32_step'], 10, 2, 'x')}"
                 f" {_fmt(row['int8_step_over_float32_step'], 10, 2, 'x')}")
        print(line, file=out, flush=True)
        rows.append(row)
    return rows


def _run_seq_rows(names, grid, threads, available, repeats, out):
    if not names:
        return []
    print(f"\nWhole batch-1 sequences, one call each; ms per call (blocks of ~"
          f"{1e3 * SEQ_BLOCK_SECONDS:.0f} ms; at more than one thread each block follows a "
          f"{1e3 * SEQ_SETTLE_SECONDS:.0f} ms pause and one untimed call)", file=out)
    header = f"{'row':21} {'threads':>7}" + "".join(f" {t:>13}" for t in SEQ_COLUMNS.values())
    header += f" {'net(x) vs ORT':>13} {'fwd vs ORT':>11}"
    print(header, file=out)
    rows = []
    for n in threads:
        _backends.set_num_threads(n)
        for name in names:
            cell, T, B, I, H = grid[name]
            rng = np.random.default_rng(0)
            weights = _weights(cell, I, H, 1, rng)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            runners = _seq_runners(cell, x, weights, available, n)
            times, calls = _interleaved(runners, repeats, SEQ_BLOCK_SECONDS,
                                        settle=SEQ_SETTLE_SECONDS if n > 1 else 0)
            del runners  # ends ONNX Runtime's session and its threads
            gc.collect()
            ms = {k: 1e3 * times[k][0] if k in times else None for k in SEQ_COLUMNS}
            row = {"section": "sequence", "row": name, "cell": cell, "T": T, "B": B, "I": I,
                   "H": H, "layers": 1, "threads": n, "dtype": "float32", "repeats": repeats,
                   "calls_per_block": calls}
            for k in SEQ_COLUMNS:
                row[f"{k}_ms"] = ms[k]
                row[f"{k}_ms_min"] = 1e3 * times[k][1] if k in times else None
            row["speedup_prepared_vs_onnxruntime"] = _ratio(ms["onnxruntime"], ms["prepared"])
            row["speedup_functional_vs_onnxruntime"] = _ratio(ms["onnxruntime"], ms["functional"])
            line = f"{name:21} {n:7d}" + "".join(f" {_fmt(ms[k], 13, 3)}" for k in SEQ_COLUMNS)
            line += (f" {_fmt(row['speedup_prepared_vs_onnxruntime'], 13, 2, 'x')}"
                     f" {_fmt(row['speedup_functional_vs_onnxruntime'], 11, 2, 'x')}")
            print(line, file=out, flush=True)
            rows.append(row)
    return rows


def plot(rows, path):
    """Bar chart of fastrnn's speedup over each peer per (shape, cell, mode, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = sorted({k[len("speedup_vs_"):] for r in rows for k in r if k.startswith("speedup_vs_")})
    labels = [f"{r['shape']} {r['cell']} {r['mode'][:5]} {r['threads']}t" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(rows)), 5))
    width = 0.8 / max(1, len(peers))
    for k, p in enumerate(peers):
        ax.bar([i + k * width for i in range(len(rows))],
               [r.get(f"speedup_vs_{p}", 0) or 0 for r in rows], width, label=f"vs {p}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(peers) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("speedup of fastrnn (peer ms / fastrnn ms)")
    ax.set_title("fastrnn bench (float32, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _cuda_time(torch, fn, repeats, warmup=3):
    """Median and min of `repeats` runs timed with CUDA events (after a warm-up), in seconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times), float(np.median(times))


def run_cuda(cells=("lstm", "gru"), shapes=((100, 64, 512, 512), (25, 64, 1024, 1024),
             (100, 8, 256, 256), (100, 16, 512, 512), (100, 16, 1024, 1024)),
             dtypes=("float32", "bfloat16", "float16"), repeats=20, out=sys.stdout):
    """fastrnn's CUDA engine against torch.nn (cuDNN) on the current GPU, training and inference."""
    import torch

    torch.backends.cudnn.enabled = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name()
    print(f"fastrnn bench --device cuda: {name}, torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()}), TF32 off, CUDA events, median of {repeats} after "
          "a warm-up", file=out)
    print(f"{'cell':5} {'dtype':9} {'T':>4} {'B':>4} {'H':>5} {'mode':9} {'fastrnn ms':>11} "
          f"{'cuDNN ms':>9} {'x cuDNN':>8} {'TFLOP/s':>8}", file=out)
    rows = []
    for cell in cells:
        for dtype in dtypes:
            tdt = getattr(torch, dtype)
            for T, B, I, H in shapes:
                cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
                mod = cls(I, H).to("cuda", tdt)
                weights = [p.detach() for p in mod.parameters()]
                x = torch.randn(T, B, I, device="cuda", dtype=tdt)
                fwd = getattr(_api, f"{cell}_forward")
                bwd = getattr(_api, f"{cell}_backward")
                dy = torch.ones(T, B, H, device="cuda", dtype=tdt)

                def f_infer():
                    fwd(x, weights)

                def f_train():
                    o = fwd(x, weights, training=True)
                    bwd(o.saved, dy)

                xg = x.clone().requires_grad_(True)

                def t_infer():
                    with torch.no_grad():
                        mod(x)

                def t_train():
                    y, _ = mod(xg)
                    y.backward(dy)

                for mode, ours, theirs in (("inference", f_infer, t_infer), ("training", f_train, t_train)):
                    _, a = _cuda_time(torch, ours, repeats)
                    _, b = _cuda_time(torch, theirs, repeats)
                    flops = gemm_flops(cell, T, B, I, H, mode == "training")
                    row = dict(cell=cell, dtype=dtype, T=T, B=B, I=I, H=H, mode=mode,
                               fastrnn_ms=a * 1e3, cudnn_ms=b * 1e3, speedup=b / a,
                               tflops=flops / a / 1e12, device=name)
                    rows.append(row)
                    print(f"{cell:5} {dtype:9} {T:4d} {B:4d} {H:5d} {mode:9} {a * 1e3:11.3f} "
                          f"{b * 1e3:9.3f} {b / a:7.2f}x {row['tflops']:8.2f}", file=out, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Keras (--keras): one training step of the seed tutorials' IMDB model with keras.layers.LSTM
# and with fastrnn.keras.LSTM, on each Keras backend installed that fastrnn.keras runs on.

# (batch, steps, vocabulary, embedding, LSTM units): the Keras IMDB tutorial's model
KERAS_SHAPE = (100, 300, 20000, 32, 32)
KERAS_REPEATS = 5

# One child per backend and masking (KERAS_BACKEND must be set before keras is imported):
# argv = backend, mask_zero (0|1), repeats, B, T, V, E, H; prints one JSON line. The two
# models start from the same weights and take turns, one train_on_batch (forward, backward,
# Adam) at a time, on 1 thread; medians of the repeats after two untimed steps each (JAX
# compiles there).
KERAS_SCRIPT = """
import json, os, sys, time
backend, mask_zero, reps = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
B, T, V, E, H = (int(v) for v in sys.argv[4:9])
os.environ["KERAS_BACKEND"] = backend
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
import numpy as np
import keras
import fastrnn, fastrnn.keras
if backend == "torch":
    import torch
    torch.set_num_threads(1)
fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.integers(1, V, (B, T)).astype("int32")
if mask_zero:  # right padding, lengths uniform in [T/4, T]
    lengths = rng.integers(T // 4, T + 1, B)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
y = rng.integers(0, 2, (B, 1)).astype("float32")
def model(lstm):
    m = keras.Sequential([keras.Input((T,), dtype="int32"),
                          keras.layers.Embedding(V, E, mask_zero=mask_zero), lstm(H),
                          keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m
models = {"keras": model(keras.layers.LSTM), "fastrnn": model(fastrnn.keras.LSTM)}
models["fastrnn"].set_weights(models["keras"].get_weights())
times = {k: [] for k in models}
for m in models.values():
    for _ in range(2):
        m.train_on_batch(x, y)
for _ in range(reps):
    for k, m in models.items():
        t0 = time.perf_counter()
        m.train_on_batch(x, y)
        times[k].append(time.perf_counter() - t0)
print(json.dumps({k: float(np.median(v)) * 1e3 for k, v in times.items()}))
"""


def run_keras(backends=("torch", "jax"), shape=KERAS_SHAPE, repeats=KERAS_REPEATS,
              out=sys.stdout):
    """Rows of the Keras section (ms per training step): keras.layers.LSTM against
    fastrnn.keras.LSTM on each backend in `backends` whose packages are installed, without and
    with Embedding(mask_zero=True) (right padding)."""
    import importlib.util

    B, T, V, E, H = shape
    print(f"fastrnn bench --keras: one train_on_batch (forward, backward, Adam) of Embedding({V}, "
          f"{E}) -> LSTM({H}) -> Dense(1), batch {B}, {T} steps, 1 thread, float32; median of "
          f"{repeats} alternating steps, ms; load average (1 min) {os.getloadavg()[0]:.2f}",
          file=out)
    print(f"{'backend':8} {'mask_zero':>9} {'keras.layers':>12} {'fastrnn.keras':>13} "
          f"{'speedup':>8}", file=out)
    rows = []
    for backend in backends:
        if (importlib.util.find_spec("keras") is None
                or importlib.util.find_spec(backend) is None):
            print(f"{backend:8} skipped: keras or {backend} is not installed", file=out)
            continue
        for mask_zero in (False, True):
            child = subprocess.run(
                [sys.executable, "-c", KERAS_SCRIPT, backend, str(int(mask_zero)), str(repeats),
                 *(str(v) for v in shape)],
                capture_output=True, text=True, env=dict(os.environ, FASTRNN_NUM_THREADS="1"))
            if child.returncode != 0:
                raise RuntimeError(f"bench --keras ({backend}): {child.stderr[-2000:]}")
            ms = json.loads(child.stdout.strip().splitlines()[-1])
            row = {"section": "keras", "backend": backend, "mask_zero": mask_zero,
                   "shape": list(shape), "keras_ms": ms["keras"], "fastrnn_ms": ms["fastrnn"],
                   "speedup": ms["keras"] / ms["fastrnn"]}
            rows.append(row)
            print(f"{backend:8} {str(mask_zero):>9} {row['keras_ms']:12.1f} "
                  f"{row['fastrnn_ms']:13.1f} {row['speedup']:7.2f}x", file=out, flush=True)
    return rows


def _csv(text, allowed, flag):
    items = [t for t in text.split(",") if t]
    for t in items:
        if t not in allowed:
            raise SystemExit(f"python -m fastrnn bench: {flag}: expected names from "
                             f"{','.join(allowed)}, got {t!r}")
    return items


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m fastrnn bench",
        description="Time fastrnn's CPU engine against torch.nn and ONNX Runtime (and, with "
                    "--peers, the NumPy reference) over the standard grid S1-S5, float32, "
                    "inference and training, at each thread count; median of repeats. "
                    "Grid: " + "; ".join(f"{k} T,B,I,H={v[0]},{v[1]},{v[2]},{v[3]}"
                                         + (f" x{v[4]} layers" if v[4] > 1 else "")
                                         for k, v in GRID.items()) + ".")
    ap.add_argument("--shapes", default=",".join(GRID),
                    help=f"comma-separated grid names (default {','.join(GRID)})")
    ap.add_argument("--shape", metavar="T,B,I,H[,L]",
                    help="time this shape instead of the grid (L layers, default 1)")
    ap.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    ap.add_argument("--modes", default="inference,training",
                    help="comma-separated: inference,training (default both)")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts for fastrnn and every peer "
                         "(default: 1 and fastrnn's default, the cores available)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed repeats (default 5; with --streaming, {STREAM_REPEATS} blocks "
                         "of calls)")
    ap.add_argument("--peers", default="torch,onnxruntime",
                    help="comma-separated: torch,onnxruntime,reference (default torch,onnxruntime;"
                         " a peer that is not installed is skipped)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run: shapes {','.join(QUICK['shapes'])}, "
                         f"{QUICK['repeats']} repeats, fastrnn's default threads only; with "
                         f"--streaming, {STREAM_QUICK_REPEATS} blocks of calls")
    ap.add_argument("--streaming", action="store_true",
                    help="time the streaming section instead of the grid: one time step per "
                         "call with the state carried (LSTM T=1 at B=1 I=H=256, B=1 I=H=512, "
                         "B=16 I=H=256; GRU T=1 B=1 I=H=256), 1 thread, float32, through "
                         "fastrnn.prepare(...).step, lstm_forward/gru_forward, fastrnn.torch, "
                         "torch.nn.LSTM, torch.nn.LSTMCell/GRUCell, ONNX Runtime and a NumPy "
                         "step; then batch-1 sequences (T=100, I=H=256) through net(x) and "
                         "lstm_forward/gru_forward against ONNX Runtime at 1 and 2 threads "
                         "(--threads sets these); medians of round-robin blocks of calls")
    ap.add_argument("--keras", action="store_true",
                    help="time the Keras section instead of the grid: one training step of the "
                         "Keras IMDB model (Embedding -> LSTM(32) -> Dense, batch 100, 300 "
                         "steps, 1 thread) with keras.layers.LSTM and with fastrnn.keras.LSTM, "
                         "on the torch and JAX backends, without and with mask_zero")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="also plot the speedups (needs matplotlib)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default): the grid above; cuda: against torch.nn/cuDNN on the "
                         "GPU over a fixed grid of shapes")
    args = ap.parse_args(argv)
    cells = _csv(args.cells, tuple(GATES), "--cells")
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats: expected an int >= 1, got {args.repeats}")
    if args.streaming and args.device == "cuda":
        ap.error("--streaming: the streaming section runs on the CPU, not with --device cuda")
    if args.device == "cuda":
        if not _backends.backends()["cuda"]["available"]:
            print("fastrnn bench: the CUDA path is not available: "
                  f"{_backends.backends()['cuda'].get('reason')}", file=sys.stderr)
            return 2
        rows = run_cuda(cells=cells)
    else:
        if not _backends.backends()["cpu"]["available"]:
            print("fastrnn bench: the compiled engine is not available: "
                  f"{_backends.backends()['cpu'].get('reason')}", file=sys.stderr)
            return 2
        default_threads = _backends.backends()["cpu"]["threads"]
        shapes, repeats = _csv(args.shapes, tuple(GRID), "--shapes"), args.repeats or 5
        threads = sorted({1, default_threads})
        if args.quick:
            shapes, repeats, threads = list(QUICK["shapes"]), QUICK["repeats"], [default_threads]
        if args.threads:
            try:
                threads = [int(t) for t in args.threads.split(",") if t]
            except ValueError:
                ap.error(f"--threads: expected comma-separated ints, got {args.threads!r}")
            if not threads or min(threads) < 1:
                ap.error(f"--threads: expected ints >= 1, got {args.threads!r}")
        if args.keras:
            rows = run_keras(repeats=args.repeats or (2 if args.quick else KERAS_REPEATS))
            return _write(args, rows)
        if args.streaming:
            rows = run_streaming(
                seq_threads=threads if args.threads else SEQ_THREADS,
                repeats=args.repeats or (STREAM_QUICK_REPEATS if args.quick else STREAM_REPEATS))
            return _write(args, rows)
        custom = None
        if args.shape:
            try:
                dims = [int(v) for v in args.shape.split(",")]
            except ValueError:
                dims = []
            if len(dims) not in (4, 5) or min(dims) < 1:
                ap.error(f"--shape: expected T,B,I,H or T,B,I,H,L of ints >= 1, got {args.shape!r}")
            custom = {"custom": tuple(dims) + ((1,) if len(dims) == 4 else ())}
            shapes = ["custom"]
        rows = run(shapes, cells, _csv(args.modes, ("inference", "training"), "--modes"),
                   threads, repeats, tuple(_csv(args.peers, ("torch", "onnxruntime", "reference"),
                                                "--peers")), custom=custom)
    return _write(args, rows)


def _write(args, rows):
    """--json and --plot (the grid's rows only) of the rows run; the exit status."""
    if args.json:
        with open(os.fspath(args.json), "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot and args.device == "cpu" and not args.streaming:
        try:
            plot(rows, args.plot)
        except ImportError:
            print("fastrnn bench: --plot needs matplotlib (pip install matplotlib); the table "
                  "above and --json are complete", file=sys.stderr)
            return 2
    return 0
