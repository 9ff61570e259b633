// SPDX-License-Identifier: MIT
// cells/gru.h — GRU gate maths (PyTorch/cuDNN gate order r, z, n). Host and device.
//
//   r = σ(W_ir x + b_ir + W_hr h + b_hr)        z = σ(W_iz x + b_iz + W_hz h + b_hz)
//   Gru (linear_before_reset, cuDNN/PyTorch/Keras reset_after=True, 1406.1078v1 as cuDNN):
//     n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))
//   GruResetBefore (ONNX linear_before_reset=0, Keras reset_after=False):
//     n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn)
//   h' = (1 − z)⊙n + z⊙h, written n + z⊙(h − n)
#pragma once

#include "fastrnn/activations.h"

namespace fastrnn {

struct Gru {
  static constexpr int kGates = 3;  // r, z, n
  static constexpr int kSaved = 4;  // r, z, n and W_hn h + b_hn (needed for dr)
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kReadsHPrev = true;
  static constexpr bool kSplitRecurrentGrad = true;  // d(W_hn h + b_hn) = d(a_n)⊙r
  static constexpr bool kResetBeforeMatmul = false;
  static constexpr bool kTwoPassForward = false;

  template <class T>
  FASTRNN_HD static void forward(const T* ax, const T* ah, T h_prev, T /*c_prev*/, T* saved,
                                 T& h, T& /*c*/) {
    const T r = sigmoid(ax[0] + ah[0]);
    const T z = sigmoid(ax[1] + ah[1]);
    const T n = tanh_act(ax[2] + r * ah[2]);
    h = n + z * (h_prev - n);
    saved[0] = r;
    saved[1] = z;
    saved[2] = n;
    saved[3] = ah[2];
  }

  template <class T>
  FASTRNN_HD static void backward(const T* saved, T h_prev, T /*c_prev*/, T /*c*/, T dh,
                                  T& /*dc*/, T* dax, T* dah, T& dh_prev) {
    const T r = saved[0], z = saved[1], n = saved[2], hn = saved[3];
    const T dan = dh * (T(1) - z) * dtanh_from_output(n);  // dL/d(pre-activation of n)
    dax[0] = dan * hn * dsigmoid_from_output(r);
    dax[1] = dh * (h_prev - n) * dsigmoid_from_output(z);
    dax[2] = dan;
    dah[0] = dax[0];
    dah[1] = dax[1];
    dah[2] = dan * r;
    dh_prev = dh * z;
  }
};

// Two-phase cell: the engine runs
//   forward:  GEMM rows [0, 2H) → forward_gates (r, z, r⊙h) → GEMM rows [2H, 3H) on r⊙h →
//             forward_state (n, h')
//   backward: backward_state (dz, dn) → GEMM d(r⊙h) = da_n·W_hn → backward_gates (dr) →
//             GEMM of rows [0, 2H)
struct GruResetBefore {
  static constexpr int kGates = 3;  // r, z, n
  static constexpr int kSaved = 3;  // r, z, n
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kReadsHPrev = true;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr bool kResetBeforeMatmul = true;
  static constexpr bool kTwoPassForward = false;

  // ah[0..1] valid; writes r, z and rh = r⊙h_prev, the input of the second GEMM.
  template <class T>
  FASTRNN_HD static void forward_gates(const T* ax, const T* ah, T h_prev, T* saved, T& rh) {
    const T r = sigmoid(ax[0] + ah[0]);
    saved[0] = r;
    saved[1] = sigmoid(ax[1] + ah[1]);
    rh = r * h_prev;
  }

  // ah[2] = W_hn (r⊙h) + b_hn.
  template <class T>
  FASTRNN_HD static void forward_state(const T* ax, const T* ah, T h_prev, T* saved, T& h) {
    const T z = saved[1];
    const T n = tanh_act(ax[2] + ah[2]);
    saved[2] = n;
    h = n + z * (h_prev - n);
  }

  // Gradients of z and of n's pre-activation (both sides: they are one sum), and z·dh.
  template <class T>
  FASTRNN_HD static void backward_state(const T* saved, T h_prev, T dh, T* dax, T& dh_prev) {
    const T z = saved[1], n = saved[2];
    dax[1] = dh * (h_prev - n) * dsigmoid_from_output(z);
    dax[2] = dh * (T(1) - z) * dtanh_from_output(n);
    dh_prev = dh * z;
  }

  // drh = dL/d(r⊙h) = da_n·W_hn. Gives dr's pre-activation gradient, adds r·drh to dh_prev,
  // and recomputes rh = r⊙h_prev (the right factor of dW_hn).
  template <class T>
  FASTRNN_HD static void backward_gates(const T* saved, T h_prev, T drh, T* dax, T& dh_prev,
                                        T& rh) {
    const T r = saved[0];
    dax[0] = drh * h_prev * dsigmoid_from_output(r);
    dh_prev += drh * r;
    rh = r * h_prev;
  }
};

}  // namespace fastrnn
