# SPDX-License-Identifier: MIT
"""Typed stub of fastrnn._core, the compiled CPU engine (csrc/bindings.cpp). Private: the
public API in fastrnn._api validates arguments and calls these with dense arrays of one
dtype (float32 or float64). tests/test_api.py checks this stub against the module."""

import enum
from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

class CellKind(enum.IntEnum):
    LSTM = 0
    GRU = 1
    GRU_RESET_BEFORE = 2
    RNN_TANH = 3
    RNN_RELU = 4

_F = npt.NDArray[np.floating]
_I64 = npt.NDArray[np.int64]

def forward(
    cell: int, x: _F, w_ih: _F, w_hh: _F, b_ih: Optional[_F], b_hh: Optional[_F],
    w_hr: Optional[_F], h0: _F, c0: Optional[_F], lengths: Optional[_I64], reverse: bool,
    training: bool,
) -> Tuple[_F, _F, Optional[_F], Optional[_F]]:
    """One layer and direction. Returns (y [T,B,Hout], h_n [B,Hout], c_n [B,H] or None,
    reserve [reserve_elements] when training else None)."""

def backward(
    cell: int, x: _F, w_ih: _F, w_hh: _F, b_ih: Optional[_F], b_hh: Optional[_F],
    w_hr: Optional[_F], reserve: _F, lengths: Optional[_I64], reverse: bool, dy: _F,
    dh_n: Optional[_F], dc_n: Optional[_F],
) -> Tuple[_F, _F, Optional[_F], _F, _F, Optional[_F], Optional[_F], Optional[_F]]:
    """Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); None where absent."""

def reserve_elements(cell: int, T: int, B: int, I: int, H: int, P: int) -> int: ...
def simd_level() -> str: ...
def blas_info() -> str: ...
def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
