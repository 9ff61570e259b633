// SPDX-License-Identifier: MIT
// cpu/kernels_isa.cpp — compiled once per instruction set (CMake defines FASTRNN_ISA and the
// matching -m flags: "baseline" with none, "avx2" with -mavx2 -mfma, "avx512" with those and
// -mavx512f/bw/vl/dq). Instantiates the
// pointwise kernels of every cell × dtype, and the panel GEMM and the FMA peak loop where the
// instruction set has them, and hands them out as one table. Nothing else.
#include "fastrnn/cells/gru.h"
#include "fastrnn/cells/lstm.h"
#include "fastrnn/cells/rnn.h"
#include "fastrnn/problem.h"
#include "cpu/fma_peak.h"
#include "cpu/panel_gemm.h"
#include "cpu/panel_gemm_vnni.h"
#include "cpu/pointwise.h"

#define FASTRNN_CONCAT2(a, b) a##b
#define FASTRNN_CONCAT(a, b) FASTRNN_CONCAT2(a, b)

namespace fastrnn::cpu {

KernelTable FASTRNN_CONCAT(make_kernel_table_, FASTRNN_ISA)() {
  namespace isa = FASTRNN_ISA;
  KernelTable t;
  t.f32[int(CellKind::kLstm)] = isa::make_cell_kernels<Lstm, float>();
  t.f32[int(CellKind::kGru)] = isa::make_cell_kernels<Gru, float>();
  t.f32[int(CellKind::kGruResetBefore)] = isa::make_cell_kernels<GruResetBefore, float>();
  t.f32[int(CellKind::kRnnTanh)] = isa::make_cell_kernels<RnnTanh, float>();
  t.f32[int(CellKind::kRnnRelu)] = isa::make_cell_kernels<RnnRelu, float>();
  t.f64[int(CellKind::kLstm)] = isa::make_cell_kernels<Lstm, double>();
  t.f64[int(CellKind::kGru)] = isa::make_cell_kernels<Gru, double>();
  t.f64[int(CellKind::kGruResetBefore)] = isa::make_cell_kernels<GruResetBefore, double>();
  t.f64[int(CellKind::kRnnTanh)] = isa::make_cell_kernels<RnnTanh, double>();
  t.f64[int(CellKind::kRnnRelu)] = isa::make_cell_kernels<RnnRelu, double>();
#if defined(FASTRNN_HAVE_PANEL_GEMM)
  t.panel_gemm = &isa::panel_gemm<float>;
  t.panel_gemm_bf16 = &isa::panel_gemm<uint16_t>;
  t.panel_gemm_int8 = &isa::panel_gemm<int8_t>;
#endif
#if defined(FASTRNN_HAVE_VNNI_GEMM)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni")) {  // int8 products by vpdpbusd, panels in quads
    t.panel_gemm_int8 = &isa::panel_gemm_int8_vnni;
    t.int8_k_group = 4;
  }
#endif
#if defined(FASTRNN_HAVE_FMA_PEAK)
  t.fma_loop = &isa::fma_loop;
  t.fma_width = isa::kFmaWidth;
#endif
  return t;
}

}  // namespace fastrnn::cpu
