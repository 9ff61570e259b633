# SPDX-License-Identifier: MIT
"""Sphinx configuration of fastrnn's documentation: `bash .ci/docs` (or `sphinx-build -W
--keep-going -b html docs docs/_build/html` in an environment with the `docs` extra).

Pages are Markdown (MyST); the API reference is autodoc over the installed package. fastrnn's
docstrings are plain text laid out for `help()`: a summary paragraph, then running text,
aligned argument lists and indented examples. `_plain_docstring` below keeps that layout: the
running text is set as prose and the rest as preformatted blocks, so the docstrings need no
reStructuredText.
"""

import os

# fastrnn.keras needs a Keras backend that runs fastrnn's kernels (tensorflow is not one)
os.environ.setdefault("KERAS_BACKEND", "torch")

import fastrnn  # noqa: E402

project = "fastrnn"
author = "the fastrnn developers"
copyright = "the fastrnn developers, MIT licence"
release = version = fastrnn.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # links such as guides/numpy.md#lengths resolve to headings

html_theme = "furo"
html_title = f"fastrnn {release}"

autodoc_member_order = "bysource"
# Signatures as written in the code, not with evaluated defaults.
autodoc_preserve_defaults = True


def _is_prose(paragraph):
    """A paragraph that reads as running text: no indented, bulleted or column-aligned line."""
    return all(line and not line[0].isspace() and not line.startswith(("- ", "* "))
               and "  " not in line.strip() for line in paragraph)


def _plain_docstring(app, what, name, obj, options, lines):
    """fastrnn docstrings are plain text: keep the summary (up to a blank or indented line) and
    every later paragraph of running text as prose, and show the rest (argument tables,
    indented examples, lists) verbatim, as `help()` does. Docstrings that already use
    reStructuredText fields (a line starting with ':') or numpydoc sections (a line of dashes)
    are left to Sphinx and napoleon."""
    if not name.startswith("fastrnn") or not lines:
        return
    if any(line.lstrip().startswith(":") or set(line.strip()) == {"-"} for line in lines):
        return
    end = next((k for k, line in enumerate(lines) if not line.strip() or line[0].isspace()),
               len(lines))
    paragraphs, current = [lines[:end]], []
    for line in lines[end:]:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    new, verbatim = list(paragraphs[0]), []

    def flush():
        if verbatim:
            new.extend(["", ".. code-block:: text", ""])
            new.extend("    " + line if line.strip() else "" for line in verbatim[:-1])
            verbatim.clear()

    for paragraph in paragraphs[1:]:
        if _is_prose(paragraph):
            flush()
            new.extend([""] + paragraph)
        else:
            verbatim.extend(paragraph + [""])
    flush()
    lines[:] = new + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _plain_docstring)
