// SPDX-License-Identifier: MIT
// dropout.h — the inter-layer dropout mask as a pure function of (seed, layer, element), host
// and device: every backend, and reference.py (dropout_mask), draw bit-identical masks, and
// backward recomputes the mask instead of storing it.
//
// element = flat index into the [T, B, D*Hout] output of `layer`; bits = the top 24 bits of
// splitmix64(seed ^ φ·(layer + 1) + φ·(element + 1)), φ = 0x9E3779B97F4A7C15; the element is
// kept when bits >= threshold = floor(p·2^24 + 0.5), and a kept value is scaled by 1/(1 − p).
#pragma once

#include <cstdint>

#include "fastrnn/platform.h"

namespace fastrnn {

FASTRNN_HD uint32_t dropout_bits(uint64_t seed, int64_t layer, int64_t element) {
  const uint64_t phi = 0x9E3779B97F4A7C15ull;
  uint64_t z = (seed ^ (phi * (uint64_t(layer) + 1))) + phi * (uint64_t(element) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return uint32_t(z >> 40);
}

// p in [0, 1] → the smallest kept value of dropout_bits; 2^24 (nothing kept) when p == 1.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 16777216.0 + 0.5;
  return t >= 16777216.0 ? 16777216u : uint32_t(t);
}

}  // namespace fastrnn
