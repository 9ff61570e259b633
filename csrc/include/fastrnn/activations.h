// SPDX-License-Identifier: MIT
// activations.h — sigmoid, tanh and relu with their derivatives written from the output, for
// float and double, host and device. Not a general maths library: only what the cells use.
//
// float: exp and tanh are branch-free polynomial evaluations (Cephes-style range reduction)
// so that the compiler vectorises the pointwise loops that call them; measured against
// float64 over [-100, 100] (step 1e-4) their relative error is at most 1.8e-7 (exp 8e-8,
// tanh 1.5e-7, sigmoid 1.8e-7) and they are within 2 ulps of the nearest float everywhere,
// σ near 1 and subnormal results included (tests/test_engine.py), NaN propagates
// (NaN in gives NaN out), ±inf saturate to the limits, and huge arguments do not trap or
// warn. double: the C library's exp/tanh (the double path is for checking, not for speed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastrnn/platform.h"

namespace fastrnn {

FASTRNN_HD float bits_to_float(std::uint32_t i) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}
FASTRNN_HD std::uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// exp(x) = 2^k · (1 + q), k = round(x / ln 2), r = x − k·ln 2 ∈ [−ln2/2, ln2/2], q = expm1(r)
// = r + r²·P(r) by a degree-5 P (no 1 + ... inside, so q keeps its relative accuracy near 0:
// tanh's small arguments need it). k comes back as the low bits of the rounding sum (k mod
// 2^32): it is rounded by adding 1.5·2^23 (exact for |x / ln 2| < 2^22) and read from that
// sum's bits, with no float-to-integer conversion: a NaN x gives a NaN q, whatever k holds,
// so NaN needs no case of its own (and no conversion of NaN, undefined in C++).
struct ExpParts {
  float q;
  std::uint32_t k;
};
FASTRNN_HD ExpParts expm1_parts(float x) {
  constexpr float kShift = 12582912.0f;           // 1.5 · 2^23
  constexpr std::uint32_t kShiftBits = 0x4B400000u;
  const float sum = x * 1.44269504088896341f + kShift;
  const float n = sum - kShift;
  float r = x - n * 0.693359375f;  // ln 2 split in two so n·ln 2 is exact to float precision
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return {p * (r * r) + r, float_to_bits(sum) - kShiftBits};
}

// exp(x) for x <= 0 (or NaN), subnormal results included: x is clamped at −104 (below, the
// result rounds to 0), so k ∈ [−150, 0]; (1 + q)·2^(k+64) is a normal float, and the product
// with 2^−64 rounds once, into the subnormals where the result lies there. NaN: q is.
// (1 + q)·s is written q·s + s, s = 2^(k+64): q·s is exact, so the one rounding is that of
// 1 + q, with or without contraction into an FMA, and the FMA saves an instruction (the same
// bits for all 2^32 inputs of sigmoid, AVX2+FMA and baseline builds).
FASTRNN_HD float exp_nonpositive(float x) {
  const ExpParts e = expm1_parts(x < -104.0f ? -104.0f : x);  // NaN passes the comparison
  const float s = bits_to_float((e.k + 191u) << 23);
  return (e.q * s + s) * 0x1p-64f;
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
  const float e = exp_nonpositive(-std::fabs(x));
  const float s = e / (1.0f + e);
  return x < 0.0f ? s : 1.0f - s;
}
FASTRNN_HD double sigmoid(double x) {
  const double e = std::exp(-std::fabs(x));
  const double s = e / (1.0 + e);
  return x < 0.0 ? s : 1.0 - s;
}

// tanh(|x|) = m/(m + 2) = 1 − 2/(m + 2), m = expm1(2|x|) = 2^k·q + (2^k − 1) (both terms
// exact for the k that matter; 2|x| capped at 19, beyond which tanh is 1 in float): one exp
// and one division, the form picked by the numerator. Below |x| = 0.625 the quotient
// m/(m + 2) (no cancellation: m is accurate near 0), above it 1 − 2/(m + 2) (near 1, the
// small 2/(m + 2) carries the error). Then the sign of x; NaN passes the cap and gives NaN.
FASTRNN_HD float tanh_act(float x) {
  const float ax = std::fabs(x);
  const float v = 2.0f * ax;
  const ExpParts e = expm1_parts(v > 19.0f ? 19.0f : v);
  const float scale = bits_to_float((e.k + 127u) << 23);  // 2^k, k ∈ [0, 28]
  const float m = scale * e.q + (scale - 1.0f);
  const bool small = ax < 0.625f;
  const float u = (small ? m : 2.0f) / (m + 2.0f);
  return std::copysign(small ? u : 1.0f - u, x);
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
