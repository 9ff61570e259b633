# SPDX-License-Identifier: MIT
"""Property-based fuzzing of the public functional API, each batch in a fresh child process.

tests/_fuzz.py is the fuzz program (what it draws and checks is in its docstring): valid calls
on backend="cpu" against backend="reference", and invalid calls that must raise the ValueError
or TypeError of docs/design.md naming the argument. Each batch here runs it as
`python tests/_fuzz.py --seed S --examples N`, so that a crash (a signal), a hang (the timeout)
or a failed property is one failed test whose message gives the seed, the command that
reproduces it, and the end of the child's stderr (hypothesis's shrunk example, or the last
example traced before a crash).

Environment (defaults in brackets; the seeds are fixed, so a run is reproducible):
  FASTRNN_FUZZ_BATCHES   number of batches [4]; batch k uses seed FASTRNN_FUZZ_SEED + k [0]
  FASTRNN_FUZZ_EXAMPLES  hypothesis examples per batch [300]
  FASTRNN_FUZZ_TIMEOUT   seconds a batch may take [120 + 2 per example]
  FASTRNN_FUZZ_REPORT    a file to which each batch appends its one-line summary, and the module
                         appends the totals: pytest captures output, so CI sets this and prints
                         the file (pytest's record_property is not used: with --junitxml and the
                         default junit_family it warns, and warnings are errors here)

Not here: the fixed cases of bad input (test_errors.py) and of valid input (test_api.py).
"""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fuzz.py")
BATCHES = int(os.environ.get("FASTRNN_FUZZ_BATCHES", "4"))
EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "300"))
FIRST_SEED = int(os.environ.get("FASTRNN_FUZZ_SEED", "0"))
TIMEOUT = float(os.environ.get("FASTRNN_FUZZ_TIMEOUT", str(120 + 2 * EXAMPLES)))
REPORT = os.environ.get("FASTRNN_FUZZ_REPORT")
STDERR_TAIL = 8000  # characters of the child's stderr in a failure message

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hypothesis") is None,
                                reason="hypothesis is not installed")


def report(line):
    """Append a line to FASTRNN_FUZZ_REPORT, if set."""
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(line + "\n")


@pytest.fixture(scope="module")
def totals():
    """Summaries of the batches that passed; their totals go to the report at the end."""
    summaries = []
    yield summaries
    if summaries:
        line = (f"fuzz total: {len(summaries)} of {BATCHES} batches passed, "
                f"{sum(s['examples'] for s in summaries)} examples, "
                f"{sum(s['valid_matched'] for s in summaries)} valid calls matched the reference, "
                f"{sum(s['invalid_rejected'] for s in summaries)} invalid calls rejected")
        print(line)
        report(line)


def tail(text):
    if isinstance(text, bytes):  # TimeoutExpired carries bytes whatever `text` says
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= STDERR_TAIL else "...\n" + text[-STDERR_TAIL:]


def died_how(returncode):
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@pytest.mark.parametrize("batch", range(BATCHES))
def test_fuzz_batch(batch, tmp_path, totals):
    seed = FIRST_SEED + batch
    reproduce = shlex.join([sys.executable, FUZZ, "--seed", str(seed), "--examples", str(EXAMPLES)])
    summary_file = tmp_path / "summary.json"
    command = [sys.executable, FUZZ, "--seed", str(seed), "--examples", str(EXAMPLES),
               "--json", str(summary_file), "--trace"]
    where = f"fuzz batch seed {seed}; reproduce with:\n  {reproduce}"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        proc, hung = None, tail(exc.stderr)
    if proc is None:
        pytest.fail(f"{where}\ntimed out after {TIMEOUT:g} s; its stderr ends:\n{hung}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{where}\n{died_how(proc.returncode)}; its stderr ends:\n{tail(proc.stderr)}",
                    pytrace=False)

    summary = json.loads(summary_file.read_text())
    line = (f"fuzz seed {seed}: {summary['examples']} examples, {summary['valid_matched']} valid "
            f"calls matched the reference, {summary['invalid_rejected']} invalid calls rejected")
    print(line)
    report(line)
    # the batch really exercised both halves, on a spread of cells and mutations
    categories = summary["categories"]
    assert summary["examples"] >= EXAMPLES // 2, f"{where}\nonly {summary['examples']} examples ran"
    assert summary["valid_matched"] == summary["examples"], where
    assert summary["invalid_rejected"] == summary["examples"], where
    cells = {c for c in ("lstm", "gru", "rnn") if any(k.startswith(f"valid {c}") for k in categories)}
    assert len(cells) >= min(3, EXAMPLES // 10), f"{where}\ncells exercised: {sorted(cells)}"
    for error in ("ValueError", "TypeError"):
        assert categories.get(f"invalid {error}", 0) > 0 or EXAMPLES < 10, (
            f"{where}\nno invalid call expected a {error}")
    totals.append(summary)
