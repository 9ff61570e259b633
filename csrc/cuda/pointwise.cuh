// SPDX-License-Identifier: MIT
// cuda/pointwise.cuh — the CUDA engine's per-step pointwise kernels and its few helpers
// (projection mask, dropout, padding mask, fills). One thread per (b, j) of a [B, H] step:
// gather the gate pre-activations, run the cell's maths (cells/*.h, the same code the CPU runs)
// in the accumulation type, scatter. Storage type T may be half/bfloat16; Acc is float for
// those and for float, double for double. The cell state c and the saved activations are kept
// in Acc, so half precision never accumulates along the sequence.
//
// Launch: 256 threads per block, one-dimensional grid over B*H (or the element count). Rows of
// the same b are contiguous in j, so loads and stores of a warp are coalesced per gate block.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "fastrnn/cell.h"
#include "fastrnn/dropout.h"

namespace fastrnn::cuda {

template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class T> using Acc = typename AccOf<T>::type;

template <class T> __device__ __forceinline__ Acc<T> ld(const T* p, int64_t i) {
  return static_cast<Acc<T>>(p[i]);
}
template <class T> __device__ __forceinline__ void st(T* p, int64_t i, Acc<T> v) { p[i] = T(v); }

constexpr int kThreads = 256;
// At least one block: a launch of 0 blocks is an error (n = 0 when B, H or I is 0); every
// kernel returns at once for indices past its n.
inline unsigned blocks_for(int64_t n) {
  return unsigned(std::max<int64_t>(1, (n + kThreads - 1) / kThreads));
}

// One step of one layer-direction; pointers as in cpu/kernels.h StepFwd, device memory.
template <class T>
struct StepFwd {
  int64_t B = 0, H = 0, t = 0;
  const int64_t* lengths = nullptr;  // [B] device, nullptr = all steps valid
  const T* ax = nullptr;             // [B, G*H]
  const T* ah = nullptr;             // [B, G*H]
  const T* b_ih = nullptr;           // [G*H] or nullptr (no bias)
  const T* b_hh = nullptr;
  const T* h_prev = nullptr;         // [B, H]; nullptr with a projection
  T* h = nullptr;                    // [B, H]
  const Acc<T>* c_prev = nullptr;    // [B, H] cells with state
  Acc<T>* c = nullptr;
  T* y = nullptr;                    // rows y_ld apart; nullptr with a projection
  int64_t y_ld = 0;
  Acc<T>* saved = nullptr;           // [B, S*H] when training (always for two-phase cells)
  T* rh = nullptr;                   // [B, H] two-phase cells
};

template <class T>
struct StepBwd {
  int64_t B = 0, H = 0, t = 0;
  const int64_t* lengths = nullptr;
  const Acc<T>* saved = nullptr;
  const T* h_prev = nullptr;
  const Acc<T>* c_prev = nullptr;
  const Acc<T>* c = nullptr;
  const T* dy = nullptr;             // rows dy_ld apart (no projection)
  int64_t dy_ld = 0;
  T* dh = nullptr;                   // [B, H] in/out (no projection)
  const T* dh_raw = nullptr;         // [B, H] with a projection
  T* h_raw = nullptr;                // [B, H] with a projection, written
  Acc<T>* dc = nullptr;              // [B, H] in/out
  T* dax = nullptr;                  // [B, G*H]
  T* dah = nullptr;                  // [B, G*H] when the cell splits them
  const T* drh = nullptr;            // two-phase
  T* rh = nullptr;                   // two-phase, written
};

__device__ __forceinline__ bool step_active(const int64_t* lengths, int64_t t, int64_t b) {
  return !lengths || t < lengths[b];
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <class Cell, class T, bool kTraining>
__global__ void forward_kernel(StepFwd<T> s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) {  // padded: state through, y = 0, saved = 0
    if (s.h_prev) s.h[idx] = s.h_prev[idx];
    if constexpr (Cell::kHasCellState) s.c[idx] = s.c_prev[idx];
    if (s.y) s.y[b * s.y_ld + j] = T(0.0f);
    if constexpr (kTraining)
      for (int k = 0; k < S; ++k) s.saved[b * S * H + k * H + j] = A(0);
    return;
  }
  A a_x[G], a_h[G], keep[S], hn, cn = A(0);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int64_t gj = g * H + j;
    a_x[g] = ld(s.ax, b * G * H + gj) + (s.b_ih ? ld(s.b_ih, gj) : A(0));
    a_h[g] = ld(s.ah, b * G * H + gj) + (s.b_hh ? ld(s.b_hh, gj) : A(0));
  }
  Cell::forward(a_x, a_h, Cell::kReadsHPrev ? ld(s.h_prev, idx) : A(0),
                Cell::kHasCellState ? s.c_prev[idx] : A(0), keep, hn, cn);
  st(s.h, idx, hn);
  if (s.y) st(s.y, b * s.y_ld + j, hn);
  if constexpr (Cell::kHasCellState) s.c[idx] = cn;
  if constexpr (kTraining)
#pragma unroll
    for (int k = 0; k < S; ++k) s.saved[b * S * H + k * H + j] = keep[k];
}

