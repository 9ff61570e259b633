# SPDX-License-Identifier: MIT
"""`python -m fastrnn` as a newcomer meets it: `demo --help` lists the demos and exits 0, `info`
says plainly why there is no CUDA path (and keeps the cause when a compiled CUDA module fails to
load), and the demos' progress written into a file or a pipe has no terminal control characters.
The commands run in subprocesses, as a user runs them. Not here: what `check`, `bench` and each
demo compute (test_engine.py, test_bench.py, test_demos.py)."""

import io
import json
import subprocess
import sys

import pytest

from fastrnn import _backends
from fastrnn.__main__ import DEMOS
from fastrnn.examples import _common


def fastrnn_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastrnn", *args], capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# demo --help


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_demo_help_lists_every_demo_and_exits_0(flag):
    proc = fastrnn_cli("demo", flag)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m fastrnn demo NAME")
    listing = proc.stdout.split("demos:\n", 1)[1]
    for name in DEMOS:
        # each demo on a line of its own, with the first line of its docstring after the name
        line = next(ln for ln in listing.splitlines() if ln.split()[:1] == [name])
        assert len(line.split()) > 2, line
    assert 'pip install "fastrnn[demos]"' in proc.stdout
    assert proc.stderr == ""


def test_demo_without_a_name_lists_the_demos_and_exits_2():
    proc = fastrnn_cli("demo")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "error: which demo? expected NAME, one of char-rnn, digits, ptb, sentiment, got nothing" \
        in proc.stderr
    for name in DEMOS:
        assert f"\n  {name} " in proc.stderr


def test_demo_unknown_name_is_a_usage_error():
    proc = fastrnn_cli("demo", "mnist")
    assert proc.returncode == 2
    assert "invalid choice: 'mnist'" in proc.stderr


def test_demo_name_help_is_the_demos_own():
    proc = fastrnn_cli("demo", "char-rnn", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m fastrnn demo char-rnn")
    assert "--iterations" in proc.stdout


# ----------------------------------------------------------------------------------------------
# info: the CUDA reason


def test_info_says_plainly_that_there_is_no_cuda_path():
    proc = fastrnn_cli("info")
    assert proc.returncode == 0, proc.stderr
    cuda = json.loads(proc.stdout)["cuda"]
    if cuda["compiled"]:
        pytest.skip("this build has the CUDA path")
    assert cuda["reason"] == _backends.NO_CUDA_PATH
    assert "Error" not in cuda["reason"]
    assert "FASTRNN_CUDA=ON" in cuda["reason"]


class _BrokenCudaModule:
    """A meta-path finder whose fastrnn._cuda exists but fails to load, as a compiled module
    does when libcublas.so.13 is missing."""

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, self) if name == "fastrnn._cuda" else None

    def create_module(self, spec):
        raise ImportError("libcublas.so.13: cannot open shared object file: No such file or directory")

    def exec_module(self, module):  # pragma: no cover - create_module raises first
        pass


def test_a_compiled_cuda_module_that_fails_to_load_keeps_its_cause(monkeypatch):
    monkeypatch.setattr(_backends, "_cuda_state", None)
    monkeypatch.delitem(sys.modules, "fastrnn._cuda", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCudaModule()] + sys.meta_path)
    reason = _backends.backends()["cuda"]["reason"]
    assert reason == ("the compiled CUDA module fastrnn._cuda failed to import: ImportError: "
                      "libcublas.so.13: cannot open shared object file: No such file or directory")
    with pytest.raises(ValueError, match="backend: 'cuda' is not available: the compiled CUDA "
                                         "module fastrnn._cuda failed to import: ImportError: libcublas"):
        _backends.resolve("cuda")


def test_a_missing_dependency_inside_the_cuda_module_is_not_called_a_missing_module():
    inner = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert _backends._cuda_import_failure(inner) == (
        "the compiled CUDA module fastrnn._cuda failed to import: ModuleNotFoundError: "
        "No module named 'torch'")
    absent = ModuleNotFoundError("No module named 'fastrnn._cuda'", name="fastrnn._cuda")
    assert _backends._cuda_import_failure(absent) == _backends.NO_CUDA_PATH


# ----------------------------------------------------------------------------------------------
# the demos' progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    """time.perf_counter for _common, advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _run_bar(stream, clock, steps=1000, dt=0.1):
    bar = _common.Progress(steps, "demo", stream=stream)
    for n in range(1, steps + 1):
        clock.now += dt
        bar.update(n, loss=1.0 / n)
        if n == steps // 2:
            bar.write("halfway")
    bar.close()
    return stream.getvalue()


def test_progress_into_a_file_is_plain_occasional_lines(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_common.time, "perf_counter", clock)
    text = _run_bar(io.StringIO(), clock)  # 1000 steps over 100 s of the fake clock
    print(text)
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert text.endswith("\n")
    assert "halfway" in lines
    bars = [ln for ln in lines if ln.startswith("demo [")]
    assert bars[0].startswith("demo [" + "." * 30 + "] 1/1000  loss 1  ")
    assert bars[-1].startswith("demo [" + "#" * 30 + "] 1000/1000  loss 0.001  ")
    assert 3 <= len(bars) <= 12, bars  # the first, one per 10 s of the clock, the last


def test_progress_on_a_terminal_redraws_in_place(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_common.time, "perf_counter", clock)
    text = _run_bar(_Terminal(), clock)
    assert text.count("\r") > 100  # redrawn up to 10 times a second of the clock
    assert "\r\x1b[Khalfway\n" in text
    assert text.endswith("\n")


def test_demo_progress_piped_has_no_control_characters():
    proc = fastrnn_cli("demo", "char-rnn", "--quick", "--iterations", "300", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "char-rnn [" in proc.stderr
    assert "] 300/300 " in proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr, repr(proc.stderr[-500:])
