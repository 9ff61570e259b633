// SPDX-License-Identifier: MIT
// cells/rnn.h — Elman RNN maths, h' = act(W_ih x + b_ih + W_hh h + b_hh), act ∈ {tanh, relu}.
// Host and device. The activation is a template parameter, so each is its own cell type.
#pragma once

#include "fastrnn/activations.h"

namespace fastrnn {

struct TanhAct {
  template <class T> FASTRNN_HD static T f(T a) { return tanh_act(a); }
  template <class T> FASTRNN_HD static T df_from_output(T y) { return dtanh_from_output(y); }
};

struct ReluAct {
  template <class T> FASTRNN_HD static T f(T a) { return relu(a); }
  template <class T> FASTRNN_HD static T df_from_output(T y) { return drelu_from_output(y); }
};

template <class Act>
struct Rnn {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 1;  // the output act(a): both derivatives are written from it
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kReadsHPrev = false;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr bool kResetBeforeMatmul = false;
  static constexpr bool kTwoPassForward = false;

  template <class T>
  FASTRNN_HD static void forward(const T* ax, const T* ah, T /*h_prev*/, T /*c_prev*/,
                                 T* saved, T& h, T& /*c*/) {
    h = Act::f(ax[0] + ah[0]);
    saved[0] = h;
  }

  template <class T>
  FASTRNN_HD static void backward(const T* saved, T /*h_prev*/, T /*c_prev*/, T /*c*/, T dh,
                                  T& /*dc*/, T* dax, T* dah, T& dh_prev) {
    dax[0] = dh * Act::df_from_output(saved[0]);
    dah[0] = dax[0];
    dh_prev = T(0);
  }
};

using RnnTanh = Rnn<TanhAct>;
using RnnRelu = Rnn<ReluAct>;

}  // namespace fastrnn
