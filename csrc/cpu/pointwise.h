// SPDX-License-Identifier: MIT
// cpu/pointwise.h — the fused per-step pointwise passes of the CPU engine: gather the gate
// pre-activations of one (b, j), call the cell's maths, scatter state, output and saved
// values. One pass per step and direction (two for two-phase cells). Vectorisation comes from
// the compiler: the j loops are unit-stride, every pointer is __restrict (the engine never
// aliases them: inference ping-pongs between two state buffers), and the activations are
// branch-free. This header is compiled once per instruction set by kernels_isa.cpp.
//
// Padded (inactive) rows: forward copies the state through, writes y = 0 and zeros the saved
// values; backward writes zero pre-activation gradients and leaves dh and dc untouched.
// Every pass covers the hidden units [j0, j1) of the step struct: one thread's share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu/kernels.h"

#ifndef FASTRNN_ISA
#error "compile through kernels_isa.cpp, which defines FASTRNN_ISA"
#endif

// Everything below is compiled once per instruction set; the namespace keeps the copies
// apart (same templates, different code: one must never stand in for the other at link time).
namespace fastrnn::cpu::FASTRNN_ISA {

namespace detail {
template <class T>
inline bool row_active(const uint8_t* active, int64_t b) { return !active || active[b]; }
template <class T>
inline void zero(T* p, int64_t n) {
  if (n > 0) std::memset(p, 0, sizeof(T) * static_cast<size_t>(n));
}
template <class T>
inline void copy(T* __restrict dst, const T* __restrict src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
}

// Padded row in forward, units [j0, j1): state through, y = 0, saved = 0.
template <class Cell, class T>
inline void forward_padded_row(const StepFwd<T>& s, int64_t b) {
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  if (s.h_prev) copy(s.h + b * H + j0, s.h_prev + b * H + j0, n);
  if constexpr (Cell::kHasCellState) copy(s.c + b * H + j0, s.c_prev + b * H + j0, n);
  if (s.y) zero(s.y + b * s.y_ld + j0, n);
  if (s.saved)
    for (int k = 0; k < Cell::kSaved; ++k) zero(s.saved + b * Cell::kSaved * H + k * H + j0, n);
  if (s.rh) zero(s.rh + b * H + j0, n);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------
// Forward, one-phase cells (LSTM, GRU, RNN)
// ---------------------------------------------------------------------------------------
// The j loops live in functions whose pointers are __restrict parameters: GCC honours
// restrict there (not on local variables), and without it the vectoriser gives up on the
// alias checks between the gate-strided reads and the writes. Pointers are at unit j0.
template <class Cell, class T, bool kTraining, bool kWriteY>
inline void forward_row(int64_t n, const T* __restrict ax, int64_t ax_gs, const T* __restrict ah,
                        int64_t ah_gs, const T* __restrict bi, const T* __restrict bh,
                        int64_t b_gs, const T* __restrict hp, const T* __restrict cp,
                        T* __restrict h, T* __restrict c, T* __restrict y, T* __restrict sv,
                        int64_t sv_gs) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kSummed = kSumsPreactivations<Cell>;  // ax holds both projections, ah is null
  for (int64_t j = 0; j < n; ++j) {
    T a_x[G], a_h[G], keep[S], hn, cn = T(0);
    FASTRNN_UNROLL
    for (int g = 0; g < G; ++g) {
      a_x[g] = ax[g * ax_gs + j] + bi[g * b_gs + j];
      a_h[g] = kSummed ? bh[g * b_gs + j] : ah[g * ah_gs + j] + bh[g * b_gs + j];
    }
    Cell::forward(a_x, a_h, Cell::kReadsHPrev ? hp[j] : T(0),
                  Cell::kHasCellState ? cp[j] : T(0), keep, hn, cn);
    h[j] = hn;
    if constexpr (kWriteY) y[j] = hn;
    if constexpr (Cell::kHasCellState) c[j] = cn;
    if constexpr (kTraining)
      FASTRNN_UNROLL
      for (int k = 0; k < S; ++k) sv[k * sv_gs + j] = keep[k];
  }
}

// Cells with kTwoPassForward (LSTM): per block of units, one loop per gate that only
// activates it, then one loop for the state. In one loop with all five activations of a
// unit, each iteration's work (~200 vector instructions, two exp-and-divide chains deep)
// leaves the out-of-order window too few independent iterations (`perf`: the one-loop pass
// was 22 % of S1 LSTM inference at 1 thread). What it bought is in benchmarks/README.md.
template <class Cell, class T, int Gate, bool kSummed>
inline void gate_pass(int64_t m, const T* __restrict ax, const T* __restrict ah,
                      const T* __restrict bi, const T* __restrict bh, T* __restrict out) {
  for (int64_t j = 0; j < m; ++j) {
    const T a_x = ax[j] + bi[j];
    const T a_h = kSummed ? bh[j] : ah[j] + bh[j];
    out[j] = Cell::template activate<Gate>(a_x + a_h);
  }
}

template <class Cell, class T, bool kWriteY>
inline void state_pass(int64_t m, const T* __restrict a0, const T* __restrict a1,
                       const T* __restrict a2, const T* __restrict a3, const T* __restrict cp,
                       T* __restrict h, T* __restrict c, T* __restrict y) {
  for (int64_t j = 0; j < m; ++j) {
    const T act[4] = {a0[j], a1[j], a2[j], a3[j]};
    T hn, cn;
    Cell::update(act, cp[j], hn, cn);
    h[j] = hn;
    c[j] = cn;
    if constexpr (kWriteY) y[j] = hn;
  }
}

// Every gate's pass over m units, gate g's operands at g·(its gate stride).
template <class Cell, class T, bool kSummed, int... Gates>
inline void gate_passes(std::integer_sequence<int, Gates...>, int64_t m, const T* ax,
                        int64_t ax_gs, const T* ah, int64_t ah_gs, const T* bi, const T* bh,
                        int64_t b_gs, T* const* act) {
  (gate_pass<Cell, T, Gates, kSummed>(m, ax + Gates * ax_gs,
                                      kSummed ? nullptr : ah + Gates * ah_gs,
                                      bi + Gates * b_gs, bh + Gates * b_gs, act[Gates]),
   ...);
}

// forward_row's contract, two-pass: the activations go to saved when training, else to a
// block on the stack.
template <class Cell, class T, bool kTraining, bool kWriteY>
inline void forward_row_two_pass(int64_t n, const T* ax, int64_t ax_gs, const T* ah,
                                 int64_t ah_gs, const T* bi, const T* bh, int64_t b_gs,
                                 const T* /*hp*/, const T* cp, T* h, T* c, T* y, T* sv,
                                 int64_t sv_gs) {
  static_assert(Cell::kGates == 4 && Cell::kSaved == 4 && Cell::kHasCellState);
  constexpr int64_t kBlock = 128;
  alignas(32) T block[kTraining ? 1 : 4][kBlock];
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t m = std::min(kBlock, n - j0);
    T* act[4];
    for (int g = 0; g < 4; ++g) {
      if constexpr (kTraining) act[g] = sv + g * sv_gs + j0;
      else act[g] = block[g];
    }
    gate_passes<Cell, T, kSumsPreactivations<Cell>>(
        std::make_integer_sequence<int, 4>{}, m, ax + j0, ax_gs,
        kSumsPreactivations<Cell> ? nullptr : ah + j0, ah_gs, bi + j0, bh + j0, b_gs, act);
    state_pass<Cell, T, kWriteY>(m, act[0], act[1], act[2], act[3], cp + j0, h + j0, c + j0,
                                 kWriteY ? y + j0 : nullptr);
  }
}

template <class Cell, class T, bool kTraining>
void forward_step(const StepFwd<T>& s) {
  constexpr int S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
      continue;
    }
    const T* hp = Cell::kReadsHPrev ? s.h_prev + b * H + j0 : nullptr;
    const T* cp = Cell::kHasCellState ? s.c_prev + b * H + j0 : nullptr;
    T* c = Cell::kHasCellState ? s.c + b * H + j0 : nullptr;
    T* sv = kTraining ? s.saved + b * S * H + j0 : nullptr;
    auto row = [&] {
      if constexpr (Cell::kTwoPassForward)
        return s.y ? &forward_row_two_pass<Cell, T, kTraining, true>
                   : &forward_row_two_pass<Cell, T, kTraining, false>;
      else
        return s.y ? &forward_row<Cell, T, kTraining, true> : &forward_row<Cell, T, kTraining, false>;
    }();
    const T* ah = kSumsPreactivations<Cell> ? nullptr : s.ah + b * s.ah_ld;
    row(n, s.ax + b * s.ax_ld, s.ax_gs, ah, s.ah_gs, s.b_ih + j0, s.b_hh + j0, H,
        hp, cp, s.h + b * H + j0, c, s.y ? s.y + b * s.y_ld + j0 : nullptr, sv, H);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, one-phase cells
// ---------------------------------------------------------------------------------------
template <class Cell, class T, bool kProjected>
inline void backward_row(int64_t n, int64_t H, const T* __restrict sv, const T* __restrict hp,
                         const T* __restrict cp, const T* __restrict cc, const T* __restrict dy,
                         const T* __restrict dhr, T* __restrict dh, T* __restrict hr,
                         T* __restrict dc, T* __restrict dax, T* __restrict dah) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < n; ++j) {
    T keep[S], d_x[G], d_h[G], dh_prev = T(0);
    FASTRNN_UNROLL
    for (int k = 0; k < S; ++k) keep[k] = sv[k * H + j];
    T dcj = Cell::kHasCellState ? dc[j] : T(0);
    const T dht = kProjected ? dhr[j] : dh[j] + dy[j];
    Cell::backward(keep, Cell::kReadsHPrev ? hp[j] : T(0), Cell::kHasCellState ? cp[j] : T(0),
                   Cell::kHasCellState ? cc[j] : T(0), dht, dcj, d_x, d_h, dh_prev);
    FASTRNN_UNROLL
    for (int g = 0; g < G; ++g) dax[g * H + j] = d_x[g];
    if constexpr (Cell::kSplitRecurrentGrad)
      FASTRNN_UNROLL
      for (int g = 0; g < G; ++g) dah[g * H + j] = d_h[g];
    if constexpr (Cell::kHasCellState) dc[j] = dcj;
    if constexpr (kProjected) {
      if constexpr (Cell::kCanProject) hr[j] = Cell::raw_output(keep, cc[j]);
    } else {
      dh[j] = dh_prev;
    }
  }
}

