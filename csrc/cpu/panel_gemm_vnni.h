// SPDX-License-Identifier: MIT
// cpu/panel_gemm_vnni.h — the int8 panel product with AVX-512 VNNI (vpdpbusd): 64 multiply-adds
// of bytes a uop, where widening each int8 weight to a float (panel_gemm.h) takes three uops per
// 16 weights and, at batch 1, runs slower than float32 weights already in L2.
//
// vpdpbusd multiplies unsigned bytes by signed bytes, so A (float32: x_t, h_(t-1)) is written,
// per call and row, as three 8-bit digits: with m = max|row|, s_1 = m / 127, s_(j+1) = s_j / 254,
//   a ≈ d_1·s_1 + d_2·s_2 + d_3·s_3,  d_j = round(rest_j / s_j) in [-127, 127],
//   rest_1 = a, rest_(j+1) = rest_j - d_j·s_j  (|rest_(j+1)| <= s_j / 2 = 127·s_(j+1)),
// stored as d_j + 128, within s_3 / 2 = m / 16.4e6 (6.1e-8 of the row's largest value) of a:
// float32's own rounding, relative to the row's largest value. (Two digits, 1.55e-5 of it, put
// an LSTM's outputs 1e-4 from those of the float32 product of the same weights.) Per column
// c, part and digit, Σ_k (d_k + 128)·q_kc − 128·Σ_k q_kc is Σ_k d_k·q_kc exactly in int32 (the
// panel's header keeps Σ_k q_kc); the part's value is s_w[c]·Σ_j s_j·Σ_k d_jk·q_kc, in float32.
// Integer sums are exact, so neither the order over k nor the split into streams changes them.
//
// Layout: kInt8QuadHeader, KernelTable::int8_k_group = 4 (cpu/kernels.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "fastrnn/platform.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FASTRNN_HAVE_VNNI_GEMM 1
#endif

namespace fastrnn::cpu::FASTRNN_ISA {

#if defined(FASTRNN_HAVE_VNNI_GEMM)

namespace vnni {
constexpr int kCols = int(kPanelCols);

inline int64_t round4(int64_t k) { return (k + 3) / 4 * 4; }

constexpr int kDigits = 3;

// One part of A as kDigits digits a row: digit j of row i at d[j] + i·kp ([M][kp] bytes each,
// kp = the part's K rounded up to 4, the padding 128: the digit 0), its scale s[j][i].
struct Digits {
  const uint8_t* d[kDigits] = {};
  const float* s[kDigits] = {};
  int64_t kp = 0;
};

// Rows [0, M) of a (M × K, row stride lda) as digits into d[j] ([M][kp]) and s[j] ([M]).
inline void split_digits(PanelA a, int64_t M, int64_t kp, uint8_t* const* d, float* const* s) {
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
  const __m512i bias = _mm512_set1_epi32(128);
  for (int64_t i = 0; i < M; ++i) {
    const float* row = a.a + i * a.lda;
    __m512 m = _mm512_setzero_ps();
    for (int64_t k = 0; k < a.K; k += 16) {
      const __mmask16 mask = a.K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (a.K - k)) - 1);
      m = _mm512_max_ps(m, _mm512_and_ps(_mm512_maskz_loadu_ps(mask, row + k), sign));
    }
    float scale[kDigits];
    scale[0] = _mm512_reduce_max_ps(m) / 127.f;
    for (int j = 1; j < kDigits; ++j) scale[j] = scale[j - 1] / 254.f;
    __m512 inv[kDigits], vs[kDigits];
    for (int j = 0; j < kDigits; ++j) {
      s[j][i] = scale[j];
      inv[j] = _mm512_set1_ps(scale[j] > 0.f ? 1.f / scale[j] : 0.f);
      vs[j] = _mm512_set1_ps(scale[j]);
    }
    for (int64_t k = 0; k < kp; k += 16) {
      const int64_t left = std::min<int64_t>(16, std::max<int64_t>(0, a.K - k));
      const __mmask16 in = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      __m512 rest = _mm512_maskz_loadu_ps(in, row + k);  // past K: 0, every digit 0 (byte 128)
      const int64_t n = std::min<int64_t>(16, kp - k);
      const __mmask16 out = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
      for (int j = 0; j < kDigits; ++j) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(rest, inv[j]));  // nearest, ties to even
        q = _mm512_min_epi32(_mm512_max_epi32(q, nlim), lim);
        if (j + 1 < kDigits) rest = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q), vs[j], rest);
        _mm512_mask_cvtepi32_storeu_epi8(d[j] + i * kp + k, out, _mm512_add_epi32(q, bias));
      }
    }
  }
}

