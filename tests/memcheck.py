# SPDX-License-Identifier: MIT
"""A small forward + backward of every cell variant through the compiled CPU engine, for
valgrind's memcheck (CI's .ci/memcheck runs it; not a pytest module).

    valgrind --tool=memcheck python tests/memcheck.py --steps 5

Each variant runs with 2 layers, both directions, lengths (full, empty, partial), float32 and
float64, at 1 and 2 engine threads, at the odd sizes below. The script checks its own results
against the reference with the budgets of tests/_tolerances.py (so a memcheck pass is also a
correct pass) and prints one line per call.

--steps T sets the sequence length (default 5).
"""

import argparse
import sys

import numpy as np

import fastrnn
from _tolerances import (F32_ATOL_FLOOR, F32_FACTOR_BACKWARD, SAME_MATHS_F64_ATOL,
                         SAME_MATHS_F64_RTOL, textbook_float32_reference)

VARIANTS = {
    "lstm": (fastrnn.lstm_forward, fastrnn.lstm_backward, {}),
    "lstm_proj": (fastrnn.lstm_forward, fastrnn.lstm_backward, {"proj_size": 3}),
    "gru": (fastrnn.gru_forward, fastrnn.gru_backward, {}),
    "gru_reset_before": (fastrnn.gru_forward, fastrnn.gru_backward, {"linear_before_reset": False}),
    "rnn_tanh": (fastrnn.rnn_forward, fastrnn.rnn_backward, {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.rnn_forward, fastrnn.rnn_backward, {"nonlinearity": "relu"}),
}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
B, I, H, L, D = 3, 5, 7, 2, 2


def make_call(variant, T, dtype, rng):
    forward, backward, kwargs = VARIANTS[variant]
    cell = variant.split("_")[0]
    G, Hout = GATES[cell], kwargs.get("proj_size") or H
    weights = []
    for layer in range(L):
        for _ in range(D):
            I_l = I if layer == 0 else D * Hout
            weights += [rng.standard_normal(s).astype(dtype) * 0.5
                        for s in [(G * H, I_l), (G * H, Hout), (G * H,), (G * H,)]]
            if Hout != H:
                weights.append(rng.standard_normal((Hout, H)).astype(dtype) * 0.5)
    args = dict(x=rng.standard_normal((T, B, I)).astype(dtype), weights=weights,
                h0=rng.standard_normal((L * D, B, Hout)).astype(dtype),
                lengths=np.array([T, 0, T // 2]), num_layers=L, bidirectional=True,
                training=True, **kwargs)
    if cell == "lstm":
        args["c0"] = rng.standard_normal((L * D, B, H)).astype(dtype)
    grads = dict(dy=rng.standard_normal((T, B, D * Hout)).astype(dtype),
                 dh_n=rng.standard_normal((L * D, B, Hout)).astype(dtype))
    if cell == "lstm":
        grads["dc_n"] = rng.standard_normal((L * D, B, H)).astype(dtype)
    return forward, backward, args, grads


def run(forward, backward, args, grads, backend):
    out = forward(**args, backend=backend)
    g = backward(out.saved, **grads)
    arrays = [out.y, out.h_n, out.c_n, g.dx, g.dh0, g.dc0, *g.dweights]
    return [a for a in arrays if a is not None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="sequence length T (default 5)")
    T = parser.parse_args().steps
    rng = np.random.default_rng(0)
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        for variant in VARIANTS:
            for dtype in (np.float32, np.float64):
                forward, backward, args, grads = make_call(variant, T, dtype, rng)
                got = run(forward, backward, args, grads, "cpu")
                with textbook_float32_reference():  # float32: the BLAS-independent yardstick
                    naive = run(forward, backward, args, grads, "reference")
                # the float64 reference on the same values: the oracle of _tolerances.py
                exact = run(forward, backward, up(args), up(grads), "reference")
                ok = True
                for a, n, e in zip(got, naive, exact):
                    if dtype == np.float64:
                        bound = SAME_MATHS_F64_ATOL + SAME_MATHS_F64_RTOL * np.abs(e)
                        ok &= bool(np.all(np.abs(a - e) <= bound))
                    else:  # flash-attention's rule; the output/gradient factor is the larger
                        e_got, e_naive = np.max(np.abs(a - e), initial=0), np.max(np.abs(n - e), initial=0)
                        ok &= bool(e_got <= F32_FACTOR_BACKWARD * e_naive + F32_ATOL_FLOOR)
                print(f"{variant:17s} {np.dtype(dtype).name}  threads={threads}  T={T}  "
                      f"{'ok' if ok else 'MISMATCH'} (budgets of tests/_tolerances.py)", flush=True)
                if not ok:
                    sys.exit(1)


def up(kwargs):
    """The same call in float64 (arrays and lists of arrays cast; everything else kept)."""
    def cast(v):
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            return v.astype(np.float64)
        return [cast(w) for w in v] if isinstance(v, list) else v
    return {k: cast(v) for k, v in kwargs.items()}


if __name__ == "__main__":
    main()
