// SPDX-License-Identifier: MIT
// activations.h — sigmoid, tanh and relu with their derivatives written from the output, for
// float and double, host and device. Not a general maths library: only what the cells use.
//
// float: exp and tanh are branch-free polynomial evaluations (Cephes-style range reduction)
// so that the compiler vectorises the pointwise loops that call them; measured against
// float64 over [-100, 100] (step 1e-4) their relative error is at most 1.8e-7 (exp 8e-8,
// tanh 1.3e-7, sigmoid 1.8e-7) and they are within 2 ulps of the nearest float everywhere,
// σ near 1 and subnormal results included (tests/test_engine.py), NaN propagates
// (NaN in gives NaN out), ±inf saturate to the limits, and huge arguments do not trap or
// warn. double: the C library's exp/tanh (the double path is for checking, not for speed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastrnn/platform.h"

namespace fastrnn {

FASTRNN_HD float bits_to_float(std::int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// 2^k for integer k in [-126, 127], built from its exponent bits.
FASTRNN_HD float exp2i(std::int32_t k) { return bits_to_float((k + 127) << 23); }

// exp(x) = 2^n · exp(r), n = round(x / ln 2), r = x − n·ln 2 ∈ [−ln2/2, ln2/2], exp(r) by a
// degree-6 polynomial. 2^n is applied as two factors so results down to the subnormals are
// right; x is clamped to [−104, 89] first (beyond it the result is 0 or inf anyway).
FASTRNN_HD float exp_f32(float x) {
  const bool nan = !(x == x);
  float xc = nan ? 0.0f : x;
  xc = xc < -104.0f ? -104.0f : xc;
  xc = xc > 89.0f ? 89.0f : xc;
  // round to nearest by the 1.5·2^23 trick (exact for |v| < 2^22, no integer conversion of x)
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;  // ln 2 split in two so n·ln 2 is exact to float precision
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const std::int32_t k = static_cast<std::int32_t>(n);  // in [-150, 129]
  const std::int32_t k1 = k / 2;
  const float result = p * exp2i(k1) * exp2i(k - k1);
  return nan ? x : result;
}

// ---------------------------------------------------------------------------------------
// Activations. Each derivative is written from the activation's output y, which is what the
// cells save: no pre-activation is kept for backward.
// ---------------------------------------------------------------------------------------

// σ(x) from the small side: s = σ(−|x|) = e/(1 + e), e = exp(−|x|) ≤ 1, is accurate to
// ~1e-7 relative however small, and σ(|x|) = 1 − s is then correctly rounded near 1. (The
// textbook 1/(1 + e^−x) rounds 1 + e first: for x > 16 it lands a whole ulp below the
// nearest float to σ(x), which doubles σ' = σ(1 − σ) in saturated gates.) NaN: e is NaN.
FASTRNN_HD float sigmoid(float x) {
  const float e = exp_f32(-std::fabs(x));
  const float s = e / (1.0f + e);
  return x < 0.0f ? s : 1.0f - s;
}
FASTRNN_HD double sigmoid(double x) {
  const double e = std::exp(-std::fabs(x));
  const double s = e / (1.0 + e);
  return x < 0.0 ? s : 1.0 - s;
}

// tanh: for |x| < 0.625 the odd polynomial x + x³·P(x²) (no cancellation near 0); else
// 1 − 2/(e^{2|x|} + 1) with the sign of x. Both are evaluated and one is selected.
FASTRNN_HD float tanh_act(float x) {
  const float ax = std::fabs(x);
  const float s = x * x;
  float p = -5.70498872745e-3f;
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const float small = x + x * s * p;
  const float large = std::copysign(1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f), x);
  return ax < 0.625f ? small : large;
}
FASTRNN_HD double tanh_act(double x) { return std::tanh(x); }

// relu(NaN) = NaN: written as "x < 0 ? 0 : x" so the comparison with NaN keeps x.
template <class T>
FASTRNN_HD T relu(T x) { return x < T(0) ? T(0) : x; }

// σ'(a) = σ(a)·(1 − σ(a))
template <class T>
FASTRNN_HD T dsigmoid_from_output(T s) { return s * (T(1) - s); }
// tanh'(a) = 1 − tanh²(a)
template <class T>
FASTRNN_HD T dtanh_from_output(T t) { return T(1) - t * t; }
// relu'(a) = 1 if a > 0 else 0 (0 at a = 0, as torch); y > 0 exactly when a > 0.
template <class T>
FASTRNN_HD T drelu_from_output(T y) { return y > T(0) ? T(1) : T(0); }

}  // namespace fastrnn
