// SPDX-License-Identifier: MIT
// cpu/fma_peak.h — the machine's float32 multiply-add peak, for the benchmark: a loop of
// nothing but independent 8-wide (AVX-512: 16-wide) FMAs, kFmaChains = 12 chains (more than the FMA units' latency ×
// throughput needs, so the loop is bound by their throughput alone), no memory traffic.
// `python -m fastrnn bench` prints it next to OpenBLAS's GEMM rate, which is how the
// benchmark shows how far any GEMM-bound target can go on the machine it runs on.
// Compiled through kernels_isa.cpp; the AVX2+FMA and AVX-512 tables have it.
#pragma once

#include <cstdint>

#include "cpu/kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTRNN_HAVE_FMA_PEAK 1
#endif

namespace fastrnn::cpu::FASTRNN_ISA {

#if defined(FASTRNN_HAVE_FMA_PEAK)

#if defined(__AVX512F__)
constexpr int kFmaWidth = 16;
using FmaVec = __m512;
#define FASTRNN_FMA_SET1 _mm512_set1_ps
#define FASTRNN_FMA_FMADD _mm512_fmadd_ps
#define FASTRNN_FMA_ADD _mm512_add_ps
#define FASTRNN_FMA_STORE _mm512_store_ps
#else
constexpr int kFmaWidth = 8;
using FmaVec = __m256;
#define FASTRNN_FMA_SET1 _mm256_set1_ps
#define FASTRNN_FMA_FMADD _mm256_fmadd_ps
#define FASTRNN_FMA_ADD _mm256_add_ps
#define FASTRNN_FMA_STORE _mm256_store_ps
#endif

// rounds × kFmaChains FMAs of kFmaWidth floats, a = a·m + c on every chain (m just below 1, so the
// chains settle near c / (1 − m) and never reach an infinity or a subnormal); returns their
// sum, so that the loop is not compiled away (the engine calls it through the table).
inline float fma_loop(int64_t rounds, float seed) {
  const FmaVec m = FASTRNN_FMA_SET1(0.999999f), c = FASTRNN_FMA_SET1(1e-7f);
  FmaVec a[kFmaChains];
  for (int i = 0; i < kFmaChains; ++i) a[i] = FASTRNN_FMA_SET1(seed * float(i + 1));
  for (int64_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 12  // all the chains: a literal, as the pragma needs one
    for (int i = 0; i < kFmaChains; ++i) a[i] = FASTRNN_FMA_FMADD(a[i], m, c);
  }
  FmaVec s = a[0];
  for (int i = 1; i < kFmaChains; ++i) s = FASTRNN_FMA_ADD(s, a[i]);
  alignas(64) float lanes[kFmaWidth];
  FASTRNN_FMA_STORE(lanes, s);
  float total = 0.f;
  for (float v : lanes) total += v;
  return total;
}

#endif

}  // namespace fastrnn::cpu::FASTRNN_ISA
