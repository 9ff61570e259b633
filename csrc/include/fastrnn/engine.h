// SPDX-License-Identifier: MIT
// engine.h — the contract of a backend engine: one forward and one backward per call, for one
// layer and one direction, every cell, float and double on the CPU. Each pointer below says
// its shape, whether it is read or written, and what may alias what. Nothing here allocates
// memory the caller sees; the engine's scratch lives only for the duration of the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "fastrnn/problem.h"

namespace fastrnn {

// The per-step weights of one layer-direction in the CPU engine's packed form (the panels of
// cpu/panel_gemm.h), kept between calls by a prepared network (fastrnn.prepare). There are
// two forms: stacked ([W_ih | W_hh] in one set of panels, for batches of 4 rows and more, and
// for one-step calls) and apart (W_hh alone, the input projection then being one GEMM over
// many steps). A forward packs the form it needs on its first call, and again only when the
// thread count it was packed for changes; later calls read it. Owned by the caller, who must
// not run two calls with the same PackedWeights at once, nor change the weights it was packed
// from.
struct PackedWeights {
  struct Form {
    void* data = nullptr;  // [floats] of the call's dtype, 64-byte aligned
    size_t capacity = 0;   // bytes allocated for data
    int64_t floats = 0;
    int threads = 0;       // what it was packed for
    bool ready = false;
  };
  Form forms[2];           // [0] apart, [1] stacked
  // What the panels keep of float32 weights (a prepared network's weights_dtype):
  // kBf16, weights whose values are all bfloat16 values: 16 bits each; kInt8, weights whose
  // every row is q·s, q integers in [-127, 127] and s = max|row| / 127 (rounded to float32):
  // q in 8 bits, s a float per row (cpu/panel_gemm.h).
  enum class Narrow { kNone, kBf16, kInt8 };
  Narrow narrow = Narrow::kNone;
  void release();          // frees both (also done by the destructor)
  PackedWeights() = default;
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;
  PackedWeights(PackedWeights&& o) noexcept { *this = std::move(o); }
  PackedWeights& operator=(PackedWeights&& o) noexcept {
    if (this != &o) {
      release();
      for (int k = 0; k < 2; ++k) forms[k] = o.forms[k], o.forms[k] = Form{};
      narrow = o.narrow;
    }
    return *this;
  }
  ~PackedWeights() { release(); }
};

// Scratch memory kept between calls by a prepared network: while a call runs with it, the
// engine's scratch requests are served from it one after another, and a call that asked for
// more than it held makes it grow (once, after the call) to what was asked. Calls of the same
// shape then allocate nothing. One call at a time; owned by the caller.
struct Workspace {
  void* data = nullptr;  // [capacity] bytes, 64-byte aligned
  size_t capacity = 0;
  size_t used = 0;       // during a call: bytes handed out from data
  size_t wanted = 0;     // during a call: bytes asked for in all
  void release();        // frees data (also done by the destructor)
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { release(); }
};

template <class T>
struct ForwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;
  bool reverse = false;            // process each sequence from its last valid step to t = 0
  const int64_t* lengths = nullptr;  // [B] valid steps per sequence, each in [0, T];
                                     // nullptr = all T. Steps t >= lengths[b] are padding:
                                     // y is 0 there and the state does not change.
  const T* x = nullptr;            // [T, B, I] read; rows (t, b) ldx apart
  int64_t ldx = 0;                 // row stride of x, >= I (0 = I)
  RnnWeights<T> w;                 // read
  const T* h0 = nullptr;           // [B, Hout] read
  const T* c0 = nullptr;           // [B, H] read; LSTM only, nullptr otherwise
  T* y = nullptr;                  // [T, B, Hout] written; rows ldy apart (a bidirectional
                                   // layer writes each direction into half of one buffer)
  int64_t ldy = 0;                 // row stride of y, >= Hout (0 = Hout)
  T* h_n = nullptr;                // [B, Hout] written: state after each sequence's last step
  T* c_n = nullptr;                // [B, H] written; LSTM only
  T* reserve = nullptr;            // [reserve_elements(cell, shape)] written when training;
                                   // nullptr = inference (nothing per step is kept). Pass it
                                   // unchanged to backward; it must outlive that call.
  PackedWeights* packed = nullptr;  // read/written: w packed once and kept (see above);
                                    // nullptr = packed for this call alone, or not at all
};

template <class T>
struct BackwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;                  // all four as given to forward
  bool reverse = false;
  const int64_t* lengths = nullptr;
  const T* x = nullptr;            // [T, B, I] read: the forward's input (for dW_ih)
  int64_t ldx = 0;                 // row stride of x and of dx, >= I (0 = I)
  RnnWeights<T> w;                 // read: the forward's weights
  const T* reserve = nullptr;      // read: written by the training forward
  const T* dy = nullptr;           // [T, B, Hout] read; padded steps are ignored
  int64_t lddy = 0;                // row stride of dy, >= Hout (0 = Hout)
  const T* dh_n = nullptr;         // [B, Hout] read; nullptr = zeros
  const T* dc_n = nullptr;         // [B, H] read; LSTM only; nullptr = zeros
  T* dx = nullptr;                 // [T, B, I] written (0 on padded steps), rows ldx apart
  bool accumulate_dx = false;      // dx += instead of dx = (both directions of a layer read
                                   // the same input, so their dx add up)
  T* dh0 = nullptr;                // [B, Hout] written
  T* dc0 = nullptr;                // [B, H] written; LSTM only
  RnnWeightGrads<T> dw;            // written
};

