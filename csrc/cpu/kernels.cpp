// SPDX-License-Identifier: MIT
// cpu/kernels.cpp — runtime dispatch: picks, once, the kernel table compiled for the best
// instruction set the running CPU supports. The shipped binary needs only baseline x86-64 (or
// the target's baseline elsewhere); AVX2+FMA code runs only where the CPU reports both, AVX-512
// code only where it reports AVX-512 F, BW, VL and DQ (and the OS saves their registers:
// __builtin_cpu_supports checks XGETBV).
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>

namespace fastrnn::cpu {

KernelTable make_kernel_table_baseline();
#if defined(FASTRNN_HAVE_AVX2)
KernelTable make_kernel_table_avx2();
KernelTable make_kernel_table_avx512();
#endif

namespace {
enum class Isa { kBaseline, kAvx2, kAvx512 };

// The best table this CPU runs, capped by FASTRNN_SIMD=avx2 or =baseline (tests use them to
// cover every table on one machine).
Isa best_isa() {
#if defined(FASTRNN_HAVE_AVX2)
  const char* forced = std::getenv("FASTRNN_SIMD");
  if (forced && std::strcmp(forced, "baseline") == 0) return Isa::kBaseline;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kBaseline;
  if (forced && std::strcmp(forced, "avx2") == 0) return Isa::kAvx2;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 ? Isa::kAvx512 : Isa::kAvx2;
#else
  return Isa::kBaseline;
#endif
}

Isa isa() {
  static const Isa chosen = best_isa();
  return chosen;
}
}  // namespace

const char* kernels_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512+fma";
    case Isa::kAvx2: return "avx2+fma";
    default: return "baseline";
  }
}

const KernelTable& kernels() {
  static const KernelTable table = [] {
#if defined(FASTRNN_HAVE_AVX2)
    if (isa() == Isa::kAvx512) return make_kernel_table_avx512();
    if (isa() == Isa::kAvx2) return make_kernel_table_avx2();
#endif
    return make_kernel_table_baseline();
  }();
  return table;
}

}  // namespace fastrnn::cpu
