// SPDX-License-Identifier: MIT
// cuda/check.h — CUDA and cuBLAS errors become std::runtime_error("file:line: what"), never a
// process exit: a library must let its caller recover.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fastrnn::cuda {

inline void throw_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + ": " +
                           cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
inline void throw_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           ": cuBLAS " + cublasGetStatusName(s) + " (" +
                           cublasGetStatusString(s) + ")");
}

}  // namespace fastrnn::cuda

#define FASTRNN_CUDA_CHECK(expr)                                                   \
  do {                                                                             \
    cudaError_t fastrnn_e_ = (expr);                                               \
    if (fastrnn_e_ != cudaSuccess)                                                 \
      ::fastrnn::cuda::throw_cuda(fastrnn_e_, #expr, __FILE__, __LINE__);          \
  } while (0)

#define FASTRNN_CUBLAS_CHECK(expr)                                                 \
  do {                                                                             \
    cublasStatus_t fastrnn_s_ = (expr);                                            \
    if (fastrnn_s_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::fastrnn::cuda::throw_cublas(fastrnn_s_, #expr, __FILE__, __LINE__);        \
  } while (0)
