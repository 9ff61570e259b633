// SPDX-License-Identifier: MIT
// cpu/panel_gemm.h — the per-step recurrent product C = A·B (+ C) against weights packed once
// per call. OpenBLAS has no way to keep a packed operand between calls: its sgemm re-packs
// the whole weight matrix on every time step, which `perf` puts at 8-10 % of S3/S4 LSTM
// inference (sgemm_incopy). Here B is packed into column panels once (pack_panels,
// engine.cpp) and every step reads its small A (the batch's state) in place; what that
// bought is in benchmarks/README.md. Compiled per instruction set through kernels_isa.cpp:
// the AVX2+FMA and AVX-512 tables have it (the baseline table leaves it null and the engine
// calls BLAS).
//
// Layout: panel q holds columns [16q, 16q + 16) of B as [K][16] values, zero past column N.
// The micro-kernel keeps a tile of C (up to 6 × 16 in twelve ymm registers with AVX2, up to
// 12 × 16 in twelve zmm with AVX-512) and walks K once: per k, one panel row, a broadcast of
// A per row, an FMA per row and vector. Each C element is one FMA chain per part of A
// ([A1 | A2], e.g. x_t and h_(t-1)) over its k in order, the two sums added at the end (tiles
// of few rows: a few chains per part, see add_part), so it does not depend on how the
// columns are split between threads.
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
constexpr int kCols = int(kPanelCols);  // columns per panel
constexpr int64_t kGroupBytes = 128 * 1024;  // panels run together per block of rows

