// SPDX-License-Identifier: MIT
// platform.h — the few macros shared by the CPU and CUDA compilers: FASTRNN_HD for maths that
// both compile, and FASTRNN_CHECK for argument checks that become std::invalid_argument.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline __attribute__((always_inline))
#endif

// Fully unroll a loop over gates: the vectoriser then sees one straight-line body per unit.
#if defined(__CUDACC__) || defined(__clang__)
#define FASTRNN_UNROLL _Pragma("unroll")
#else
#define FASTRNN_UNROLL _Pragma("GCC unroll 8")
#endif

namespace fastrnn {

// Builds a message from streamable parts: check_msg("lengths: expected ", a, ", got ", b).
template <class... Parts>
std::string check_msg(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace fastrnn

// FASTRNN_CHECK(cond, parts...) throws std::invalid_argument (Python: ValueError) whose text
// is the concatenation of parts; name the argument, the expected and the received value.
#define FASTRNN_CHECK(cond, ...)                                         \
  do {                                                                   \
    if (!(cond)) throw std::invalid_argument(::fastrnn::check_msg(__VA_ARGS__)); \
  } while (0)
