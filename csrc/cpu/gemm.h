// SPDX-License-Identifier: MIT
// cpu/gemm.h — the one BLAS wrapper of the CPU engine (scipy-openblas32's cblas). Row-major,
// 64-bit sizes: calls larger than 32-bit BLAS can index are split into pieces, never refused.
#pragma once

#include <cstdint>
#include <string>

namespace fastrnn::cpu {

// C[M,N] = alpha·op(A)·op(B) + beta·C, all row-major.
//   op(A) is [M,K]: A is [M,K] with row stride lda, or with trans_a [K,M] with row stride lda.
//   op(B) is [K,N]: B is [K,N] with row stride ldb, or with trans_b [N,K] with row stride ldb.
// C must not alias A or B. K == 0 gives C = beta·C (beta == 0 writes zeros, ignoring C).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

std::string blas_config();  // OpenBLAS's own description (version, core, build options)
int blas_threads();
void set_blas_threads(int n);

}  // namespace fastrnn::cpu
