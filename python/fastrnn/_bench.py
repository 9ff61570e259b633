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

CUDA (`--device cuda`): fastrnn's CUDA engine against torch.nn / cuDNN over a fixed grid.
"""

import gc
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
    of nothing else: the compute peak no GEMM can pass. None without AVX2+FMA kernels."""
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
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    ap.add_argument("--peers", default="torch,onnxruntime",
                    help="comma-separated: torch,onnxruntime,reference (default torch,onnxruntime;"
                         " a peer that is not installed is skipped)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run: shapes {','.join(QUICK['shapes'])}, "
                         f"{QUICK['repeats']} repeats, fastrnn's default threads only")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="also plot the speedups (needs matplotlib)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default): the grid above; cuda: against torch.nn/cuDNN on the "
                         "GPU over a fixed grid of shapes")
    args = ap.parse_args(argv)
    cells = _csv(args.cells, tuple(GATES), "--cells")
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
        shapes, repeats = _csv(args.shapes, tuple(GRID), "--shapes"), args.repeats
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
        if args.repeats < 1:
            ap.error(f"--repeats: expected an int >= 1, got {args.repeats}")
        rows = run(shapes, cells, _csv(args.modes, ("inference", "training"), "--modes"),
                   threads, repeats, tuple(_csv(args.peers, ("torch", "onnxruntime", "reference"),
                                                "--peers")), custom=custom)
    if args.json:
        with open(os.fspath(args.json), "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot and args.device == "cpu":
        try:
            plot(rows, args.plot)
        except ImportError:
            print("fastrnn bench: --plot needs matplotlib (pip install matplotlib); the table "
                  "above and --json are complete", file=sys.stderr)
            return 2
    return 0
