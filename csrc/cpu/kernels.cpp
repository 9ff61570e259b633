// SPDX-License-Identifier: MIT
// cpu/kernels.cpp — runtime dispatch: picks, once, the pointwise kernel table compiled for the
// best instruction set the running CPU supports. The shipped binary needs only baseline x86-64
// (or the target's baseline elsewhere); AVX2+FMA code runs only where the CPU reports both.
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>

namespace fastrnn::cpu {

KernelTable make_kernel_table_baseline();
#if defined(FASTRNN_HAVE_AVX2)
KernelTable make_kernel_table_avx2();
#endif

namespace {
// FASTRNN_SIMD=baseline forces the baseline kernels (tests use it to cover both tables).
bool cpu_has_avx2_fma() {
#if defined(FASTRNN_HAVE_AVX2)
  const char* forced = std::getenv("FASTRNN_SIMD");
  if (forced && std::strcmp(forced, "baseline") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

const char* kernels_isa() {
  static const char* isa = cpu_has_avx2_fma() ? "avx2+fma" : "baseline";
  return isa;
}

const KernelTable& kernels() {
  static const KernelTable table = [] {
#if defined(FASTRNN_HAVE_AVX2)
    if (cpu_has_avx2_fma()) return make_kernel_table_avx2();
#endif
    return make_kernel_table_baseline();
  }();
  return table;
}

}  // namespace fastrnn::cpu
