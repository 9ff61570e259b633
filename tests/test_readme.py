# SPDX-License-Identifier: MIT
"""The code that README.md and the guides in docs/ show a reader runs, as a reader runs it.

Every fenced block whose info string is exactly `python` runs in a fresh interpreter (so one
block cannot lean on another's names or on an import order, and Keras picks its backend as a
reader's would); the test fails if the block raises or prints nothing. A block that imports an
optional peer of fastrnn (torch, JAX, Keras) that is not installed is skipped with that reason.
Of the `bash` blocks, the cheap `python -m fastrnn` commands (`check`, `info`) run too; installs, pytest,
the demos (tests/test_demos.py runs them) and the benchmark do not.

Code that is not meant to run as it stands (a signature, an outline) is written with MyST's
`{code-block} python` directive or as `text`, which this test leaves alone.
"""

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts]

# ```lang at the start of a line, up to the closing fence (MyST directives are ```{name})
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# the optional peers a block may import (directly or through fastrnn's adapter of it) -> what
# it needs installed (the pages run Keras on its torch backend, as tests/test_convert.py does)
PEERS = {"torch": ["torch"], "jax": ["jax"], "keras": ["keras", "torch"],
         "onnxruntime": ["onnxruntime"], "onnx": ["onnx"], "matplotlib": ["matplotlib"],
         "fastrnn.torch": ["torch"], "fastrnn.jax": ["jax"]}
IMPORT = re.compile(r"^\s*import\s+(.+)$|^\s*from\s+([\w.]+)\s+import", re.MULTILINE)
# `python -m fastrnn SUBCOMMAND` that take about a second
CHEAP = {"check", "info"}
# Under .ci/sanitize (the ASan runtime preloaded into every Python) jaxlib, and Keras through
# the C++ extensions it loads, abort in ASan's __cxa_throw interceptor before fastrnn is reached
# (the reason .ci/sanitize leaves tests/test_jax.py out); their blocks skip there.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
NOT_UNDER_ASAN = {"jax", "keras"}


def _blocks(lang):
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1).strip() == lang:
                line = text.count("\n", 0, m.start()) + 1
                yield pytest.param(m.group(2), id=f"{page.relative_to(ROOT)}:{line}")


def _imports(code):
    """The modules a block imports: `import a.b as c, d` gives a.b and d; `from a import b`, a."""
    for names, module in IMPORT.findall(code):
        yield from ([n.split()[0] for n in names.split(",") if n.strip()] if names else [module])


def _skip_reason(code):
    if "torch.onnx.export" in code:  # torch's exporter imports onnxscript when it runs
        if importlib.util.find_spec("onnxscript") is None:
            return "the block exports to ONNX, which needs onnxscript, not installed"
        if SANITIZED:  # tests/test_torch_onnx.py: torch.export throws C++ exceptions
            return "the block runs torch.export, which cannot run under the ASan runtime"
    for name in _imports(code):
        for peer in PEERS.get(name) or PEERS.get(name.split(".")[0]) or []:
            if importlib.util.find_spec(peer) is None:
                return f"the block needs {peer}, which is not installed"
            if SANITIZED and peer in NOT_UNDER_ASAN:
                return f"the block imports {peer}, which cannot run under the ASan runtime"
    return None


def _run(argv, what, cwd, timeout=300):
    # in an empty folder, as a reader's would be: nothing there shadows an installed module
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}):\n--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def test_pages_have_python_blocks():
    # a renamed fence or page must not silently leave nothing to run
    assert len(list(_blocks("python"))) >= 10
    assert any("README.md" in p.id for p in _blocks("python"))


@pytest.mark.parametrize("code", list(_blocks("python")))
def test_python_block(code, tmp_path):
    reason = _skip_reason(code)
    if reason is not None:
        pytest.skip(reason)
    proc = _run([sys.executable, "-c", code], "the block", tmp_path)
    assert proc.stdout.strip(), "the block printed nothing: every example shows its result"


def _cheap_commands():
    for param in _blocks("bash"):
        for line in param.values[0].splitlines():
            line = line.split("#", 1)[0].strip()
            for part in (p.strip() for p in line.split("&&")):
                words = shlex.split(part)
                if words[:3] == ["python", "-m", "fastrnn"] and words[3:4] and words[3] in CHEAP:
                    yield pytest.param(words, id=f"{param.id}:{' '.join(words)}")


@pytest.mark.parametrize("words", list(_cheap_commands()))
def test_bash_command(words, tmp_path):
    _run([sys.executable, *words[1:]], " ".join(words), tmp_path)
