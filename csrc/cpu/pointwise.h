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
#pragma once

#include <cstdint>
#include <cstring>

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
inline void zero(T* p, int64_t n) { std::memset(p, 0, sizeof(T) * static_cast<size_t>(n)); }
template <class T>
inline void copy(T* __restrict dst, const T* __restrict src, int64_t n) {
  std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
}

// Padded row in forward: state through, y = 0, saved = 0.
template <class Cell, class T>
inline void forward_padded_row(const StepFwd<T>& s, int64_t b) {
  const int64_t H = s.H;
  if (s.h_prev) copy(s.h + b * H, s.h_prev + b * H, H);
  if constexpr (Cell::kHasCellState) copy(s.c + b * H, s.c_prev + b * H, H);
  if (s.y) zero(s.y + b * s.y_ld, H);
  if (s.saved) zero(s.saved + b * Cell::kSaved * H, Cell::kSaved * H);
  if (s.rh) zero(s.rh + b * H, H);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------
// Forward, one-phase cells (LSTM, GRU, RNN)
// ---------------------------------------------------------------------------------------
// The j loops live in functions whose pointers are __restrict parameters: GCC honours
// restrict there (not on local variables), and without it the vectoriser gives up on the
// alias checks between the gate-strided reads and the writes.
template <class Cell, class T, bool kTraining, bool kWriteY>
inline void forward_row(int64_t H, const T* __restrict ax, const T* __restrict ah,
                        const T* __restrict bi, const T* __restrict bh, const T* __restrict hp,
                        const T* __restrict cp, T* __restrict h, T* __restrict c,
                        T* __restrict y, T* __restrict sv) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
    T a_x[G], a_h[G], keep[S], hn, cn = T(0);
    FASTRNN_UNROLL
    for (int g = 0; g < G; ++g) {
      a_x[g] = ax[g * H + j] + bi[g * H + j];
      a_h[g] = ah[g * H + j] + bh[g * H + j];
    }
    Cell::forward(a_x, a_h, Cell::kReadsHPrev ? hp[j] : T(0),
                  Cell::kHasCellState ? cp[j] : T(0), keep, hn, cn);
    h[j] = hn;
    if constexpr (kWriteY) y[j] = hn;
    if constexpr (Cell::kHasCellState) c[j] = cn;
    if constexpr (kTraining)
      FASTRNN_UNROLL
      for (int k = 0; k < S; ++k) sv[k * H + j] = keep[k];
  }
}

template <class Cell, class T, bool kTraining>
void forward_step(const StepFwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
      continue;
    }
    const T* hp = Cell::kReadsHPrev ? s.h_prev + b * H : nullptr;
    const T* cp = Cell::kHasCellState ? s.c_prev + b * H : nullptr;
    T* c = Cell::kHasCellState ? s.c + b * H : nullptr;
    T* sv = kTraining ? s.saved + b * S * H : nullptr;
    auto row = s.y ? &forward_row<Cell, T, kTraining, true> : &forward_row<Cell, T, kTraining, false>;
    row(H, s.ax + b * G * H, s.ah + b * G * H, s.b_ih, s.b_hh, hp, cp, s.h + b * H, c,
        s.y ? s.y + b * s.y_ld : nullptr, sv);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, one-phase cells
