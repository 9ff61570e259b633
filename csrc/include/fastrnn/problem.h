// SPDX-License-Identifier: MIT
// problem.h — the structs every backend shares: sizes (RnnShape), weights of one layer and
// direction (RnnWeights / RnnWeightGrads), and the layout of the training reserve that forward
// hands to backward (ReserveLayout). Plain data, no behaviour beyond size arithmetic.
#pragma once

#include <cstdint>

namespace fastrnn {

// Which cell a runtime call is for; the engine entry turns it into a Cell type once.
enum class CellKind : int {
  kLstm = 0,
  kGru = 1,             // linear_before_reset=True (cuDNN/PyTorch)
  kGruResetBefore = 2,  // linear_before_reset=False (ONNX default, Keras reset_after=False)
  kRnnTanh = 3,
  kRnnRelu = 4,
};

struct RnnShape {
  int64_t T = 0;  // time steps
  int64_t B = 0;  // batch
  int64_t I = 0;  // input size
  int64_t H = 0;  // hidden size
  int64_t P = 0;  // projection size, 0 = none
  int64_t hout() const { return P > 0 ? P : H; }  // size of h as output and as fed back
};

// One layer and direction, PyTorch layout, all dense row-major. Read only.
template <class T>
struct RnnWeights {
  const T* w_ih = nullptr;  // [G*H, I]
  const T* w_hh = nullptr;  // [G*H, Hout]
  const T* b_ih = nullptr;  // [G*H], nullptr = no biases (then b_hh is nullptr too)
  const T* b_hh = nullptr;  // [G*H]
  const T* w_hr = nullptr;  // [P, H], nullptr when P == 0
};

// Gradients with the same shapes; written (not accumulated). Bias/projection pointers are
// nullptr exactly when the corresponding weight is.
template <class T>
struct RnnWeightGrads {
  T* w_ih = nullptr;
  T* w_hh = nullptr;
  T* b_ih = nullptr;
  T* b_hh = nullptr;
  T* w_hr = nullptr;
};

// The training reserve of one layer and direction (cuDNN's "reserve space"): exactly what
// backward needs, nothing per step that could be recomputed cheaply.
//   saved  [T, B, S*H]   S = Cell::kSaved activations per hidden unit
//   h_hist [T+1, B, Hout] the h state around every step, in time order: for the forward
//                         direction h_hist[t] is the state before step t (h_hist[0] = h0);
//                         for the reverse direction h_hist[t+1] is the state before step t
//                         (h_hist[T] = h0). Either way the T states read by the steps are one
//                         contiguous block, so dW_hh is one GEMM.
//   c_hist [T+1, B, H]    the same for c (cells with kHasCellState only)
struct ReserveLayout {
  int64_t saved = 0, h_hist = 0, c_hist = 0, total = 0;  // offsets and size, in elements

  static ReserveLayout make(const RnnShape& s, int saved_per_unit, bool has_cell_state) {
    ReserveLayout r;
    r.saved = 0;
    r.h_hist = s.T * s.B * saved_per_unit * s.H;
    r.c_hist = r.h_hist + (s.T + 1) * s.B * s.hout();
    r.total = r.c_hist + (has_cell_state ? (s.T + 1) * s.B * s.H : 0);
    return r;
  }
};

}  // namespace fastrnn
