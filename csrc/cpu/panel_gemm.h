// SPDX-License-Identifier: MIT
// cpu/panel_gemm.h — the per-step recurrent product C = A·B (+ C) against weights packed once
// per call. OpenBLAS has no way to keep a packed operand between calls: its sgemm re-packs
// the whole weight matrix on every time step, which `perf` puts at 8-10 % of S3/S4 LSTM
// inference (sgemm_incopy). Here B is packed into column panels once (pack_panels,
// engine.cpp) and every step reads its small A (the batch's state) in place; what that
// bought is in benchmarks/README.md. Compiled per instruction set through kernels_isa.cpp;
// only the AVX2+FMA table has it (the baseline table leaves it null and the engine calls
// BLAS).
//
// Layout: panel q holds columns [16q, 16q + 16) of B as [K][16] floats, zero past column N.
// The micro-kernel keeps a 6 × 16 tile of C in twelve ymm registers and walks K once:
// per k, two loads of the panel, six broadcasts of A, twelve FMAs. Each C element is one
// FMA chain per part of A ([A1 | A2], e.g. x_t and h_(t-1)) over its k in order, the two
// sums added at the end (products of 1-3 rows: a few chains per part, see add_part), so it
// does not depend on how the columns are split between threads.
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
constexpr int64_t kGroupBytes = 128 * 1024;  // panels run together per block of rows

// The 16 values of one panel row as two vectors of float. Panels hold float32, or bfloat16
// (W = uint16_t: a float32's upper 16 bits), which halves the bytes a product reads: a
// prepared network's weights_dtype="bfloat16". A bfloat16 row is 8 words, word c holding
// column c in its low half and column c + 8 in its high half (the engine's narrow_panels), so
// that widening is a shift and a mask, no lane-crossing shuffle: with vpmovzxwd and vextract
// (three shuffle-port operations a row) a 1-row product ran slower than from float32 panels.
__attribute__((always_inline)) inline void load_row(const float* b, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(b);
  hi = _mm256_loadu_ps(b + 8);
}
__attribute__((always_inline)) inline void load_row(const uint16_t* b, __m256& lo, __m256& hi) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))));
}

// lo/hi[r] += row r of a (MR rows) · b ([a.K][16]) over k in [k0, k1), one FMA chain per
// element: per k, two loads of the panel, MR broadcasts, 2·MR FMAs.
template <int MR, class W>
__attribute__((always_inline)) inline void chain(PanelA a, const W* __restrict b,
                                                 int64_t k0, int64_t k1, __m256* lo,
                                                 __m256* hi) {
  for (int64_t k = k0; k < k1; ++k) {
    __m256 b0, b1;
    load_row(b + kCols * k, b0, b1);
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a.a + r * a.lda + k);
      lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
    }
  }
}

// lo/hi[r] += row r of a · b over all of a.K. kStreams = 1: one chain over k in order. A
// tile of 1-3 rows (a batch of 1-3, or 3 of 7) has 2-6 chains, too few to cover the FMA
// latency: it would take 4 cycles a k, as 4 rows do. It runs kStreams (2 or 4) chains per
// element instead, chain s over the k ≡ s (mod kStreams) below the last multiple of
// kStreams, the rest of k on chain 0, added as s0 + s1, or (s0 + s1) + (s2 + s3): a fixed
// order for a given K.
template <int MR, int kStreams = 1, class W>
__attribute__((always_inline)) inline void add_part(PanelA a, const W* __restrict b,
                                                    __m256* lo, __m256* hi) {
  if constexpr (kStreams == 1) {
    chain<MR>(a, b, 0, a.K, lo, hi);
  } else {
    static_assert(kStreams == 2 || kStreams == 4, "kStreams: 1, 2 or 4");
    __m256 l[kStreams][MR], h[kStreams][MR];
    FASTRNN_UNROLL
    for (int s = 0; s < kStreams; ++s)
      FASTRNN_UNROLL
      for (int r = 0; r < MR; ++r) l[s][r] = h[s][r] = _mm256_setzero_ps();
    const int64_t rounds_end = a.K / kStreams * kStreams;
    for (int64_t k = 0; k < rounds_end; k += kStreams) {
      FASTRNN_UNROLL
      for (int s = 0; s < kStreams; ++s) {
        __m256 b0, b1;
        load_row(b + kCols * (k + s), b0, b1);
        // in registers: GCC otherwise folds the loads into every row's FMA, and 2-row tiles
        // then issue more loads than the load ports take
        asm("" : "+x"(b0), "+x"(b1));
        FASTRNN_UNROLL
        for (int r = 0; r < MR; ++r) {
          const __m256 av = _mm256_broadcast_ss(a.a + r * a.lda + k + s);
          l[s][r] = _mm256_fmadd_ps(av, b0, l[s][r]);
          h[s][r] = _mm256_fmadd_ps(av, b1, h[s][r]);
        }
      }
    }
    chain<MR>(a, b, rounds_end, a.K, l[0], h[0]);
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      __m256 sl = _mm256_add_ps(l[0][r], l[1][r]), sh = _mm256_add_ps(h[0][r], h[1][r]);
      if constexpr (kStreams == 4) {
        sl = _mm256_add_ps(sl, _mm256_add_ps(l[2][r], l[3][r]));
        sh = _mm256_add_ps(sh, _mm256_add_ps(h[2][r], h[3][r]));
      }
      lo[r] = _mm256_add_ps(lo[r], sl);
      hi[r] = _mm256_add_ps(hi[r], sh);
    }
  }
}

