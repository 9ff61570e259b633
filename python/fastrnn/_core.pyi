# SPDX-License-Identifier: MIT
"""Typed stub of fastrnn._core, the compiled CPU engine (csrc/bindings.cpp). Private: the
public API in fastrnn._api validates arguments and calls these with dense arrays of one
dtype (float32 or float64). tests/test_api.py checks this stub against the module."""

import enum
from typing import List, Optional, Tuple

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
    cell: int, x: _F, weights: List[_F], H: int, P: int, bias: bool, h0: _F, c0: Optional[_F],
    lengths: Optional[_I64], L: int, D: int, dropout: float, seed: int, training: bool,
) -> Tuple[_F, _F, Optional[_F], Optional[_F]]:
    """A whole stack: L layers x D directions, weights in torch _flat_weights order. Returns
    (y [T,B,D*Hout], h_n [L*D,B,Hout], c_n [L*D,B,H] or None, reserve when training else None)."""

def backward(
    cell: int, x: _F, weights: List[_F], H: int, P: int, bias: bool, reserve: _F,
    lengths: Optional[_I64], L: int, D: int, dropout: float, seed: int, dy: _F,
    dh_n: Optional[_F], dc_n: Optional[_F],
) -> Tuple[_F, _F, Optional[_F], List[_F]]:
    """Returns (dx, dh0, dc0 or None, weight gradients in the order and shapes of weights)."""

class PreparedFloat32:
    """A prepared network (fastrnn.prepare): weights it keeps alive and never writes, their
    packed panels and a scratch workspace, kept between calls; calls take turns (a mutex)."""
    def __init__(self, cell: int, weights: List[_F], I: int, H: int, P: int, bias: bool,
                 L: int, D: int, bf16: bool) -> None:
        """bf16: the weight matrices hold bfloat16 values only; their panels keep 16 bits."""
    def forward(self, x: _F, h0: _F, c0: Optional[_F], lengths: Optional[_I64]
                ) -> Tuple[_F, _F, Optional[_F]]:
        """Inference over x [T,B,I]: (y [T,B,D*Hout], h_n [L*D,B,Hout], c_n or None)."""
    def step(self, x: _F, h: _F, c: Optional[_F], h_out: _F, c_out: Optional[_F]) -> None:
        """One step of a unidirectional stack: x [B,I], h [L,B,Hout], c [L,B,H]; writes h_out,
        c_out (which may be h, c)."""

class PreparedFloat64(PreparedFloat32): ...

def reserve_elements(cell: int, T: int, B: int, I: int, H: int, P: int, L: int, D: int) -> int: ...
def simd_level() -> str: ...
def cached_block_bytes() -> int: ...
def hold_block_cache(seconds: float) -> None:
    """Holds the block cache's lock for `seconds`, GIL released (for tests of fork)."""
def blas_info() -> str: ...
def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def fma_peak_gflops() -> float:
    """GFLOP/s of float32 FMAs on the pool's threads at once; 0.0 without AVX2+FMA or AVX-512 kernels."""
