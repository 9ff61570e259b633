# SPDX-License-Identifier: MIT
"""The benchmark behind every speed claim: `python -m fastrnn bench` (also benchmarks/bench.py).

Times forward (inference) and training (forward + backward, input and weight gradients)
separately for each cell, on fastrnn's compiled engine, the NumPy reference and, when
installed, torch.nn on the CPU; reports min and median over repeats after a warm-up, the
derived GFLOP/s and the speedup against each peer measured in the same run. Peers are imported
lazily and skipped when missing. Not here: correctness (`python -m fastrnn check`).
"""

import json
import os
import sys
import time

import numpy as np

from . import _api, _backends

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def gemm_flops(cell, T, B, I, H, training):
    """2·T·B·G·H·(I+H) per layer-direction forward; training counts 3x (forward, dh and dx,
    weight gradients), the usual accounting for RNN training."""
    fwd = 2.0 * T * B * GATES[cell] * H * (I + H)
    return 3 * fwd if training else fwd


def _timeit(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def _fastrnn_runners(cell, x, weights, backend):
    fwd = getattr(_api, f"{cell}_forward")
    bwd = getattr(_api, f"{cell}_backward")

    def infer():
        fwd(x, weights, backend=backend)

    def train():
        out = fwd(x, weights, training=True, backend=backend)
        bwd(out.saved, np.ones_like(out.y))

    return infer, train


def _torch_runners(torch, cell, x, weights, threads):
    T, B, I = x.shape
    H = weights[1].shape[1]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    mod = cls(I, H)
    with torch.no_grad():
        for p, w in zip(mod.parameters(), weights):
            p.copy_(torch.from_numpy(w))
    xt = torch.from_numpy(x)

    def infer():
        with torch.no_grad():
            mod(xt)

    def train():
        xg = xt.clone().requires_grad_(True)
        y, _ = mod(xg)
        y.backward(torch.ones_like(y))

    return infer, train


def run(cells=("lstm", "gru", "rnn"), T=100, B=64, I=256, H=256, threads=None, repeats=5,
        peers=("reference", "torch"), out=sys.stdout):
    """Run the benchmark; print a table to `out` and return the rows as dicts."""
    if threads is not None:
        _backends.set_num_threads(threads)
    threads = _backends.backends()["cpu"].get("threads")
    torch = None
    if "torch" in peers:
        try:
            import torch  # noqa: F811 - imported lazily: a peer, not a dependency

            torch.set_num_threads(threads or 1)
        except ImportError:
            torch = None
    info = _backends.backends()["cpu"]
    print(f"fastrnn bench: float32, T={T} B={B} I={I} H={H}, {threads} thread(s), "
          f"kernels {info.get('simd')}, median of {repeats} after a warm-up", file=out)
    header = f"{'cell':5} {'mode':9} {'fastrnn ms':>11} {'GFLOP/s':>8}"
    peer_names = [p for p in peers if p == "reference" or (p == "torch" and torch is not None)]
    for p in peer_names:
        header += f" {p + ' ms':>13} {'x ' + p:>12}"
    print(header, file=out)
    rows = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    for cell in cells:
        G = GATES[cell]
        k = 1 / np.sqrt(H)
        weights = [rng.uniform(-k, k, s).astype(np.float32)
                   for s in [(G * H, I), (G * H, H), (G * H,), (G * H,)]]
        runners = {"fastrnn": _fastrnn_runners(cell, x, weights, "cpu")}
        if "reference" in peer_names:
            runners["reference"] = _fastrnn_runners(cell, x, weights, "reference")
        if "torch" in peer_names:
            runners["torch"] = _torch_runners(torch, cell, x, weights, threads)
        for mode, idx in (("inference", 0), ("training", 1)):
            row = {"cell": cell, "mode": mode, "T": T, "B": B, "I": I, "H": H,
                   "threads": threads, "dtype": "float32"}
            for name, fns in runners.items():
                reps = repeats if name != "reference" else max(1, min(repeats, 3))
                tmin, tmed = _timeit(fns[idx], reps)
                row[f"{name}_ms_min"], row[f"{name}_ms"] = 1e3 * tmin, 1e3 * tmed
            row["gflops"] = gemm_flops(cell, T, B, I, H, idx == 1) / (row["fastrnn_ms"] * 1e6)
            line = f"{cell:5} {mode:9} {row['fastrnn_ms']:11.2f} {row['gflops']:8.1f}"
            for p in peer_names:
                row[f"speedup_vs_{p}"] = row[f"{p}_ms"] / row["fastrnn_ms"]
                line += f" {row[p + '_ms']:13.2f} {row[f'speedup_vs_{p}']:11.2f}x"
            print(line, file=out, flush=True)
            rows.append(row)
    return rows


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


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m fastrnn bench",
        description="Time fastrnn's CPU engine against the NumPy reference and torch.nn "
                    "(float32; inference and training; median of repeats).")
    ap.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    ap.add_argument("--T", type=int, default=100, help="sequence length (default 100)")
    ap.add_argument("--B", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--I", type=int, default=256, help="input size (default 256)")
    ap.add_argument("--H", type=int, default=256, help="hidden size (default 256)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for fastrnn and torch (default: fastrnn's default)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    ap.add_argument("--peers", default="reference,torch",
                    help="comma-separated peers to time: reference,torch (default both)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default): against the reference and torch on the CPU; cuda: "
                         "against torch.nn/cuDNN on the GPU over a fixed grid of shapes")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        if not _backends.backends()["cuda"]["available"]:
            print("fastrnn bench: the CUDA path is not available: "
                  f"{_backends.backends()['cuda'].get('reason')}", file=sys.stderr)
            return 2
        rows = run_cuda(cells=[c for c in args.cells.split(",") if c])
        if args.json:
            with open(os.fspath(args.json), "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    cells = [c for c in args.cells.split(",") if c]
    for c in cells:
        if c not in GATES:
            ap.error(f"--cells: expected names from lstm,gru,rnn, got {c!r}")
    if not _backends.backends()["cpu"]["available"]:
        print("fastrnn bench: the compiled engine is not available: "
              f"{_backends.backends()['cpu'].get('reason')}", file=sys.stderr)
        return 2
    rows = run(cells, args.T, args.B, args.I, args.H, args.threads, args.repeats,
               tuple(p for p in args.peers.split(",") if p))
    if args.json:
        with open(os.fspath(args.json), "w") as f:
            json.dump(rows, f, indent=1)
    return 0