// Chains per tile of MR rows: 8 or more (2 FMAs a cycle of 4-cycle latency), and with the two
// panel vectors and a broadcast within the 16 ymm registers.
template <int MR>
constexpr int kStreamsFor = MR == 1 ? 4 : MR <= 3 ? 2 : 1;

// Rows [0, MR) × 16 columns of C from MR rows of [A1 | A2] and b: [A1.K + A2.K][16]. Every
// loop over r is unrolled, so the accumulators live in registers (left rolled, GCC keeps
// them on the stack and the kernel runs at half speed). Inlined into panel_gemm: as a call,
// its two PanelA went through the stack on every tile (perf: 5 % of S1 LSTM inference).
// With both parts, A1's sum is set aside in the tile and A2's starts from zero, then the two
// are added (as BLAS computes W_ih x and W_hh h apart and adds them). Run on in one chain,
// every rounding of A2's terms was relative to A1's sum: S1 LSTM's outputs came out twice
// as far from float64 as BLAS's (rms 2.1e-8 against 1.1e-8).
template <int MR, class W>
__attribute__((always_inline)) inline void tile(PanelA a1, PanelA a2,
                                                const W* __restrict b, float* c,
                                                int64_t ldc, int ncols, bool accumulate) {
  __m256 lo[MR], hi[MR];
  FASTRNN_UNROLL
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  add_part<MR, kStreamsFor<MR>>(a1, b, lo, hi);
  alignas(32) float first[MR][kCols];
  const bool two_parts = a1.K > 0 && a2.K > 0;
  if (two_parts) {
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      _mm256_store_ps(first[r], lo[r]);
      _mm256_store_ps(first[r] + 8, hi[r]);
      lo[r] = hi[r] = _mm256_setzero_ps();
    }
  }
  add_part<MR, kStreamsFor<MR>>(a2, b + kCols * a1.K, lo, hi);
  if (two_parts) {
    FASTRNN_UNROLL
    for (int r = 0; r < MR; ++r) {
      lo[r] = _mm256_add_ps(_mm256_load_ps(first[r]), lo[r]);
      hi[r] = _mm256_add_ps(_mm256_load_ps(first[r] + 8), hi[r]);
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

// Rows [i, i + MR) of C, panel q.
template <int MR, class W>
__attribute__((always_inline)) inline void tiles(int64_t i, int64_t q, int64_t N, PanelA a1,
                                                 PanelA a2, const W* panels, float* C,
                                                 int64_t ldc, bool accumulate) {
  a1.a += i * a1.lda;
  a2.a += i * a2.lda;
  tile<MR>(a1, a2, panels + q * (a1.K + a2.K) * kCols, C + i * ldc + q * kCols, ldc,
           int(std::min<int64_t>(kCols, N - q * kCols)), accumulate);
}
}  // namespace panel

// C[M, N] = [A1 | A2]·B (accumulate: C += ...), B packed in panels. The panels go in groups
// of about kGroupBytes (a quarter of a 512 KiB L2): each block of 6 rows of A (read where it
// lies, in L1 while it meets the group) runs through every panel of the group, streamed
// from L2; then the next group. Panel by panel, each panel met all of A from L2: for S1
// (A = 128 rows × 156, 80 KB, per panel) `perf` put the kernel at ~91 % of the FMA peak
// (66 % of S1 LSTM inference, 6.1 ms a call for 0.57 GFLOP, at 3.2 GHz). Packing A into
// [K][6] blocks first, as BLAS does, is not done: every thread packed all of A every step
// (`perf`: 3-5.5 % of S1/S2 LSTM training) to save little, A being in cache already. What
// the per-step changes bought under `python -m fastrnn bench` is in benchmarks/README.md.
template <class W>
void panel_gemm(int64_t M, int64_t N, PanelA A1, PanelA A2, const W* panels, float* C,
                int64_t ldc, bool accumulate) {
  using namespace panel;
  // Rows in ceil(M / 6) blocks of as even a size as can be: 4-6 rows from M = 8 on (a
  // one-chain tile needs 8 FMA chains, 4 rows, to keep both FMA pipes busy, and more to
  // spare), M = 7 as 3 + 4; products of 1-3 rows, and the 3 of those 7, run several chains
  // per element (add_part). S2's batch of 20 is 5+5+5+5, not 6+6+4+4 (with the 4-row tiles
  // after the grouped loop, each streaming every panel from L2 again).
  const int64_t blocks = (M + kRows - 1) / kRows;
  const int64_t n_panels = (N + kCols - 1) / kCols;
  // K = A1.K + A2.K may be 0 (an input size of 0: GRU's n-gate input product has K = I);
  // the tiles then write C = 0 (or leave C) and a group is every panel.
  const int64_t K = std::max<int64_t>(1, A1.K + A2.K);
  const int64_t group = std::max<int64_t>(1, kGroupBytes / int64_t(sizeof(W) * kCols * K));
  for (int64_t q0 = 0; q0 < n_panels; q0 += group) {
    const int64_t q1 = std::min(n_panels, q0 + group);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t i = M * blk / blocks, rows = M * (blk + 1) / blocks - i;
      for (int64_t q = q0; q < q1; ++q) {
        switch (rows) {
          case 1: tiles<1>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 2: tiles<2>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 3: tiles<3>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 4: tiles<4>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 5: tiles<5>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          default: tiles<kRows>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
        }
      }
    }
  }
}

#endif  // FASTRNN_HAVE_PANEL_GEMM

}  // namespace fastrnn::cpu::FASTRNN_ISA