template <class Cell, class T, bool kProjected>
void backward_step(const StepBwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      for (int g = 0; g < G; ++g) {
        detail::zero(s.dax + b * G * H + g * H + j0, n);
        if constexpr (Cell::kSplitRecurrentGrad) detail::zero(s.dah + b * G * H + g * H + j0, n);
      }
      if constexpr (kProjected) detail::zero(s.h_raw + b * H + j0, n);
      continue;
    }
    auto at = [b, H, j0](auto* p) { return p ? p + b * H + j0 : nullptr; };
    backward_row<Cell, T, kProjected>(
        n, H, s.saved + b * S * H + j0, Cell::kReadsHPrev ? at(s.h_prev) : nullptr,
        Cell::kHasCellState ? at(s.c_prev) : nullptr, Cell::kHasCellState ? at(s.c) : nullptr,
        kProjected ? nullptr : s.dy + b * s.dy_ld + j0, kProjected ? at(s.dh_raw) : nullptr,
        kProjected ? nullptr : at(s.dh), kProjected ? at(s.h_raw) : nullptr,
        Cell::kHasCellState ? at(s.dc) : nullptr, s.dax + b * G * H + j0,
        Cell::kSplitRecurrentGrad ? s.dah + b * G * H + j0 : nullptr);
  }
}

