// SPDX-License-Identifier: MIT
// cpu/gemm.cpp — cblas calls behind gemm<T>(), with the splitting that lets 64-bit problem
// sizes through 32-bit BLAS integers. scipy-openblas32 prefixes every symbol with "scipy_".
#include "cpu/gemm.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include <cblas.h>

#include "fastrnn/platform.h"

namespace fastrnn::cpu {
namespace {

// Largest piece handed to BLAS in one call along M, N or K.
constexpr int64_t kMaxPiece = int64_t(1) << 30;

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
               const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
               const double* a, int lda, const double* b, int ldb, double beta, double* c,
               int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_gemv(CBLAS_TRANSPOSE t, int m, int n, float alpha, const float* a, int lda,
               const float* x, int incx, float beta, float* y) {
  scipy_cblas_sgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}
void blas_gemv(CBLAS_TRANSPOSE t, int m, int n, double alpha, const double* a, int lda,
               const double* x, int incx, double beta, double* y) {
  scipy_cblas_dgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  FASTRNN_CHECK(lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
                "gemm: a matrix row of more than ", INT_MAX, " elements is not supported (lda=",
                lda, ", ldb=", ldb, ", ldc=", ldc, ")");
  if (K <= 0) {  // C = beta·C; BLAS would do it too, but not all of them define it
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (M > kMaxPiece) {
    for (int64_t m0 = 0; m0 < M; m0 += kMaxPiece)
      gemm(trans_a, trans_b, std::min(kMaxPiece, M - m0), N, K, alpha,
           trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc, ldc);
    return;
  }
  if (N > kMaxPiece) {
    for (int64_t n0 = 0; n0 < N; n0 += kMaxPiece)
      gemm(trans_a, trans_b, M, std::min(kMaxPiece, N - n0), K, alpha, A, lda,
           trans_b ? B + n0 * ldb : B + n0, ldb, beta, C + n0, ldc);
    return;
  }
  if (K > kMaxPiece) {  // split the sum: later pieces accumulate into C
    for (int64_t k0 = 0; k0 < K; k0 += kMaxPiece)
      gemm(trans_a, trans_b, M, N, std::min(kMaxPiece, K - k0), alpha,
           trans_a ? A + k0 * lda : A + k0, lda, trans_b ? B + k0 : B + k0 * ldb, ldb,
           k0 == 0 ? beta : T(1), C, ldc);
    return;
  }
  if (M == 2 || M == 3) {
    // A few rows: one gemv per row still beats a gemm that packs B (the per-step products of
    // float64, and of CPUs without AVX2+FMA; float32 on AVX2 runs the engine's panel GEMM,
    // which reads the weights once for all rows). Measured with
    // `python -m fastrnn bench --shape 50,B,256,256 --cells lstm --threads 1` (gemm -> gemv,
    // inference / training ms): B=2 6.5 -> 3.1-3.6 / 16.2 -> 9.7-11.0, B=3 9.0 -> 6.1-6.3 /
    // 18.4 -> 11.6-14.6; at B=4 gemm (6.3 / 15.7) is no slower than 4x the B=1 gemv run
    // (4 x 1.9 / 4 x 4.0), so gemm stays from 4 rows up.
    for (int64_t i = 0; i < M; ++i)
      gemm(trans_a, trans_b, 1, N, K, alpha, trans_a ? A + i : A + i * lda, lda, B, ldb, beta,
           C + i * ldc, ldc);
    return;
  }
  if (M == 1) {
    // One row (batch 1: every per-step product of a single sequence) is a matrix-vector
    // product. sgemm would pack the whole weight matrix for that one row on every call, which
    // costs as much as the product itself; gemv reads the weights once, in place.
    // c = op(B)ᵀ·a: B [N,K] (trans_b) is y = B·a; B [K,N] is y = Bᵀ·a. a is A's one row, or
    // with trans_a its one column (stride lda). y is zeroed first when beta == 0, so NaN in C
    // never survives as 0·NaN.
    if (beta == T(0)) std::memset(C, 0, sizeof(T) * size_t(N));
    if (trans_b)
      blas_gemv(CblasNoTrans, int(N), int(K), alpha, B, int(std::max<int64_t>(ldb, 1)), A,
                trans_a ? int(lda) : 1, beta, C);
    else
      blas_gemv(CblasTrans, int(K), int(N), alpha, B, int(std::max<int64_t>(ldb, 1)), A,
                trans_a ? int(lda) : 1, beta, C);
    return;
  }
  blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, int(M),
            int(N), int(K), alpha, A, int(std::max<int64_t>(lda, 1)), B,
            int(std::max<int64_t>(ldb, 1)), beta, C, int(std::max<int64_t>(ldc, 1)));
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t);

std::string blas_config() {
  return std::string(scipy_openblas_get_config()) + " (" + scipy_openblas_get_corename() + ")";
}
int blas_threads() { return scipy_openblas_get_num_threads(); }
void set_blas_threads(int n) { scipy_openblas_set_num_threads(n); }

}  // namespace fastrnn::cpu
