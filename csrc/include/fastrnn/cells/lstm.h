// SPDX-License-Identifier: MIT
// cells/lstm.h — LSTM gate maths (PyTorch/cuDNN gate order i, f, g, o). Host and device.
// The only place in C++ where c' = f⊙c + i⊙g and h' = o⊙tanh(c') are written.
#pragma once

#include "fastrnn/activations.h"

namespace fastrnn {

struct Lstm {
  static constexpr int kGates = 4;  // i, f, g, o
  static constexpr int kSaved = 4;  // i, f, g, o after their activations
  static constexpr bool kHasCellState = true;
  static constexpr bool kCanProject = true;
  static constexpr bool kReadsHPrev = false;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr bool kResetBeforeMatmul = false;
  static constexpr bool kTwoPassForward = true;  // activate, then update (cpu/pointwise.h)

  // The forward step in two halves: each gate's activation (g = 2 is tanh, the others σ),
  // then the state from the four (act = i, f, g, o). forward() is the two in a row; the CPU
  // runs them as two passes over a block of units.
  template <int Gate, class T>
  FASTRNN_HD static T activate(T a) { return Gate == 2 ? tanh_act(a) : sigmoid(a); }

  template <class T>
  FASTRNN_HD static void update(const T* act, T c_prev, T& h, T& c) {
    c = act[1] * c_prev + act[0] * act[2];
    h = act[3] * tanh_act(c);
  }

  template <class T>
  FASTRNN_HD static void forward(const T* ax, const T* ah, T /*h_prev*/, T c_prev, T* saved,
                                 T& h, T& c) {
    saved[0] = activate<0>(ax[0] + ah[0]);
    saved[1] = activate<1>(ax[1] + ah[1]);
    saved[2] = activate<2>(ax[2] + ah[2]);
    saved[3] = activate<3>(ax[3] + ah[3]);
    update(saved, c_prev, h, c);
  }

  template <class T>
  FASTRNN_HD static void backward(const T* saved, T /*h_prev*/, T c_prev, T c, T dh, T& dc,
                                  T* dax, T* dah, T& dh_prev) {
    const T i = saved[0], f = saved[1], g = saved[2], o = saved[3];
    const T tc = tanh_act(c);
    const T dct = dc + dh * o * dtanh_from_output(tc);  // dL/dc_t, both paths
    dax[0] = dct * g * dsigmoid_from_output(i);
    dax[1] = dct * c_prev * dsigmoid_from_output(f);
    dax[2] = dct * i * dtanh_from_output(g);
    dax[3] = dh * tc * dsigmoid_from_output(o);
    FASTRNN_UNROLL
    for (int k = 0; k < kGates; ++k) dah[k] = dax[k];
    dc = dct * f;
    dh_prev = T(0);
  }

  // h before the projection, o⊙tanh(c): recomputed by backward for dW_hr.
  template <class T>
  FASTRNN_HD static T raw_output(const T* saved, T c) { return saved[3] * tanh_act(c); }
};

}  // namespace fastrnn
