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

  template <class T>
  FASTRNN_HD static void forward(const T* ax, const T* ah, T /*h_prev*/, T c_prev, T* saved,
                                 T& h, T& c) {
    const T i = sigmoid(ax[0] + ah[0]);
    const T f = sigmoid(ax[1] + ah[1]);
    const T g = tanh_act(ax[2] + ah[2]);
    const T o = sigmoid(ax[3] + ah[3]);
    c = f * c_prev + i * g;
    h = o * tanh_act(c);
    saved[0] = i;
    saved[1] = f;
    saved[2] = g;
    saved[3] = o;
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