// A whole network as torch.nn.LSTM/GRU/RNN runs it: L layers, D directions each (direction 1
// runs reversed), the directions' outputs side by side in one [T, B, D*Hout] buffer that is
// the next layer's input, inverted dropout on that input when training. Per layer-direction
// k = l*D + d the arguments are those of ForwardParams/BackwardParams.
template <class T>
struct StackForwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;                  // I is the input size of layer 0
  int L = 1, D = 1;
  double dropout = 0.0;            // probability of dropping an element of a layer's input
                                   // (layers 1..L-1), applied only when training
  uint64_t seed = 0;               // dropout masks are a function of (seed, layer, element):
                                   // see dropout.h
  const int64_t* lengths = nullptr;  // [B] or nullptr, as ForwardParams
  const T* x = nullptr;            // [T, B, I] read
  const RnnWeights<T>* w = nullptr;  // [L*D] read
  const T* h0 = nullptr;           // [L*D, B, Hout] read
  const T* c0 = nullptr;           // [L*D, B, H] read; LSTM only
  T* y = nullptr;                  // [T, B, D*Hout] written
  T* h_n = nullptr;                // [L*D, B, Hout] written
  T* c_n = nullptr;                // [L*D, B, H] written; LSTM only
  T* reserve = nullptr;            // [stack_reserve_elements(...)] written when training;
                                   // nullptr = inference. Pass unchanged to backward.
  PackedWeights* packed = nullptr;  // [L*D] read/written, as ForwardParams; nullptr = none
  Workspace* workspace = nullptr;   // read/written: the call's scratch (see above); nullptr =
                                    // scratch allocated for this call
};

template <class T>
struct StackBackwardParams {
  CellKind cell = CellKind::kLstm;
  RnnShape shape;                  // cell … reserve: exactly as given to the forward
  int L = 1, D = 1;
  double dropout = 0.0;
  uint64_t seed = 0;
  const int64_t* lengths = nullptr;
  const T* x = nullptr;            // [T, B, I] read
  const RnnWeights<T>* w = nullptr;  // [L*D] read
  const T* reserve = nullptr;      // read
  const T* dy = nullptr;           // [T, B, D*Hout] read
  const T* dh_n = nullptr;         // [L*D, B, Hout] read; nullptr = zeros
  const T* dc_n = nullptr;         // [L*D, B, H] read; LSTM only; nullptr = zeros
  T* dx = nullptr;                 // [T, B, I] written
  T* dh0 = nullptr;                // [L*D, B, Hout] written
  T* dc0 = nullptr;                // [L*D, B, H] written; LSTM only
  const RnnWeightGrads<T>* dw = nullptr;  // [L*D] written
};

// Elements of T the training reserve of one layer-direction needs for this cell and shape.
int64_t reserve_elements(CellKind cell, const RnnShape& shape);

// Elements of the training reserve of a whole stack: L*D layer-direction reserves, then the
// inputs of layers 1..L-1 ([T, B, D*Hout] each, after dropout), which their dW_ih needs.
int64_t stack_reserve_elements(CellKind cell, const RnnShape& shape, int L, int D);

// Gates per cell (G): 4, 3, 3, 1, 1.
int gate_count(CellKind cell);

namespace cpu {

// Run on the engine's own thread pool (cpu/threads.h; the calling thread takes part, BLAS runs
// single-threaded inside it) and return when done; throw std::invalid_argument for sizes the
// engine cannot index and std::bad_alloc when scratch memory cannot be had (both before any
// thread starts work). Safe to call from several threads at once.
template <class T> void forward(const ForwardParams<T>& p);
template <class T> void backward(const BackwardParams<T>& p);
template <class T> void forward_stack(const StackForwardParams<T>& p);
template <class T> void backward_stack(const StackBackwardParams<T>& p);

// What the CPU build uses, for fastrnn.backends(): the pointwise kernels' instruction set
// ("avx2+fma" or "baseline"), the BLAS's own description, and the pool's thread count.
std::string simd_level();
std::string blas_info();
int num_threads();
void set_num_threads(int n);
// GFLOP/s of float32 multiply-adds on the pool's threads at once, from a loop of nothing else
// (the best of three timings, ~0.2 s in all): the machine's compute peak, which no GEMM can
// pass. 0 where the kernels have no FMA (the baseline table).
double fma_peak_gflops();

}  // namespace cpu
}  // namespace fastrnn