template <class Cell, class T>
__global__ void forward_gates_kernel(StepFwd<T> s) {  // two-phase, after the r/z GEMM
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) {
    s.h[idx] = s.h_prev[idx];
    s.y[b * s.y_ld + j] = T(0.0f);
    for (int k = 0; k < S; ++k) s.saved[b * S * H + k * H + j] = A(0);
    s.rh[idx] = T(0.0f);
    return;
  }
  A a_x[G], a_h[G], keep[S], rhj;
#pragma unroll
  for (int g = 0; g < 2; ++g) {
    const int64_t gj = g * H + j;
    a_x[g] = ld(s.ax, b * G * H + gj) + (s.b_ih ? ld(s.b_ih, gj) : A(0));
    a_h[g] = ld(s.ah, b * G * H + gj) + (s.b_hh ? ld(s.b_hh, gj) : A(0));
  }
  Cell::forward_gates(a_x, a_h, ld(s.h_prev, idx), keep, rhj);
  s.saved[b * S * H + 0 * H + j] = keep[0];
  s.saved[b * S * H + 1 * H + j] = keep[1];
  st(s.rh, idx, rhj);
}

template <class Cell, class T>
__global__ void forward_state_kernel(StepFwd<T> s) {  // two-phase, after the n GEMM on r⊙h
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) return;  // settled by forward_gates_kernel
  A a_x[G], a_h[G], keep[S], hn;
  a_x[2] = ld(s.ax, b * G * H + 2 * H + j) + (s.b_ih ? ld(s.b_ih, 2 * H + j) : A(0));
  a_h[2] = ld(s.ah, b * G * H + 2 * H + j) + (s.b_hh ? ld(s.b_hh, 2 * H + j) : A(0));
  keep[0] = s.saved[b * S * H + 0 * H + j];
  keep[1] = s.saved[b * S * H + 1 * H + j];
  Cell::forward_state(a_x, a_h, ld(s.h_prev, idx), keep, hn);
  s.saved[b * S * H + 2 * H + j] = keep[2];
  st(s.h, idx, hn);
  st(s.y, b * s.y_ld + j, hn);
}

// With a projection: h_next = active ? h_proj : h_prev; y = active ? h_proj : 0. [B, P]
template <class T>
__global__ void projection_select_kernel(int64_t B, int64_t P, int64_t t, const int64_t* lengths,
                                         const T* h_proj, const T* h_prev, T* h_next, T* y,
                                         int64_t y_ld) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P, j = idx - b * P;
  const bool on = step_active(lengths, t, b);
  h_next[idx] = on ? h_proj[idx] : h_prev[idx];
  y[b * y_ld + j] = on ? h_proj[idx] : T(0.0f);
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <class Cell, class T, bool kProjected>
__global__ void backward_kernel(StepBwd<T> s) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) {  // zero gradients; dh, dc pass through
    for (int g = 0; g < G; ++g) s.dax[b * G * H + g * H + j] = T(0.0f);
    if constexpr (Cell::kSplitRecurrentGrad)
      for (int g = 0; g < G; ++g) s.dah[b * G * H + g * H + j] = T(0.0f);
    if constexpr (kProjected) s.h_raw[idx] = T(0.0f);
    return;
  }
  A keep[S], d_x[G], d_h[G], dh_prev = A(0);
