// SPDX-License-Identifier: MIT
// cuda/engine.h — the CUDA backend's contract: forward_stack/backward_stack with the meaning of
// fastrnn/engine.h's StackForwardParams/StackBackwardParams, every pointer in device memory of
// the current device (lengths too), work queued on `stream`, nothing synchronised. T is float,
// double, __half or __nv_bfloat16; the reserve is an untyped byte buffer of
// stack_reserve_bytes<T>(...) bytes (cast to T* in the params), laid out as ReserveBytes below.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastrnn/engine.h"

namespace fastrnn::cuda {

// One layer-direction's reserve in bytes, each part 256-byte aligned. Saved activations and
// c are kept in the accumulation type (float, or double for double); h in T, since the GEMMs
// read it.
struct ReserveBytes {
  int64_t saved = 0, c_hist = 0, h_hist = 0, total = 0;

  template <class T>
  static ReserveBytes make(const RnnShape& s, int saved_per_unit, bool has_cell_state) {
    const int64_t acc = sizeof(T) == 8 ? 8 : 4;
    auto align = [](int64_t n) { return (n + 255) / 256 * 256; };
    ReserveBytes r;
    r.saved = 0;
    r.c_hist = align(s.T * s.B * saved_per_unit * s.H * acc);
    r.h_hist = r.c_hist + align(has_cell_state ? (s.T + 1) * s.B * s.H * acc : 0);
    r.total = align(r.h_hist + (s.T + 1) * s.B * s.hout() * int64_t(sizeof(T)));
    return r;
  }
};

// The small-batch persistent kernels serve B <= 16 and H <= max_hidden (default 256) where
// they fit; 0 disables them. Tests and the benchmark compare both paths through this.
void set_persistent(int64_t max_hidden);
int64_t persistent_max_hidden();

template <class T> int64_t stack_reserve_bytes(CellKind cell, const RnnShape& s, int L, int D);
template <class T> void forward_stack(const StackForwardParams<T>& p, cudaStream_t stream);
template <class T> void backward_stack(const StackBackwardParams<T>& p, cudaStream_t stream);

}  // namespace fastrnn::cuda
