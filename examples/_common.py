# SPDX-License-Identifier: MIT
"""What every demo shares: the command line, a progress bar, text that ships with Python, the
optional plot, the closing JSON line, and the minibatch-by-epoch loop of the two classifier
demos (digits, sentiment). Not a training framework: each demo owns its model, loss and
update; char-rnn and ptb own their loops (truncated BPTT carrying the state).

Conventions of every demo: progress and samples go to stderr; stdout carries exactly one line,
the JSON metrics, so `python -m fastrnn demo NAME | jq .` works.
"""

import argparse
import importlib
import inspect
import json
import os
import sys
import sysconfig
import time


def parser(prog, description):
    """The flags every demo takes: --quick, --plot FILE.png, --seed N."""
    ap = argparse.ArgumentParser(prog=f"python -m fastrnn demo {prog}", description=description)
    ap.add_argument("--quick", action="store_true",
                    help="a short run (well under a minute on 2 cores) that still shows learning")
    ap.add_argument("--plot", metavar="FILE.png", default=None,
                    help="write the training curves to FILE.png (needs matplotlib)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return ap


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Progress:
    """Progress on stderr: `label [#####.....] 120/400  loss 2.31  3.2s`. On a terminal the bar
    is redrawn in place, at most 10 times a second. Into a file or a pipe (a log, CI), where
    carriage returns and erase-line codes are only noise, it is printed as plain lines with no
    control characters: the first step, then at most one line every 10 s, and always the last.

    update(n, **stats) reports step n of total; write(text) prints a line (a sample, an epoch
    summary) without breaking the bar; close() ends it.
    """

    def __init__(self, total, label, width=30, stream=None):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = 0
        self.shown = -1  # the step of the last plain line (not live)
        self.every = 0.1 if self.live else 10.0

    def update(self, n, **stats):
        self.done = n
        now = time.perf_counter()
        if now - self.last < self.every and n < self.total:
            return
        if not self.live and n == self.shown:
            return
        self.last, self.shown = now, n
        filled = int(self.width * min(n, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        extra = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in stats.items())
        text = f"{self.label} [{bar}] {n}/{self.total}  {extra}  {now - self.t0:.1f}s"
        # live: back to the line's start and redraw over it; else one line per report
        self.stream.write(f"\r{text} " if self.live else f"{text}\n")
        self.stream.flush()

    def write(self, text):
        """Print a line (a sample, an epoch summary) without breaking the bar."""
        self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
        self.stream.flush()
        if self.live:
            self.last = 0.0  # redraw the bar under the line at the next update

    def close(self):
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def torch_setup(seed):
    """Seed torch and keep torch's own ops (embedding, linear, softmax, optimiser) on one
    thread: at these sizes its thread pool only contends with fastrnn's, which runs the
    recurrent work on all cores (FASTRNN_NUM_THREADS to change)."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)


def train_epochs(label, epochs, n_train, batch, rng, model, opt, batch_loss, evaluate):
    """The minibatch loop of the classifier demos (digits, sentiment): each epoch visits the
    n_train examples in a fresh order (rng); per batch, batch_loss(indices) -> the mean loss
    tensor (the demo's forward), then backward and opt.step(); after the epoch, evaluate()
    -> (test accuracy, text for the epoch line), in eval mode without gradients. The progress
    bar shows it all. Returns {"epoch", "train_loss", "test_accuracy"} lists, one per epoch."""
    import torch

    steps = (n_train + batch - 1) // batch
    bar = Progress(epochs * steps, label)
    history = {"epoch": [], "train_loss": [], "test_accuracy": []}
    for epoch in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(n_train))
        total = 0.0
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            bar.update(epoch * steps + s + 1, epoch=epoch + 1, loss=loss.item())
        model.eval()
        with torch.no_grad():
            accuracy, extra = evaluate()
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(total / n_train)
        history["test_accuracy"].append(accuracy)
        bar.write(f"epoch {epoch + 1}: train loss {total / n_train:.4f}, "
                  f"test accuracy {accuracy:.4f}{extra}")
    bar.close()
    return history


def emit(metrics):
    """The demo's result: exactly one JSON line on stdout."""
    sys.stdout.write(json.dumps(metrics) + "\n")
    sys.stdout.flush()


def plot(path, panels, title, xlabel="epoch"):
    """Write curves to `path`. panels: list of (ylabel, {name: (xs, ys)}), one axis each,
    all over the same x (`xlabel`).

    Returns True when written; without matplotlib it says so on stderr and returns False.
    """
    if path is None:
        return False
    try:
        import matplotlib
    except ImportError:
        log(f"--plot {path}: skipped, matplotlib is not installed (pip install matplotlib)")
        return False
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels):
        for name, (xs, ys) in curves.items():
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"--plot: wrote {path}")
    return True


# Modules whose docstrings make up the fallback corpus: a fixed list, so runs are reproducible.
_DOC_MODULES = ["argparse", "collections", "contextlib", "csv", "dataclasses", "datetime",
                "decimal", "difflib", "email", "fractions", "functools", "heapq", "http.client",
                "inspect", "itertools", "json", "logging", "os", "pathlib", "pickle", "random",
                "re", "shutil", "socket", "statistics", "string", "subprocess", "tarfile",
                "textwrap", "threading", "typing", "unittest", "urllib.request", "zipfile"]


def python_text():
    """English that ships with every Python: the licence (LICENSE.txt of the standard library,
    where the installation kept it), the Zen of Python, and the docstrings of a fixed list of
    standard-library modules and their public classes and functions. About 0.5-1 MB."""
    parts = []
    licence = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
    if os.path.exists(licence):
        with open(licence, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    import codecs
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    parts.append(codecs.decode(this.s, "rot13"))
    for name in _DOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)