// ---------------------------------------------------------------------------------------
// Two-phase cells (GRU, reset before the matmul). Phase 1 runs after the GEMM of the r and z
// rows; phase 2 after the GEMM of the n rows on r⊙h. saved is always written.
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
inline void forward_gates_row(int64_t n, const T* __restrict ax, int64_t ax_gs,
                              const T* __restrict ah, int64_t ah_gs, const T* __restrict bi,
                              const T* __restrict bh, int64_t H, const T* __restrict hp,
                              T* __restrict sv, T* __restrict rh) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < n; ++j) {
    T a_x[G], a_h[G], keep[S], rhj;
    FASTRNN_UNROLL
    for (int g = 0; g < 2; ++g) {
      a_x[g] = ax[g * ax_gs + j] + bi[g * H + j];
      a_h[g] = ah[g * ah_gs + j] + bh[g * H + j];
    }
    Cell::forward_gates(a_x, a_h, hp[j], keep, rhj);
    sv[0 * H + j] = keep[0];
    sv[1 * H + j] = keep[1];
    rh[j] = rhj;
  }
}

template <class Cell, class T>
inline void forward_state_row(int64_t n, const T* __restrict ax, int64_t ax_gs,
                              const T* __restrict ah, int64_t ah_gs, const T* __restrict bi,
                              const T* __restrict bh, int64_t H, const T* __restrict hp,
                              T* __restrict sv, T* __restrict h, T* __restrict y) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < n; ++j) {
    T a_x[G], a_h[G], keep[S], hn;
    a_x[2] = ax[2 * ax_gs + j] + bi[2 * H + j];
    a_h[2] = ah[2 * ah_gs + j] + bh[2 * H + j];
    keep[0] = sv[0 * H + j];
    keep[1] = sv[1 * H + j];
    Cell::forward_state(a_x, a_h, hp[j], keep, hn);
    sv[2 * H + j] = keep[2];
    h[j] = hn;
    y[j] = hn;
  }
}

