// SPDX-License-Identifier: MIT
// stack.h — layers and directions, written once for every backend. A backend's
// forward_stack/backward_stack decides where things live (reserve slices, scratch) and how a
// layer-direction and a dropout mask run; these two templates own the order: layer by layer,
// directions side by side in one [T, B, D*Hout] buffer that is the next layer's input,
// inverted dropout on that input when training, and in backward the same in reverse with the
// directions' dx added up and the masks applied again (they are recomputed, dropout.h).
#pragma once

#include <cstdint>

#include "fastrnn/engine.h"
#include "fastrnn/platform.h"

namespace fastrnn {

inline void check_stack(int L, int D, double dropout) {
  FASTRNN_CHECK(L >= 1, "num_layers: expected >= 1, got ", L);
  FASTRNN_CHECK(D == 1 || D == 2, "directions: expected 1 or 2, got ", D);
  FASTRNN_CHECK(dropout >= 0.0 && dropout <= 1.0, "dropout: expected a value in [0, 1], got ",
                dropout);
}

// reserve_of(k)    the reserve of layer-direction k (nullptr for inference)
// inputs           training: the inputs of layers 1..L-1, [L-1][T, B, D*Hout]; else nullptr
// between          inference with L > 1: scratch [2][T, B, D*Hout]; else unused
// run_layer(f)     runs one ForwardParams<T>
// dropout(a, n, l) applies layer l's mask to a[0..n) in place
template <class T, class ReserveOf, class RunLayer, class Dropout>
void run_forward_stack(const StackForwardParams<T>& p, ReserveOf reserve_of, T* inputs,
                       T* between, RunLayer run_layer, Dropout dropout) {
  check_stack(p.L, p.D, p.dropout);
  const RnnShape& s = p.shape;
  const int L = p.L, D = p.D;
  const int64_t B = s.B, H = s.H, Ho = s.hout(), DH = D * Ho, TBDH = s.T * B * DH;
  const bool training = p.reserve != nullptr;
  const T* in = p.x;
  int64_t ld_in = s.I;
  for (int l = 0; l < L; ++l) {
    T* out = l == L - 1 ? p.y : training ? inputs + l * TBDH : between + (l & 1) * TBDH;
    for (int d = 0; d < D; ++d) {
      const int64_t k = int64_t(l) * D + d;
      ForwardParams<T> f;
      f.cell = p.cell;
      f.shape = s;
      f.shape.I = l == 0 ? s.I : DH;
      f.reverse = d == 1;
      f.lengths = p.lengths;
      f.x = in;
      f.ldx = ld_in;
      f.w = p.w[k];
      f.h0 = p.h0 + k * B * Ho;
      f.c0 = p.c0 ? p.c0 + k * B * H : nullptr;
      f.y = out + d * Ho;
      f.ldy = DH;
      f.h_n = p.h_n + k * B * Ho;
      f.c_n = p.c_n ? p.c_n + k * B * H : nullptr;
      f.reserve = reserve_of(k);
      f.packed = p.packed ? p.packed + k : nullptr;
      run_layer(f);
    }
    if (training && p.dropout > 0.0 && l < L - 1) dropout(out, TBDH, l);
    in = out;
    ld_in = DH;
  }
}

// reserve_of(k)    as above; inputs as written by the forward
// grads            with L > 1: scratch [2][T, B, D*Hout] for dL/d(input of layer l > 0)
template <class T, class ReserveOf, class RunLayer, class Dropout>
void run_backward_stack(const StackBackwardParams<T>& p, ReserveOf reserve_of, const T* inputs,
                        T* grads, RunLayer run_layer, Dropout dropout) {
  check_stack(p.L, p.D, p.dropout);
  FASTRNN_CHECK(p.reserve != nullptr, "saved: backward needs the reserve of a training forward");
  const RnnShape& s = p.shape;
  const int L = p.L, D = p.D;
  const int64_t B = s.B, H = s.H, Ho = s.hout(), DH = D * Ho, TBDH = s.T * B * DH;
  const T* d_out = p.dy;  // dL/d(output of layer l), [T, B, D*Hout]
  for (int l = L - 1; l >= 0; --l) {
    T* d_in = l == 0 ? p.dx : grads + (l & 1) * TBDH;  // layer l reads one, writes the other
    for (int d = 0; d < D; ++d) {
      const int64_t k = int64_t(l) * D + d;
      BackwardParams<T> b;
      b.cell = p.cell;
      b.shape = s;
      b.shape.I = l == 0 ? s.I : DH;
      b.reverse = d == 1;
      b.lengths = p.lengths;
      b.x = l == 0 ? p.x : inputs + (l - 1) * TBDH;
      b.ldx = b.shape.I;
      b.w = p.w[k];
      b.reserve = reserve_of(k);
      b.dy = d_out + d * Ho;
      b.lddy = DH;
      b.dh_n = p.dh_n ? p.dh_n + k * B * Ho : nullptr;
      b.dc_n = p.dc_n ? p.dc_n + k * B * H : nullptr;
      b.dx = d_in;
      b.accumulate_dx = d > 0;  // both directions read the same input
      b.dh0 = p.dh0 + k * B * Ho;
      b.dc0 = p.dc0 ? p.dc0 + k * B * H : nullptr;
      b.dw = p.dw[k];
      run_layer(b);
    }
    if (l > 0 && p.dropout > 0.0) dropout(d_in, TBDH, l - 1);
    d_out = d_in;
  }
}

}  // namespace fastrnn
