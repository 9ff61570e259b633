# SPDX-License-Identifier: MIT
"""fastrnn: fused LSTM, GRU and Elman RNN kernels, forward and backward.

The public names only; see DESIGN.md for the contract and README.md for examples.
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