// Rows per tile, and streams of k groups per row: 4 sums of each digit for 1-2 rows, 2 for 3-4,
// 1 from 5 rows (vpdpbusd's 5-cycle latency wants 8 or more chains in flight; 24 at most, for 8
// rows, with the panel row and the broadcasts in 32 zmm).
constexpr int kRows = 8;
template <int MR>
constexpr int kStreams = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;

// acc[j][r] += Σ over k group g of (digit j of row r)·q.
template <int MR>
__attribute__((always_inline, target("avx512vnni"))) inline void group(
    const int8_t* __restrict b, const Digits& d, int64_t i0, int64_t g, __m512i (*acc)[MR]) {
  const __m512i w = _mm512_loadu_si512(b + 64 * g);
  FASTRNN_UNROLL
  for (int j = 0; j < kDigits; ++j) {
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
      int32_t a;
      std::memcpy(&a, d.d[j] + (i0 + r) * d.kp + 4 * g, 4);
      acc[j][r] = _mm512_dpbusd_epi32(acc[j][r], _mm512_set1_epi32(a), w);
    }
  }
}

// acc += this part's float value of rows [i0, i0 + MR) × 16 columns:
// s_w·Σ_j s_j·(Σ_k d_jk·q_k).
template <int MR>
__attribute__((always_inline, target("avx512vnni"))) inline void add_part(
    const Digits& d, int64_t i0, const int8_t* __restrict b, const float* s_w,
    const int32_t* col_sums, __m512* acc) {
  if (d.kp == 0) return;
  constexpr int S = kStreams<MR>;
  __m512i sums[S][kDigits][MR];
  FASTRNN_UNROLL
  for (int s = 0; s < S; ++s)
    FASTRNN_UNROLL
    for (int j = 0; j < kDigits; ++j)
      _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) sums[s][j][r] = _mm512_setzero_si512();
  const int64_t groups = d.kp / 4, rounds_end = groups / S * S;
  for (int64_t g = 0; g < rounds_end; g += S) {
    FASTRNN_UNROLL
    for (int s = 0; s < S; ++s) group<MR>(b, d, i0, g + s, sums[s]);
  }
  for (int64_t g = rounds_end; g < groups; ++g) group<MR>(b, d, i0, g, sums[0]);
  const __m512i zero_point = _mm512_slli_epi32(_mm512_loadu_si512(col_sums), 7);  // 128·Σq
  const __m512 sw = _mm512_loadu_ps(s_w);
  _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
    __m512 v = _mm512_setzero_ps();
    for (int j = kDigits - 1; j >= 0; --j) {  // the small digits first
      __m512i t = sums[0][j][r];
      FASTRNN_UNROLL
      for (int s = 1; s < S; ++s) t = _mm512_add_epi32(t, sums[s][j][r]);
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(t, zero_point));
      v = _mm512_fmadd_ps(f, _mm512_set1_ps(d.s[j][i0 + r]), v);
    }
    acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(v, sw));
  }
}