// ---------------------------------------------------------------------------------------
template <class Cell, class T, bool kProjected>
inline void backward_row(int64_t H, const T* __restrict sv, const T* __restrict hp,
                         const T* __restrict cp, const T* __restrict cc, const T* __restrict dy,
                         const T* __restrict dhr, T* __restrict dh, T* __restrict hr,
                         T* __restrict dc, T* __restrict dax, T* __restrict dah) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::zero(s.dax + b * G * H, G * H);
      if constexpr (Cell::kSplitRecurrentGrad) detail::zero(s.dah + b * G * H, G * H);
      if constexpr (kProjected) detail::zero(s.h_raw + b * H, H);
      continue;
    }
    auto at = [b, H](auto* p) { return p ? p + b * H : nullptr; };
    backward_row<Cell, T, kProjected>(
        H, s.saved + b * S * H, Cell::kReadsHPrev ? at(s.h_prev) : nullptr,
        Cell::kHasCellState ? at(s.c_prev) : nullptr, Cell::kHasCellState ? at(s.c) : nullptr,
        kProjected ? nullptr : s.dy + b * s.dy_ld, kProjected ? at(s.dh_raw) : nullptr,
        kProjected ? nullptr : at(s.dh), kProjected ? at(s.h_raw) : nullptr,
        Cell::kHasCellState ? at(s.dc) : nullptr, s.dax + b * G * H,
        Cell::kSplitRecurrentGrad ? s.dah + b * G * H : nullptr);
  }
}

// ---------------------------------------------------------------------------------------
// Two-phase cells (GRU, reset before the matmul). Phase 1 runs after the GEMM of rows
// [0, 2H); phase 2 after the GEMM of the n rows on r⊙h. saved is always written.
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
inline void forward_gates_row(int64_t H, const T* __restrict ax, const T* __restrict ah,
                              const T* __restrict bi, const T* __restrict bh,
                              const T* __restrict hp, T* __restrict sv, T* __restrict rh) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
    T a_x[G], a_h[G], keep[S], rhj;
    FASTRNN_UNROLL
    for (int g = 0; g < 2; ++g) {
      a_x[g] = ax[g * H + j] + bi[g * H + j];
      a_h[g] = ah[g * H + j] + bh[g * H + j];
    }
    Cell::forward_gates(a_x, a_h, hp[j], keep, rhj);
    sv[0 * H + j] = keep[0];
    sv[1 * H + j] = keep[1];
    rh[j] = rhj;
  }
}

template <class Cell, class T>
inline void forward_state_row(int64_t H, const T* __restrict ax, const T* __restrict ah,
                              const T* __restrict bi, const T* __restrict bh,
                              const T* __restrict hp, T* __restrict sv, T* __restrict h,
                              T* __restrict y) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
    T a_x[G], a_h[G], keep[S], hn;
    a_x[2] = ax[2 * H + j] + bi[2 * H + j];
    a_h[2] = ah[2 * H + j] + bh[2 * H + j];
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
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
      continue;
    }
    forward_gates_row<Cell, T>(H, s.ax + b * G * H, s.ah + b * G * H, s.b_ih, s.b_hh,
                               s.h_prev + b * H, s.saved + b * S * H, s.rh + b * H);
  }
}

template <class Cell, class T>
void forward_state_step(const StepFwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // handled by the gates pass
    forward_state_row<Cell, T>(H, s.ax + b * G * H, s.ah + b * G * H, s.b_ih, s.b_hh,
                               s.h_prev + b * H, s.saved + b * S * H, s.h + b * H, s.y + b * s.y_ld);
  }
}

template <class Cell, class T>
inline void backward_state_row(int64_t H, const T* __restrict sv, const T* __restrict hp,
                               const T* __restrict dy, T* __restrict dh, T* __restrict dax) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
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
inline void backward_gates_row(int64_t H, const T* __restrict sv, const T* __restrict hp,
                               const T* __restrict drh, T* __restrict dh, T* __restrict dax,
                               T* __restrict rh) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  for (int64_t j = 0; j < H; ++j) {
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
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::zero(s.dax + b * G * H, G * H);
      detail::zero(s.rh + b * H, H);
      continue;
    }
    backward_state_row<Cell, T>(H, s.saved + b * S * H, s.h_prev + b * H, s.dy + b * s.dy_ld,
                                s.dh + b * H, s.dax + b * G * H);
  }
}

template <class Cell, class T>
void backward_gates_step(const StepBwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // zeroed by the state pass
    backward_gates_row<Cell, T>(H, s.saved + b * S * H, s.h_prev + b * H, s.drh + b * H,
                                s.dh + b * H, s.dax + b * G * H, s.rh + b * H);
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