// A row of a tile: 16 floats of C (or of a panel) in one zmm with AVX-512, two ymm with AVX2.
// Both compile the same kernel below; only these few operations differ.
#if defined(__AVX512F__)
// Rows of C per tile: up to 12 accumulators of 16 columns (12 chains, more than the FMA
// units' latency × throughput, 4 × 2), and the panel row and a broadcast, of 32 zmm.
constexpr int kRows = 12;
struct Row {
  __m512 v;
};
#define FASTRNN_KEEP_IN_REGISTER(r) asm("" : "+v"(r.v))
__attribute__((always_inline)) inline Row zero_row() { return {_mm512_setzero_ps()}; }
__attribute__((always_inline)) inline Row load_row(const float* b) { return {_mm512_loadu_ps(b)}; }
__attribute__((always_inline)) inline Row load_row(const uint16_t* b) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))));
  return {_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1)};
}
__attribute__((always_inline)) inline Row load_row(const int8_t* b) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))};
}
__attribute__((always_inline)) inline void fma_row(const float* a, const Row& b, Row& acc) {
  acc.v = _mm512_fmadd_ps(_mm512_set1_ps(*a), b.v, acc.v);
}
__attribute__((always_inline)) inline Row add(const Row& x, const Row& y) {
  return {_mm512_add_ps(x.v, y.v)};
}
__attribute__((always_inline)) inline Row mul(const Row& x, const Row& y) {
  return {_mm512_mul_ps(x.v, y.v)};
}
__attribute__((always_inline)) inline Row loadu(const float* p) { return {_mm512_loadu_ps(p)}; }
__attribute__((always_inline)) inline void storeu(float* p, const Row& r) { _mm512_storeu_ps(p, r.v); }
#else
constexpr int kRows = int(kPanelRows);
struct Row {
  __m256 lo, hi;
};
#define FASTRNN_KEEP_IN_REGISTER(r) asm("" : "+x"(r.lo), "+x"(r.hi))
__attribute__((always_inline)) inline Row zero_row() {
  return {_mm256_setzero_ps(), _mm256_setzero_ps()};
}
__attribute__((always_inline)) inline Row load_row(const float* b) {
  return {_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8)};
}
// A bfloat16 row (see below): a shift and a mask, no lane-crossing shuffle: with vpmovzxwd
// and vextract (three shuffle-port operations a row) a 1-row product ran slower than from
// float32 panels.
__attribute__((always_inline)) inline Row load_row(const uint16_t* b) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
          _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))))};
}
__attribute__((always_inline)) inline Row load_row(const int8_t* b) {
  const __m128i lo = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b));
  const __m128i hi = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8));
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))};
}
__attribute__((always_inline)) inline void fma_row(const float* a, const Row& b, Row& acc) {
  const __m256 av = _mm256_broadcast_ss(a);
  acc.lo = _mm256_fmadd_ps(av, b.lo, acc.lo);
  acc.hi = _mm256_fmadd_ps(av, b.hi, acc.hi);
}
__attribute__((always_inline)) inline Row add(const Row& x, const Row& y) {
  return {_mm256_add_ps(x.lo, y.lo), _mm256_add_ps(x.hi, y.hi)};
}
__attribute__((always_inline)) inline Row mul(const Row& x, const Row& y) {
  return {_mm256_mul_ps(x.lo, y.lo), _mm256_mul_ps(x.hi, y.hi)};
}
__attribute__((always_inline)) inline Row loadu(const float* p) {
  return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
__attribute__((always_inline)) inline void storeu(float* p, const Row& r) {
  _mm256_storeu_ps(p, r.lo);
  _mm256_storeu_ps(p + 8, r.hi);
}
#endif

// Panels hold float32, bfloat16 or int8 values (W = float, uint16_t, int8_t); the small types
// cut the bytes a product reads (a prepared network's weights_dtype), widened to float32 on
// load, every sum in float32.
// - bfloat16 (a float32's upper 16 bits): a row of 16 columns is 8 words, word c holding column
//   c in its low half and column c + 8 in its high half (the engine's narrow_panels).
// - int8: a panel starts with 2 × 16 float scales, one per column for the rows of A1 and one
//   for those of A2 (per output row of W_ih and of W_hh: symmetric per-row quantization), then
//   its rows of 16 signed bytes; each part's sum over k of a·q is multiplied by its scale.
template <class W>
constexpr int64_t kHeaderBytes = std::is_same_v<W, int8_t> ? 2 * kCols * int64_t(sizeof(float)) : 0;
// Bytes of one panel K rows deep.
template <class W>
constexpr int64_t panel_bytes(int64_t K) {
  return kHeaderBytes<W> + K * kCols * int64_t(sizeof(W));
}

#define FASTRNN_UNROLL_ROWS _Pragma("GCC unroll 16")

// acc[r] += row r of a (MR rows) · b ([a.K][16]) over k in [k0, k1), one FMA chain per
// element: per k, one panel row, MR broadcasts, MR row FMAs.
template <int MR, class W>
__attribute__((always_inline)) inline void chain(PanelA a, const W* __restrict b,
                                                 int64_t k0, int64_t k1, Row* acc) {
  for (int64_t k = k0; k < k1; ++k) {
    const Row bk = load_row(b + kCols * k);
    FASTRNN_UNROLL_ROWS
    for (int r = 0; r < MR; ++r) fma_row(a.a + r * a.lda + k, bk, acc[r]);
  }
}

// acc[r] += row r of a · b over all of a.K. kStreams = 1: one chain over k in order. A tile of
// few rows has too few chains to cover the FMA latency: it would take 4 cycles a k, as 4 rows
// do. It runs kStreams (2 or 4) chains per element instead, chain s over the k ≡ s (mod
// kStreams) below the last multiple of kStreams, the rest of k on chain 0, added as s0 + s1,
// or (s0 + s1) + (s2 + s3): a fixed order for a given K.
template <int MR, int kStreams = 1, class W>
__attribute__((always_inline)) inline void add_part(PanelA a, const W* __restrict b, Row* acc) {
  if constexpr (kStreams == 1) {
    chain<MR>(a, b, 0, a.K, acc);
  } else {
    static_assert(kStreams == 2 || kStreams == 4, "kStreams: 1, 2 or 4");
    Row part[kStreams][MR];
    FASTRNN_UNROLL
    for (int s = 0; s < kStreams; ++s)
      FASTRNN_UNROLL_ROWS
      for (int r = 0; r < MR; ++r) part[s][r] = zero_row();
    const int64_t rounds_end = a.K / kStreams * kStreams;
    for (int64_t k = 0; k < rounds_end; k += kStreams) {
      FASTRNN_UNROLL
      for (int s = 0; s < kStreams; ++s) {
        Row bk = load_row(b + kCols * (k + s));
        // in registers: GCC otherwise folds the loads into every row's FMA, and 2-row tiles
        // then issue more loads than the load ports take
        FASTRNN_KEEP_IN_REGISTER(bk);
        FASTRNN_UNROLL_ROWS
        for (int r = 0; r < MR; ++r) fma_row(a.a + r * a.lda + k + s, bk, part[s][r]);
      }
    }
    chain<MR>(a, b, rounds_end, a.K, part[0]);
    FASTRNN_UNROLL_ROWS
    for (int r = 0; r < MR; ++r) {
      Row sum = add(part[0][r], part[1][r]);
      if constexpr (kStreams == 4) sum = add(sum, add(part[2][r], part[3][r]));
      acc[r] = add(acc[r], sum);
    }
  }
}

// Chains per tile of MR rows: 8 or more (2 FMAs a cycle of 4-cycle latency) where the
// registers allow. AVX2 keeps 2 vectors a row (2·MR chains) in 16 ymm; AVX-512 one a row in
// 32 zmm.
#if defined(__AVX512F__)
template <int MR>
constexpr int kStreamsFor = MR <= 3 ? 4 : MR <= 7 ? 2 : 1;
#else
template <int MR>
constexpr int kStreamsFor = MR == 1 ? 4 : MR <= 3 ? 2 : 1;
#endif

// Rows [0, MR) × 16 columns of C from MR rows of [A1 | A2] and the panel at `panel`
// ([A1.K + A2.K][16] after its header). Every loop over r is unrolled, so the accumulators
// live in registers (left rolled, GCC keeps them on the stack and the kernel runs at half
// speed). Inlined into panel_gemm: as a call, its two PanelA went through the stack on every
// tile (perf: 5 % of S1 LSTM inference). With both parts, A1's sum is set aside in the tile
// and A2's starts from zero, then the two are added (as BLAS computes W_ih x and W_hh h apart
// and adds them). Run on in one chain, every rounding of A2's terms was relative to A1's sum:
// S1 LSTM's outputs came out twice as far from float64 as BLAS's (rms 2.1e-8 against 1.1e-8).
template <int MR, class W>
__attribute__((always_inline)) inline void tile(PanelA a1, PanelA a2, const char* panel,
                                                float* c, int64_t ldc, int ncols,
                                                bool accumulate) {
  const W* __restrict b = reinterpret_cast<const W*>(panel + kHeaderBytes<W>);
  const float* scales = reinterpret_cast<const float*>(panel);  // int8: [2][16]
  Row acc[MR];
  FASTRNN_UNROLL_ROWS
  for (int r = 0; r < MR; ++r) acc[r] = zero_row();
  add_part<MR, kStreamsFor<MR>>(a1, b, acc);
  if constexpr (std::is_same_v<W, int8_t>) {
    if (a1.K > 0) {
      const Row s1 = loadu(scales);
      FASTRNN_UNROLL_ROWS
      for (int r = 0; r < MR; ++r) acc[r] = mul(acc[r], s1);
    }
  }
  alignas(64) float first[MR][kCols];
  const bool two_parts = a1.K > 0 && a2.K > 0;
  if (two_parts) {
    FASTRNN_UNROLL_ROWS
    for (int r = 0; r < MR; ++r) {
      storeu(first[r], acc[r]);
      acc[r] = zero_row();
    }
  }
  add_part<MR, kStreamsFor<MR>>(a2, b + kCols * a1.K, acc);
  if constexpr (std::is_same_v<W, int8_t>) {
    if (a2.K > 0) {
      const Row s2 = loadu(scales + kCols);
      FASTRNN_UNROLL_ROWS
      for (int r = 0; r < MR; ++r) acc[r] = mul(acc[r], s2);
    }
  }
  if (two_parts) {
    FASTRNN_UNROLL_ROWS
    for (int r = 0; r < MR; ++r) acc[r] = add(loadu(first[r]), acc[r]);
  }
  if (ncols == kCols) {
    FASTRNN_UNROLL_ROWS
    for (int r = 0; r < MR; ++r) {
      float* cr = c + r * ldc;
      storeu(cr, accumulate ? add(acc[r], loadu(cr)) : acc[r]);
    }
    return;
  }
  // the last panel of a matrix whose width is not a multiple of 16: only ncols are C's
  alignas(64) float t[kCols];
  FASTRNN_UNROLL_ROWS
  for (int r = 0; r < MR; ++r) {
    storeu(t, acc[r]);
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
  const char* panel = reinterpret_cast<const char*>(panels) + q * panel_bytes<W>(a1.K + a2.K);
  tile<MR, W>(a1, a2, panel, C + i * ldc + q * kCols, ldc,
              int(std::min<int64_t>(kCols, N - q * kCols)), accumulate);
}
}  // namespace panel

// C[M, N] = [A1 | A2]·B (accumulate: C += ...), B packed in panels. The panels go in groups
// of about kGroupBytes (a quarter of a 512 KiB L2): each block of rows of A (read where it
// lies, in L1 while it meets the group) runs through every panel of the group, streamed
// from L2; then the next group. Panel by panel, each panel met all of A from L2: for S1
// (A = 128 rows × 156, 80 KB, per panel) `perf` put the kernel at ~91 % of the FMA peak
// (66 % of S1 LSTM inference, 6.1 ms a call for 0.57 GFLOP, at 3.2 GHz). Packing A into
// [K][rows] blocks first, as BLAS does, is not done: every thread packed all of A every step
// (`perf`: 3-5.5 % of S1/S2 LSTM training) to save little, A being in cache already. What
// the per-step changes bought under `python -m fastrnn bench` is in benchmarks/README.md.
template <class W>
void panel_gemm(int64_t M, int64_t N, PanelA A1, PanelA A2, const W* panels, float* C,
                int64_t ldc, bool accumulate) {
  using namespace panel;
  // Rows in ceil(M / kRows) blocks of as even a size as can be (AVX2, kRows = 6: 4-6 rows
  // from M = 8 on, as a one-chain tile needs 8 FMA chains, 4 rows of 2 vectors, to keep both
  // FMA pipes busy; M = 7 as 3 + 4; S2's batch of 20 is 5+5+5+5, not 6+6+4+4, with the 4-row
  // tiles after the grouped loop, each streaming every panel from L2 again). Tiles of fewer
  // rows run several chains per element (kStreamsFor).
  const int64_t blocks = (M + kRows - 1) / kRows;
  const int64_t n_panels = (N + kCols - 1) / kCols;
  // K = A1.K + A2.K may be 0 (an input size of 0: GRU's n-gate input product has K = I);
  // the tiles then write C = 0 (or leave C) and a group is every panel.
  const int64_t group =
      std::max<int64_t>(1, kGroupBytes / std::max<int64_t>(1, panel_bytes<W>(A1.K + A2.K)));
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
#if defined(__AVX512F__)
          case 6: tiles<6>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 7: tiles<7>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 8: tiles<8>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 9: tiles<9>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 10: tiles<10>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
          case 11: tiles<11>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
#endif
          default: tiles<kRows>(i, q, N, A1, A2, panels, C, ldc, accumulate); break;
        }
      }
    }
  }
}

#undef FASTRNN_KEEP_IN_REGISTER
#undef FASTRNN_UNROLL_ROWS

#endif  // FASTRNN_HAVE_PANEL_GEMM

}  // namespace fastrnn::cpu::FASTRNN_ISA
