// SPDX-License-Identifier: MIT
// cpu/kernels.h — the interface between the CPU engine and its pointwise kernels: the step
// structs, the table of kernel pointers for every cell × dtype, and kernels(), which returns
// the table compiled for the best instruction set this CPU has (chosen once, at first use).
#pragma once

#include <cstdint>

namespace fastrnn::cpu {

// One-phase cells whose forward reads the input and recurrent pre-activations only as their
// sum ax[g] + ah[g] (the gradient of both is the same: !kSplitRecurrentGrad): LSTM and RNN.
// For them the engine runs the recurrent GEMM with beta = 1 straight into the step's input
// projection, and the forward kernels get ah = nullptr: no separate buffer to zero, fill and
// read back each step.
template <class Cell>
inline constexpr bool kSumsPreactivations = !Cell::kSplitRecurrentGrad && !Cell::kResetBeforeMatmul;

// One forward step of one layer-direction, rows [0, B), hidden units [j0, j1) (a thread's
// share). ax and ah point at (row 0, gate 0, unit j0) of their layout, with row stride *_ld
// and gate stride *_gs (the engine keeps them per thread, packed: ld = G*(j1-j0), gs = j1-j0).
// Every other array is in the shared layout: row stride S*H for saved, H (y: y_ld) for the
// rest, gate stride H for the biases, and the kernel touches only its units' columns.
template <class T>
struct StepFwd {
  int64_t B = 0, H = 0, j0 = 0, j1 = 0;
  const T* ax = nullptr;      // W_ih x_t (no bias yet)
  int64_t ax_ld = 0, ax_gs = 0;
  const T* ah = nullptr;      // W_hh h_{t-1} (no bias yet); two-phase: see gru.h; nullptr
                              // when kSumsPreactivations (ax then holds W_ih x_t + W_hh h_{t-1})
  int64_t ah_ld = 0, ah_gs = 0;
  const T* b_ih = nullptr;    // [G*H] (zeros when the layer has no bias)
  const T* b_hh = nullptr;    // [G*H]
  const T* h_prev = nullptr;  // [B, H] read when the cell reads it, or to copy padded rows;
                              // nullptr with a projection (h state then is [B, P])
  T* h = nullptr;             // [B, H] written: new h (before any projection)
  const T* c_prev = nullptr;  // [B, H] cells with state
  T* c = nullptr;             // [B, H] cells with state, written
  T* y = nullptr;             // [B, H] written (0 on padded rows); nullptr with a projection
  int64_t y_ld = 0;           // row stride of y
  T* saved = nullptr;         // [B, S*H] written when training (and always for two-phase cells)
  T* rh = nullptr;            // [B, H] two-phase only: r⊙h_prev, written
  const uint8_t* active = nullptr;  // [B] 1 = step t is inside sequence b; nullptr = all
};

// One backward step, rows [0, B), hidden units [j0, j1); every array in the shared layout.
template <class T>
struct StepBwd {
  int64_t B = 0, H = 0, j0 = 0, j1 = 0;
  const T* saved = nullptr;   // [B, S*H] from the forward step
  const T* h_prev = nullptr;  // [B, H] when the cell reads it
  const T* c_prev = nullptr;  // [B, H] cells with state
  const T* c = nullptr;       // [B, H] cells with state
  const T* dy = nullptr;      // [B, H] read (no projection): added to dh on active rows
  int64_t dy_ld = 0;          // row stride of dy
  T* dh = nullptr;            // [B, H] no projection: in dL/dh_t from later steps, out the
                              // part of dL/dh_{t-1} that bypasses W_hh (rows kept if padded)
  const T* dh_raw = nullptr;  // [B, H] with a projection: dL/d(h before W_hr), used as dh
  T* h_raw = nullptr;         // [B, H] with a projection: o⊙tanh(c) recomputed, written
  T* dc = nullptr;            // [B, H] in dL/dc_t, out dL/dc_{t-1}
  T* dax = nullptr;           // [B, G*H] written: dL/d(input pre-activations)
  T* dah = nullptr;           // [B, G*H] written when the cell splits them, else == dax
  const T* drh = nullptr;     // [B, H] two-phase: dL/d(r⊙h_prev)
  T* rh = nullptr;            // [B, H] two-phase: r⊙h_prev recomputed, written
  const uint8_t* active = nullptr;
};

// The kernels of one cell and dtype, as compiled for one instruction set.
template <class T>
struct CellKernels {
  using Fwd = void (*)(const StepFwd<T>&);
  using Bwd = void (*)(const StepBwd<T>&);
  Fwd forward_infer = nullptr;  // one-phase cells
  Fwd forward_train = nullptr;
  Bwd backward = nullptr;
  Bwd backward_projected = nullptr;  // cells that can project
  Fwd forward_gates = nullptr;       // two-phase cells
  Fwd forward_state = nullptr;
  Bwd backward_state = nullptr;
  Bwd backward_gates = nullptr;
};

// One block of columns of A in a panel product: M rows of K floats, row stride lda, read in
// place.
struct PanelA {
  const float* a = nullptr;
  int64_t lda = 0, K = 0;
};
// C[M, N] = [A1 | A2]·B, or C += [A1 | A2]·B when accumulate, with B packed into column
// panels of 16 that are A1.K + A2.K rows deep (the engine's pack_panels; see
// cpu/panel_gemm.h). A1.K may be 0: a product of one A (A1 is x_t in the stacked product);
// both may be 0 (an empty input size): C = 0, or C unchanged when accumulate.
using PanelGemm = void (*)(int64_t M, int64_t N, PanelA A1, PanelA A2, const float* panels,
                           float* C, int64_t ldc, bool accumulate);
// The same with bfloat16 panels (each value a float32's upper 16 bits), widened on load.
using PanelGemmBf16 = void (*)(int64_t M, int64_t N, PanelA A1, PanelA A2,
                               const uint16_t* panels, float* C, int64_t ldc, bool accumulate);
// The same with int8 panels (per-column scales in each panel's header, see panel_gemm.h).
using PanelGemmInt8 = void (*)(int64_t M, int64_t N, PanelA A1, PanelA A2, const int8_t* panels,
                               float* C, int64_t ldc, bool accumulate);
constexpr int64_t kPanelCols = 16;  // columns per panel
constexpr int64_t kPanelRows = 6;   // rows of C per micro-kernel tile (AVX2; AVX-512: 12)
// int8 panels come in two layouts (KernelTable::int8_k_group says which the table reads):
// - 1, rows: a header of a float scale per column for each of A1 and A2 (2 × 16 floats), then
//   the panel's rows of 16 bytes, k in order; read by widening each byte to a float.
// - 4, quads (AVX-512 VNNI): a header of those scales and, per column and part, the sum of its
//   q (2 × 16 int32), then each part's rows in groups of 4 (the part's depth rounded up to a
//   multiple of 4 with zero rows), a group being 16 columns × 4 bytes, column c's 4 values
//   together: what vpdpbusd multiplies with 4 bytes of A.
constexpr int64_t kInt8PanelHeader = 2 * kPanelCols * 4;
constexpr int64_t kInt8QuadHeader = 4 * kPanelCols * 4;
// Products deeper than this stay float32: the quads' int32 sums of 255·127 per term must
// not overflow.
constexpr int64_t kInt8MaxDepth = 60000;
constexpr int kFmaChains = 12;      // independent FMA chains of the peak loop, a round each

// Every cell × dtype, for one instruction set.
struct KernelTable {
  CellKernels<float> f32[5];   // indexed by CellKind
  CellKernels<double> f64[5];
  PanelGemm panel_gemm = nullptr;  // AVX2+FMA and AVX-512 only; null: the engine calls BLAS
  PanelGemmBf16 panel_gemm_bf16 = nullptr;  // with panel_gemm
  PanelGemmInt8 panel_gemm_int8 = nullptr;  // with panel_gemm
  int int8_k_group = 1;  // the int8 panels' layout: 1 rows, 4 quads (see kInt8QuadHeader)
  // AVX2+FMA and AVX-512 only: `rounds` × kFmaChains FMAs of fma_width floats, nothing else
  // (cpu/fma_peak.h)
  float (*fma_loop)(int64_t rounds, float seed) = nullptr;
  int fma_width = 0;
};

// The table for this CPU: AVX-512 code where the CPU has AVX-512 F/BW/VL/DQ, AVX2+FMA code
// where it has both, else the baseline x86-64 code. FASTRNN_SIMD=avx2 or =baseline (read once)
// caps it: tests use it to cover every table on one machine.
const KernelTable& kernels();
// "avx512+fma", "avx2+fma" or "baseline": which table kernels() returns.
const char* kernels_isa();

}  // namespace fastrnn::cpu