template <class Cell, class T>
void forward_gates_step(const StepFwd<T>& s) {
  constexpr int S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
      continue;
    }
    forward_gates_row<Cell, T>(n, s.ax + b * s.ax_ld, s.ax_gs, s.ah + b * s.ah_ld, s.ah_gs,
                               s.b_ih + j0, s.b_hh + j0, H, s.h_prev + b * H + j0,
                               s.saved + b * S * H + j0, s.rh + b * H + j0);
  }
}

template <class Cell, class T>
void forward_state_step(const StepFwd<T>& s) {
  constexpr int S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // handled by the gates pass
    forward_state_row<Cell, T>(n, s.ax + b * s.ax_ld, s.ax_gs, s.ah + b * s.ah_ld, s.ah_gs,
                               s.b_ih + j0, s.b_hh + j0, H, s.h_prev + b * H + j0,
                               s.saved + b * S * H + j0, s.h + b * H + j0,
                               s.y + b * s.y_ld + j0);
  }
}

template <class Cell, class T>
inline void backward_state_row(int64_t n, int64_t H, const T* __restrict sv,
                               const T* __restrict hp, const T* __restrict dy, T* __restrict dh,
                               T* __restrict dax) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < n; ++j) {
    T keep[S], d_x[G], dh_prev;
    FASTRNN_UNROLL
    for (int k = 0; k < S; ++k) keep[k] = sv[k * H + j];
    Cell::backward_state(keep, hp[j], dh[j] + dy[j], d_x, dh_prev);
    dax[1 * H + j] = d_x[1];
    dax[2 * H + j] = d_x[2];
    dh[j] = dh_prev;
  }
}

template <class Cell, class T>
inline void backward_gates_row(int64_t n, int64_t H, const T* __restrict sv,
                               const T* __restrict hp, const T* __restrict drh, T* __restrict dh,
                               T* __restrict dax, T* __restrict rh) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < n; ++j) {
    T keep[S], d_x[G], dhj = dh[j], rhj;
    keep[0] = sv[0 * H + j];
    Cell::backward_gates(keep, hp[j], drh[j], d_x, dhj, rhj);
    dax[0 * H + j] = d_x[0];
    dh[j] = dhj;
    rh[j] = rhj;
  }
}

template <class Cell, class T>
void backward_state_step(const StepBwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      for (int g = 0; g < G; ++g) detail::zero(s.dax + b * G * H + g * H + j0, n);
      detail::zero(s.rh + b * H + j0, n);
      continue;
    }
    backward_state_row<Cell, T>(n, H, s.saved + b * S * H + j0, s.h_prev + b * H + j0,
                                s.dy + b * s.dy_ld + j0, s.dh + b * H + j0,
                                s.dax + b * G * H + j0);
  }
}

template <class Cell, class T>
void backward_gates_step(const StepBwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H, j0 = s.j0, n = s.j1 - s.j0;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // zeroed by the state pass
    backward_gates_row<Cell, T>(n, H, s.saved + b * S * H + j0, s.h_prev + b * H + j0,
                                s.drh + b * H + j0, s.dh + b * H + j0, s.dax + b * G * H + j0,
                                s.rh + b * H + j0);
  }
}

template <class Cell, class T>
CellKernels<T> make_cell_kernels() {
  CellKernels<T> k;
  if constexpr (Cell::kResetBeforeMatmul) {
    k.forward_gates = &forward_gates_step<Cell, T>;
    k.forward_state = &forward_state_step<Cell, T>;
    k.backward_state = &backward_state_step<Cell, T>;
    k.backward_gates = &backward_gates_step<Cell, T>;
  } else {
    k.forward_infer = &forward_step<Cell, T, false>;
    k.forward_train = &forward_step<Cell, T, true>;
    k.backward = &backward_step<Cell, T, false>;
    if constexpr (Cell::kCanProject) k.backward_projected = &backward_step<Cell, T, true>;
  }
  return k;
}

}  // namespace fastrnn::cpu::FASTRNN_ISA
