// SPDX-License-Identifier: MIT
// cuda/cublas.h — the one cuBLAS wrapper of the CUDA engine: row-major GEMM for float, double,
// half and bfloat16 (those two accumulate in float), one handle per device and host thread,
// bound to the caller's stream. TF32 is never used: float32 means float32.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/check.h"
#include "fastrnn/platform.h"

namespace fastrnn::cuda {

template <class T> struct BlasType;
template <> struct BlasType<float> {
  static constexpr cudaDataType_t kData = CUDA_R_32F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F;
  using Scalar = float;
};
template <> struct BlasType<double> {
  static constexpr cudaDataType_t kData = CUDA_R_64F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_64F;
  using Scalar = double;
};
template <> struct BlasType<__half> {
  static constexpr cudaDataType_t kData = CUDA_R_16F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F;
  using Scalar = float;
};
template <> struct BlasType<__nv_bfloat16> {
  static constexpr cudaDataType_t kData = CUDA_R_16BF;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F;
  using Scalar = float;
};

// The handle of the current device for this host thread, bound to `stream`.
inline cublasHandle_t blas_handle(cudaStream_t stream) {
  constexpr int kMaxDevices = 64;
  thread_local cublasHandle_t handles[kMaxDevices] = {};
  int device = 0;
  FASTRNN_CUDA_CHECK(cudaGetDevice(&device));
  FASTRNN_CHECK(device < kMaxDevices, "device: index ", device, " beyond ", kMaxDevices);
  if (!handles[device]) FASTRNN_CUBLAS_CHECK(cublasCreate(&handles[device]));
  FASTRNN_CUBLAS_CHECK(cublasSetStream(handles[device], stream));
  return handles[device];
}

// C[M,N] = alpha·op(A)·op(B) + beta·C, row-major, as gemm() in cpu/gemm.h (same meaning of
// every argument). Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLAS
// gets the operands swapped. Sizes must fit in int (checked).
template <class T>
void gemm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
          float alpha, const T* A, int64_t lda, const T* B, int64_t ldb, float beta, T* C,
          int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  constexpr int64_t kMax = 2147483647;
  FASTRNN_CHECK(M <= kMax && N <= kMax && K <= kMax && lda <= kMax && ldb <= kMax &&
                    ldc <= kMax,
                "gemm: sizes beyond 32-bit cuBLAS indexing (M=", M, " N=", N, " K=", K, ")");
  using S = typename BlasType<T>::Scalar;
  const S a = S(alpha), b = S(beta);
  FASTRNN_CUBLAS_CHECK(cublasGemmEx(
      blas_handle(stream), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      int(N), int(M), int(K), &a, B, BlasType<T>::kData, int(ldb > 0 ? ldb : 1), A,
      BlasType<T>::kData, int(lda > 0 ? lda : 1), &b, C, BlasType<T>::kData, int(ldc > 0 ? ldc : 1),
      BlasType<T>::kCompute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace fastrnn::cuda
