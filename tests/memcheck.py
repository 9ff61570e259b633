# SPDX-License-Identifier: MIT
"""A small forward + backward of every cell variant through the compiled CPU engine, for
valgrind's memcheck (CI's .ci/valgrind runs it; not a pytest module).

    valgrind --tool=memcheck python tests/memcheck.py --steps 5

Each variant runs with 2 layers, both directions, lengths (full, empty, partial), float32 and
float64, at 1 and 2 engine threads, at the odd sizes below. The script checks its own results
against the reference (so a memcheck pass is also a correct pass) and prints one line per call.

--steps T sets the sequence length. .ci/valgrind runs it at two lengths and compares valgrind's
count of heap allocations: the engine allocates per call, never per time step, so the counts
must be equal.
"""

import argparse
import sys

import numpy as np

import fastrnn

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
                call = make_call(variant, T, dtype, rng)
                got = run(*call, backend="cpu")
                want = run(*call, backend="reference")
                rtol = 1e-4 if dtype == np.float32 else 1e-10
                worst = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1), initial=0))
                            for a, b in zip(got, want))
                ok = worst <= rtol
                print(f"{variant:17s} {np.dtype(dtype).name}  threads={threads}  T={T}  "
                      f"max scaled error {worst:.1e}  {'ok' if ok else 'MISMATCH'}", flush=True)
                if not ok:
                    sys.exit(1)


if __name__ == "__main__":
    main()