#pragma unroll
  for (int k = 0; k < S; ++k) keep[k] = s.saved[b * S * H + k * H + j];
  A dcj = Cell::kHasCellState ? s.dc[idx] : A(0);
  const A dht = kProjected ? ld(s.dh_raw, idx) : ld(s.dh, idx) + ld(s.dy, b * s.dy_ld + j);
  const A cc = Cell::kHasCellState ? s.c[idx] : A(0);
  Cell::backward(keep, Cell::kReadsHPrev ? ld(s.h_prev, idx) : A(0),
                 Cell::kHasCellState ? s.c_prev[idx] : A(0), cc, dht, dcj, d_x, d_h, dh_prev);
#pragma unroll
  for (int g = 0; g < G; ++g) st(s.dax, b * G * H + g * H + j, d_x[g]);
  if constexpr (Cell::kSplitRecurrentGrad)
#pragma unroll
    for (int g = 0; g < G; ++g) st(s.dah, b * G * H + g * H + j, d_h[g]);
  if constexpr (Cell::kHasCellState) s.dc[idx] = dcj;
  if constexpr (kProjected) {
    if constexpr (Cell::kCanProject) st(s.h_raw, idx, Cell::raw_output(keep, cc));
  } else {
    st(s.dh, idx, dh_prev);
  }
}

template <class Cell, class T>
__global__ void backward_state_kernel(StepBwd<T> s) {  // two-phase: dz, dn
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) {
    for (int g = 0; g < G; ++g) s.dax[b * G * H + g * H + j] = T(0.0f);
    s.rh[idx] = T(0.0f);
    return;
  }
  A keep[S], d_x[G], dh_prev;
#pragma unroll
  for (int k = 0; k < S; ++k) keep[k] = s.saved[b * S * H + k * H + j];
  Cell::backward_state(keep, ld(s.h_prev, idx), ld(s.dh, idx) + ld(s.dy, b * s.dy_ld + j), d_x,
                       dh_prev);
  st(s.dax, b * G * H + 1 * H + j, d_x[1]);
  st(s.dax, b * G * H + 2 * H + j, d_x[2]);
  st(s.dh, idx, dh_prev);
}

template <class Cell, class T>
__global__ void backward_gates_kernel(StepBwd<T> s) {  // two-phase: dr, after d(r⊙h)
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx - b * s.H, H = s.H;
  if (!step_active(s.lengths, s.t, b)) return;  // zeroed by backward_state_kernel
  A keep[S], d_x[G], dhj = ld(s.dh, idx), rhj;
  keep[0] = s.saved[b * S * H + 0 * H + j];
  Cell::backward_gates(keep, ld(s.h_prev, idx), ld(s.drh, idx), d_x, dhj, rhj);
  st(s.dax, b * G * H + 0 * H + j, d_x[0]);
  st(s.dh, idx, dhj);
  st(s.rh, idx, rhj);
}

// With a projection: d_hout = active ? dh + dy : 0, and the carried dh of active rows is used
// up (the recurrent GEMM rebuilds it). [B, P]
template <class T>
__global__ void projection_grad_kernel(int64_t B, int64_t P, int64_t t, const int64_t* lengths,
                                       T* dh, const T* dy, int64_t dy_ld, T* d_hout) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P, j = idx - b * P;
  if (!step_active(lengths, t, b)) {
    d_hout[idx] = T(0.0f);
    return;
  }
  st(d_hout, idx, ld(dh, idx) + ld(dy, b * dy_ld + j));
  dh[idx] = T(0.0f);
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------
template <class T>
__global__ void dropout_kernel(T* a, int64_t n, uint32_t threshold, double scale, uint64_t seed,
                               int layer) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  a[i] = dropout_bits(seed, layer, i) >= threshold ? T(ld(a, i) * Acc<T>(scale)) : T(0.0f);
}

// dst[t, b, :I] = t < lengths[b] ? src[(t*B + b)*ld + :I] : 0
template <class T>
__global__ void mask_padding_kernel(int64_t T_, int64_t B, int64_t I, const int64_t* lengths,
                                    const T* src, int64_t ld, T* dst) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T_ * B * I) return;
  const int64_t row = idx / I, i = idx - row * I, t = row / B, b = row - t * B;
  dst[idx] = t < lengths[b] ? src[row * ld + i] : T(0.0f);
}

template <class E>
__global__ void fill_kernel(E* a, int64_t n, E v) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) a[i] = v;
}

}  // namespace fastrnn::cuda
