# SPDX-License-Identifier: MIT
"""fastrnn: fused LSTM, GRU and Elman RNN kernels, forward and backward.

The public names only. The documentation (docs/ in the repository, built with Sphinx) holds
the design and public contract (docs/design.md), the guides and the API reference; README.md
has the first examples.
"""

from ._api import (
    RNNGrads,
    RNNOutput,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from ._backends import backends, set_num_threads
from ._prepared import PreparedNetwork, prepare

# The one place the version is written: pyproject.toml reads it from this line.
__version__ = "0.1.0"

__all__ = [
    "PreparedNetwork",
    "RNNGrads",
    "RNNOutput",
    "backends",
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "prepare",
    "rnn_backward",
    "rnn_forward",
    "set_num_threads",
]
