// SPDX-License-Identifier: MIT
// engine.h — the contract of a backend engine: one forward and one backward per call, for one
// layer and one direction, every cell, float and double on the CPU. Each pointer below says
// its shape, whether it is read or written, and what may alias what. Nothing here allocates
// memory the caller sees; the engine's scratch lives only for the duration of the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fastrnn/problem.h"

namespace fastrnn {

template <class T>
struct ForwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;
  bool reverse = false;            // process each sequence from its last valid step to t = 0
  const int64_t* lengths = nullptr;  // [B] valid steps per sequence, each in [0, T];
                                     // nullptr = all T. Steps t >= lengths[b] are padding:
                                     // y is 0 there and the state does not change.
  const T* x = nullptr;            // [T, B, I] read
  RnnWeights<T> w;                 // read
  const T* h0 = nullptr;           // [B, Hout] read
  const T* c0 = nullptr;           // [B, H] read; LSTM only, nullptr otherwise
  T* y = nullptr;                  // [T, B, Hout] written
  T* h_n = nullptr;                // [B, Hout] written: state after each sequence's last step
  T* c_n = nullptr;                // [B, H] written; LSTM only
  T* reserve = nullptr;            // [reserve_elements(cell, shape)] written when training;
                                   // nullptr = inference (nothing per step is kept). Pass it
                                   // unchanged to backward; it must outlive that call.
};

template <class T>
struct BackwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;                  // all four as given to forward
  bool reverse = false;
  const int64_t* lengths = nullptr;
  const T* x = nullptr;            // [T, B, I] read: the forward's input (for dW_ih)
  RnnWeights<T> w;                 // read: the forward's weights
  const T* reserve = nullptr;      // read: written by the training forward
  const T* dy = nullptr;           // [T, B, Hout] read; padded steps are ignored
  const T* dh_n = nullptr;         // [B, Hout] read; nullptr = zeros
  const T* dc_n = nullptr;         // [B, H] read; LSTM only; nullptr = zeros
  T* dx = nullptr;                 // [T, B, I] written (0 on padded steps)
  T* dh0 = nullptr;                // [B, Hout] written
  T* dc0 = nullptr;                // [B, H] written; LSTM only
  RnnWeightGrads<T> dw;            // written
};

// Elements of T the training reserve needs for this cell and shape.
int64_t reserve_elements(CellKind cell, const RnnShape& shape);

// Gates per cell (G): 4, 3, 3, 1, 1.
int gate_count(CellKind cell);

namespace cpu {

// Run on the calling thread (BLAS may use its own threads); throw std::invalid_argument for
// sizes the engine cannot index and std::bad_alloc when scratch memory cannot be had.
template <class T> void forward(const ForwardParams<T>& p);
template <class T> void backward(const BackwardParams<T>& p);

// What the CPU build uses, for fastrnn.backends(): the pointwise kernels' instruction set
// ("avx2+fma" or "baseline"), the BLAS's own description, and thread control.
std::string simd_level();
std::string blas_info();
int num_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace fastrnn
