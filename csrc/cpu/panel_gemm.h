// SPDX-License-Identifier: MIT
// cpu/panel_gemm.h — the per-step recurrent product C = A·B (+ C) against weights packed once
// per call. OpenBLAS has no way to keep a packed operand between calls: its sgemm re-packs
// the whole weight matrix on every time step, which `perf` puts at 8-10 % of S3/S4 LSTM
// inference (sgemm_incopy). Here B is packed into column panels once (pack_panels,
// engine.cpp) and every step only packs its small A (the batch's state); what that bought is
// in benchmarks/README.md. Compiled per instruction set through kernels_isa.cpp; only the
// AVX2+FMA table has it (the baseline table leaves it null and the engine calls BLAS).
//
// Layout: panel q holds columns [16q, 16q + 16) of B as [K][16] floats, zero past column N.
// The micro-kernel keeps a 6 × 16 tile of C in twelve ymm registers and walks K once:
// per k, two loads of the panel, six broadcasts of A, twelve FMAs. Each C element is one
// FMA chain over k = 0..K-1 in order, so it does not depend on how the columns are split
// between threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"
#include "fastrnn/platform.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTRNN_HAVE_PANEL_GEMM 1
#endif

namespace fastrnn::cpu::FASTRNN_ISA {

#if defined(FASTRNN_HAVE_PANEL_GEMM)

namespace panel {
constexpr int kRows = int(kPanelRows);  // rows of C per tile
constexpr int kCols = int(kPanelCols);  // columns per panel (two ymm)

// Rows [0, MR) × 16 columns of C from a: [K][MR] (A packed) and b: [K][16]. Every loop over
// r is unrolled, so the accumulators live in registers (left rolled, GCC keeps them on the
// stack and the kernel runs at half speed).
template <int MR>
inline void tile(int64_t K, const float* __restrict a, const float* __restrict b, float* c,
                 int64_t ldc, int ncols, bool accumulate) {
  __m256 lo[MR], hi[MR];
  FASTRNN_UNROLL
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + kCols * k), b1 = _mm256_loadu_ps(b + kCols * k + 8);
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + MR * k + r);
      lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
    }
  }
  if (ncols == kCols) {
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      float* cr = c + r * ldc;
      if (accumulate) {
        lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(cr));
        hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(cr + 8));
      }
      _mm256_storeu_ps(cr, lo[r]);
      _mm256_storeu_ps(cr + 8, hi[r]);
    }
    return;
  }
  // the last panel of a matrix whose width is not a multiple of 16: only ncols are C's
  alignas(32) float t[kCols];
  FASTRNN_UNROLL
  for (int r = 0; r < MR; ++r) {
    _mm256_store_ps(t, lo[r]);
    _mm256_store_ps(t + 8, hi[r]);
    float* cr = c + r * ldc;
    for (int j = 0; j < ncols; ++j) cr[j] = accumulate ? cr[j] + t[j] : t[j];
  }
}

// MR rows of A into [K][MR].
template <int MR>
inline void pack_rows(int64_t K, const float* __restrict A, int64_t lda, float* __restrict out) {
  for (int64_t k = 0; k < K; ++k)
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) out[k * MR + r] = A[r * lda + k];
}

template <int MR>
inline void tiles(int64_t q, int64_t N, int64_t K, const float* a, const float* panels, float* C,
                  int64_t ldc, bool accumulate) {
  tile<MR>(K, a, panels + q * K * kCols, C + q * kCols, ldc,
           int(std::min<int64_t>(kCols, N - q * kCols)), accumulate);
}
}  // namespace panel

// C[M, N] = A[M, K]·B (accumulate: C += A·B), B packed in panels; a_pack: 6·ceil(M/6)·K
// floats. A is packed first, in blocks of 6 rows ([K][6] each, the last block [K][M mod 6]);
// then each panel (16·K floats, read from memory once) meets every block of A while it stays
// in L1, and the packed A (the batch's state, small) stays in L2 across panels.
inline void panel_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const float* panels, float* C, int64_t ldc, bool accumulate,
                       float* a_pack) {
  using namespace panel;
  const int64_t full = M / kRows * kRows;
  const int rest = int(M - full);
  for (int64_t i = 0; i < full; i += kRows) pack_rows<kRows>(K, A + i * lda, lda, a_pack + i * K);
  const float* a_rest = a_pack + full * K;
  const float* A_rest = A + full * lda;
  switch (rest) {
    case 1: pack_rows<1>(K, A_rest, lda, a_pack + full * K); break;
    case 2: pack_rows<2>(K, A_rest, lda, a_pack + full * K); break;
    case 3: pack_rows<3>(K, A_rest, lda, a_pack + full * K); break;
    case 4: pack_rows<4>(K, A_rest, lda, a_pack + full * K); break;
    case 5: pack_rows<5>(K, A_rest, lda, a_pack + full * K); break;
    default: break;
  }
  for (int64_t q = 0; q * kCols < N; ++q) {
    for (int64_t i = 0; i < full; i += kRows)
      tiles<kRows>(q, N, K, a_pack + i * K, panels, C + i * ldc, ldc, accumulate);
    float* c = C + full * ldc;
    switch (rest) {
      case 1: tiles<1>(q, N, K, a_rest, panels, c, ldc, accumulate); break;
      case 2: tiles<2>(q, N, K, a_rest, panels, c, ldc, accumulate); break;
      case 3: tiles<3>(q, N, K, a_rest, panels, c, ldc, accumulate); break;
      case 4: tiles<4>(q, N, K, a_rest, panels, c, ldc, accumulate); break;
      case 5: tiles<5>(q, N, K, a_rest, panels, c, ldc, accumulate); break;
      default: break;
    }
  }
}

#endif  // FASTRNN_HAVE_PANEL_GEMM

}  // namespace fastrnn::cpu::FASTRNN_ISA
