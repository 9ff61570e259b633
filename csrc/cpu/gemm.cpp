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
