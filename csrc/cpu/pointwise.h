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
  if (s.y) zero(s.y + b * H, H);
  if (s.saved) zero(s.saved + b * Cell::kSaved * H, Cell::kSaved * H);
  if (s.rh) zero(s.rh + b * H, H);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------
// Forward, one-phase cells (LSTM, GRU, RNN)
// ---------------------------------------------------------------------------------------
template <class Cell, class T, bool kTraining, bool kWriteY>
inline void forward_row(const StepFwd<T>& s, int64_t b) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  const T* __restrict ax = s.ax + b * G * H;
  const T* __restrict ah = s.ah + b * G * H;
  const T* __restrict bi = s.b_ih;
  const T* __restrict bh = s.b_hh;
  const T* __restrict hp = Cell::kReadsHPrev ? s.h_prev + b * H : nullptr;
  const T* __restrict cp = Cell::kHasCellState ? s.c_prev + b * H : nullptr;
  T* __restrict h = s.h + b * H;
  T* __restrict c = Cell::kHasCellState ? s.c + b * H : nullptr;
  T* __restrict y = kWriteY ? s.y + b * H : nullptr;
  T* __restrict sv = kTraining ? s.saved + b * S * H : nullptr;
  for (int64_t j = 0; j < H; ++j) {
    T a_x[G], a_h[G], keep[S], hn, cn = T(0);
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
      for (int k = 0; k < S; ++k) sv[k * H + j] = keep[k];
  }
}

template <class Cell, class T, bool kTraining>
void forward_step(const StepFwd<T>& s) {
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
    } else if (s.y) {
      forward_row<Cell, T, kTraining, true>(s, b);
    } else {
      forward_row<Cell, T, kTraining, false>(s, b);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward, one-phase cells
// ---------------------------------------------------------------------------------------
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
    const T* __restrict sv = s.saved + b * S * H;
    const T* __restrict hp = Cell::kReadsHPrev ? s.h_prev + b * H : nullptr;
    const T* __restrict cp = Cell::kHasCellState ? s.c_prev + b * H : nullptr;
    const T* __restrict cc = Cell::kHasCellState ? s.c + b * H : nullptr;
    const T* __restrict dy = kProjected ? nullptr : s.dy + b * H;
    const T* __restrict dhr = kProjected ? s.dh_raw + b * H : nullptr;
    T* __restrict dh = kProjected ? nullptr : s.dh + b * H;
    T* __restrict hr = kProjected ? s.h_raw + b * H : nullptr;
    T* __restrict dc = Cell::kHasCellState ? s.dc + b * H : nullptr;
    T* __restrict dax = s.dax + b * G * H;
    T* __restrict dah = Cell::kSplitRecurrentGrad ? s.dah + b * G * H : nullptr;
    for (int64_t j = 0; j < H; ++j) {
      T keep[S], d_x[G], d_h[G], dh_prev = T(0);
      for (int k = 0; k < S; ++k) keep[k] = sv[k * H + j];
      T dcj = Cell::kHasCellState ? dc[j] : T(0);
      const T dht = kProjected ? dhr[j] : dh[j] + dy[j];
      Cell::backward(keep, Cell::kReadsHPrev ? hp[j] : T(0), Cell::kHasCellState ? cp[j] : T(0),
                     Cell::kHasCellState ? cc[j] : T(0), dht, dcj, d_x, d_h, dh_prev);
      for (int g = 0; g < G; ++g) dax[g * H + j] = d_x[g];
      if constexpr (Cell::kSplitRecurrentGrad)
        for (int g = 0; g < G; ++g) dah[g * H + j] = d_h[g];
      if constexpr (Cell::kHasCellState) dc[j] = dcj;
      if constexpr (kProjected) {
        if constexpr (Cell::kCanProject) hr[j] = Cell::raw_output(keep, cc[j]);
      } else {
        dh[j] = dh_prev;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Two-phase cells (GRU, reset before the matmul). Phase 1 runs after the GEMM of rows
// [0, 2H); phase 2 after the GEMM of the n rows on r⊙h. saved is always written.
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
void forward_gates_step(const StepFwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) {
      detail::forward_padded_row<Cell>(s, b);
      continue;
    }
    const T* __restrict ax = s.ax + b * G * H;
    const T* __restrict ah = s.ah + b * G * H;
    const T* __restrict bi = s.b_ih;
    const T* __restrict bh = s.b_hh;
    const T* __restrict hp = s.h_prev + b * H;
    T* __restrict sv = s.saved + b * S * H;
    T* __restrict rh = s.rh + b * H;
    for (int64_t j = 0; j < H; ++j) {
      T a_x[G], a_h[G], keep[S], rhj;
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
}

template <class Cell, class T>
void forward_state_step(const StepFwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // handled by the gates pass
    const T* __restrict ax = s.ax + b * G * H;
    const T* __restrict ah = s.ah + b * G * H;
    const T* __restrict bi = s.b_ih;
    const T* __restrict bh = s.b_hh;
    const T* __restrict hp = s.h_prev + b * H;
    T* __restrict sv = s.saved + b * S * H;
    T* __restrict h = s.h + b * H;
    T* __restrict y = s.y + b * H;
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
    const T* __restrict sv = s.saved + b * S * H;
    const T* __restrict hp = s.h_prev + b * H;
    const T* __restrict dy = s.dy + b * H;
    T* __restrict dh = s.dh + b * H;
    T* __restrict dax = s.dax + b * G * H;
    for (int64_t j = 0; j < H; ++j) {
      T keep[S], d_x[G], dh_prev;
      for (int k = 0; k < S; ++k) keep[k] = sv[k * H + j];
      Cell::backward_state(keep, hp[j], dh[j] + dy[j], d_x, dh_prev);
      dax[1 * H + j] = d_x[1];
      dax[2 * H + j] = d_x[2];
      dh[j] = dh_prev;
    }
  }
}

template <class Cell, class T>
void backward_gates_step(const StepBwd<T>& s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = s.H;
  for (int64_t b = 0; b < s.B; ++b) {
    if (!detail::row_active<T>(s.active, b)) continue;  // zeroed by the state pass
    const T* __restrict sv = s.saved + b * S * H;
    const T* __restrict hp = s.h_prev + b * H;
    const T* __restrict drh = s.drh + b * H;
    T* __restrict dh = s.dh + b * H;
    T* __restrict dax = s.dax + b * G * H;
    T* __restrict rh = s.rh + b * H;
    for (int64_t j = 0; j < H; ++j) {
      T keep[S], d_x[G], dhj = dh[j], rhj;
      keep[0] = sv[0 * H + j];
      Cell::backward_gates(keep, hp[j], drh[j], d_x, dhj, rhj);
      dax[0 * H + j] = d_x[0];
      dh[j] = dhj;
      rh[j] = rhj;
    }
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