// Rows [i0, i0 + MR) × panel's 16 columns of C.
template <int MR>
__attribute__((always_inline, target("avx512vnni"))) inline void tile(
    const Digits& d1, const Digits& d2, int64_t i0, const char* panel, float* c, int64_t ldc,
    int ncols, bool accumulate) {
  const float* s_w = reinterpret_cast<const float*>(panel);                       // [2][16]
  const int32_t* sums = reinterpret_cast<const int32_t*>(panel + 2 * kCols * 4);  // [2][16]
  const int8_t* b = reinterpret_cast<const int8_t*>(panel + kInt8QuadHeader);
  __m512 acc[MR];
  _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  add_part<MR>(d1, i0, b, s_w, sums, acc);
  add_part<MR>(d2, i0, b + kCols * d1.kp, s_w + kCols, sums + kCols, acc);
  const __mmask16 mask = ncols == kCols ? __mmask16(0xFFFF) : __mmask16((1u << ncols) - 1);
  _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
    float* cr = c + (i0 + r) * ldc;
    __m512 v = acc[r];
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cr));
    _mm512_mask_storeu_ps(cr, mask, v);
  }
}
}  // namespace vnni

// C[M, N] = [A1 | A2]·B (accumulate: C += ...), B int8 panels in quads (kInt8QuadHeader). The
// digits of A are made once a call, into memory each thread keeps (it grows, never shrinks: a
// step loop allocates nothing after its first call); then rows in blocks of up to kRows through
// the panels, grouped as panel_gemm groups them.
__attribute__((target("avx512vnni"))) inline void panel_gemm_int8_vnni(
    int64_t M, int64_t N, PanelA A1, PanelA A2, const int8_t* panels, float* C, int64_t ldc,
    bool accumulate) {
  using namespace vnni;
  const int64_t k1 = round4(A1.K), k2 = round4(A2.K);
  thread_local std::vector<uint8_t> bytes;
  thread_local std::vector<float> scales;
  const size_t need_bytes = size_t(kDigits * M * (k1 + k2)), need_scales = size_t(2 * kDigits * M);
  if (bytes.size() < need_bytes) bytes.resize(need_bytes);
  if (scales.size() < need_scales) scales.resize(need_scales);
  Digits d1, d2;
  d1.kp = k1, d2.kp = k2;
  uint8_t* d_at[2][kDigits];
  float* s_at[2][kDigits];
  for (int j = 0; j < kDigits; ++j) {
    d_at[0][j] = bytes.data() + j * M * k1;
    d_at[1][j] = bytes.data() + kDigits * M * k1 + j * M * k2;
    s_at[0][j] = scales.data() + j * M;
    s_at[1][j] = scales.data() + (kDigits + j) * M;
    d1.d[j] = d_at[0][j], d2.d[j] = d_at[1][j], d1.s[j] = s_at[0][j], d2.s[j] = s_at[1][j];
  }
  if (k1) split_digits(A1, M, k1, d_at[0], s_at[0]);
  if (k2) split_digits(A2, M, k2, d_at[1], s_at[1]);

  const int64_t blocks = (M + kRows - 1) / kRows;
  const int64_t n_panels = (N + kCols - 1) / kCols;
  const int64_t panel_bytes = kInt8QuadHeader + kCols * (k1 + k2);
  const int64_t group = std::max<int64_t>(1, (128 * 1024) / panel_bytes);
  for (int64_t q0 = 0; q0 < n_panels; q0 += group) {
    const int64_t q1 = std::min(n_panels, q0 + group);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t i = M * blk / blocks, rows = M * (blk + 1) / blocks - i;
      for (int64_t q = q0; q < q1; ++q) {
        const char* panel = reinterpret_cast<const char*>(panels) + q * panel_bytes;
        float* c = C + q * kCols;
        const int nc = int(std::min<int64_t>(kCols, N - q * kCols));
        switch (rows) {
          case 1: tile<1>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 2: tile<2>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 3: tile<3>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 4: tile<4>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 5: tile<5>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 6: tile<6>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 7: tile<7>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          case 8: tile<8>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
          default: tile<kRows>(d1, d2, i, panel, c, ldc, nc, accumulate); break;
        }
      }
    }
  }
}

#endif  // FASTRNN_HAVE_VNNI_GEMM

}  // namespace fastrnn::cpu::FASTRNN_ISA
