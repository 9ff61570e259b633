// SPDX-License-Identifier: MIT
// cpu/engine.cpp — the CPU engine: one layer and direction of any cell, forward and backward.
// It owns the GEMMs, the time loop and its direction, length masking, the training reserve
// and the scratch memory; the cells own the maths (cells/*.h) and cpu/pointwise.h applies it.
//
// Layers and directions: forward_stack/backward_stack run the layer-directions in turn, the
// directions of a layer writing side by side into one buffer, dropout between layers.
//
// Forward, per step: one product [x_t | h_{t-1}]·[W_ih | W_hh]ᵀ and one fused pointwise pass
// (one-phase cells on the panel GEMM; GRU's n rows as two products); otherwise (two-phase
// GRU, float64, batches below 4 rows) the input projection W_ih·x of a chunk of time steps
// as one GEMM, then per step one recurrent GEMM (two for two-phase cells) and the pointwise
// pass; plus W_hr for a projection. Backward, per step: one pointwise pass and one GEMM for
// dh; after the loop dx, dW_ih, dW_hh (and dW_hr) are one GEMM each over all T·B rows; the
// bias gradients are summed step by step.
// Scratch is allocated once per call, never per step.
#include "fastrnn/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "cpu/blocks.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/threads.h"
#include "fastrnn/cells/all.h"
#include "fastrnn/dropout.h"
#include "fastrnn/platform.h"
#include "fastrnn/stack.h"

namespace fastrnn {

int gate_count(CellKind cell) {
  return with_cell(cell, [](auto c) { return decltype(c)::kGates; });
}

int64_t reserve_elements(CellKind cell, const RnnShape& shape) {
  return with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    return ReserveLayout::make(shape, Cell::kSaved, Cell::kHasCellState).total;
  });
}

int64_t stack_reserve_elements(CellKind cell, const RnnShape& s, int L, int D) {
  return int64_t(L) * D * reserve_elements(cell, s) + int64_t(L - 1) * s.T * s.B * D * s.hout();
}

void Workspace::release() {
  cpu::release_block({data, capacity});
  data = nullptr, capacity = 0, used = 0, wanted = 0;
}

void PackedWeights::release() {
  for (Form& f : forms) {
    cpu::release_block({f.data, f.capacity});
    f = Form{};
  }
}

namespace cpu {
namespace {

struct FreeBlock {
  size_t capacity = 0;  // 0: a piece of a Workspace, which the workspace keeps
  void operator()(void* p) const {
    if (capacity) release_block(Block{p, capacity});
  }
};
template <class E>
using Scratch = std::unique_ptr<E[], FreeBlock>;

// The workspace of the call running on this thread (forward_stack's WorkspaceScope), or none.
thread_local Workspace* tl_workspace = nullptr;

// Uninitialised scratch of n elements (n may be 0); std::bad_alloc when it cannot be had.
// From the call's Workspace where it has room; otherwise blocks of 256 KiB and more come
// from cpu/blocks.h, kept between calls.
template <class E>
Scratch<E> scratch(int64_t n) {
  const uint64_t count = static_cast<uint64_t>(std::max<int64_t>(n, 1));
  if (count > SIZE_MAX / 2 / sizeof(E)) throw std::bad_alloc();  // the byte count would overflow
  const size_t bytes = sizeof(E) * static_cast<size_t>(count);
  if (Workspace* ws = tl_workspace) {
    const size_t piece = (bytes + 63) / 64 * 64;  // every piece 64-byte aligned
    ws->wanted += piece;
    if (ws->used + piece <= ws->capacity) {
      E* p = reinterpret_cast<E*>(static_cast<char*>(ws->data) + ws->used);
      ws->used += piece;
      return Scratch<E>(p, FreeBlock{0});
    }
  }
  const Block b = allocate_block(bytes);
  return Scratch<E>(static_cast<E*>(b.p), FreeBlock{b.capacity});
}
template <class E>
Scratch<E> zeroed(int64_t n) {
  auto p = scratch<E>(n);
  std::memset(p.get(), 0, sizeof(E) * static_cast<size_t>(std::max<int64_t>(n, 1)));
  return p;
}
template <class T>
void copy_n(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
}

template <class T>
const CellKernels<T>& kernels_for(CellKind cell) {
  if constexpr (std::is_same_v<T, float>) return kernels().f32[int(cell)];
  else return kernels().f64[int(cell)];
}

void check_shape(const RnnShape& s, const int64_t* lengths, bool can_project, int G,
                 int64_t ldx, int64_t ldy) {
  const int64_t kMax = 2147483647;  // BLAS's row strides are 32-bit
  FASTRNN_CHECK(G * s.H <= kMax && s.I <= kMax && ldx <= kMax && ldy <= kMax,
                "shape: a matrix row of more than ", kMax, " elements is not supported (G*H=",
                G * s.H, ", I=", s.I, ")");
  FASTRNN_CHECK(s.T >= 0 && s.B >= 0 && s.I >= 0 && s.H > 0 && s.P >= 0,
                "shape: expected T, B, I >= 0, H > 0, P >= 0, got T=", s.T, " B=", s.B,
                " I=", s.I, " H=", s.H, " P=", s.P);
  FASTRNN_CHECK(s.P == 0 || can_project, "proj_size: only LSTM has a projection, got P=", s.P);
  FASTRNN_CHECK(s.P < s.H || s.P == 0, "proj_size: expected < hidden_size=", s.H, ", got ", s.P);
  if (lengths)
    for (int64_t b = 0; b < s.B; ++b)
      FASTRNN_CHECK(lengths[b] >= 0 && lengths[b] <= s.T, "lengths: expected values in [0, ",
                    s.T, "], got lengths[", b, "]=", lengths[b]);
}

// active[b] = 1 when step t lies inside sequence b (t < lengths[b]).
void mark_active(uint8_t* active, const int64_t* lengths, int64_t B, int64_t t) {
  for (int64_t b = 0; b < B; ++b) active[b] = t < lengths[b] ? 1 : 0;
}

// Time steps whose input projection is computed by one GEMM: enough rows (T_c·B >= 1024)
// for BLAS to run at full speed (S4 LSTM inference with 4,096 rows and with 1,024 is the
// same within the noise in the bench run quoted above: 398/377 vs 407/341 ms), while the
// scratch stays independent of T and smaller (S4: 17 MB, not 42).
int64_t projection_chunk(int64_t T, int64_t B) {
  return std::min<int64_t>(T, std::max<int64_t>(16, 1024 / std::max<int64_t>(B, 1)));
}

// acc[j] += Σ_{b < rows} a[b·ld + j], j < n: one step's batch rows (in cache when the step
// has just written them) summed in T into part[n], then added to acc in double.
template <class T>
void add_column_sums(const T* a, int64_t rows, int64_t ld, int64_t n, T* part, double* acc) {
  for (int64_t j = 0; j < n; ++j) part[j] = T(0);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t j = 0; j < n; ++j) part[j] += a[b * ld + j];
  for (int64_t j = 0; j < n; ++j) acc[j] += part[j];
}

// ---------------------------------------------------------------------------------------
// Per-step products against weights fixed for the whole call. Where the kernel table has a
// panel GEMM (float on AVX2+FMA), each thread packs its share of the weights into panels once
// per call (cpu/panel_gemm.h); otherwise BLAS reads them in place. From kStackedMinRows rows
// on, one-phase cells stack x_t with h_{t-1} in one product (forward_cell). Batches of 1-3
// rows use the panels too, each step's product reading the weights once for all its rows
// (BLAS ran one gemv per row: S5's 1 MB of W_hh read 1-3 times a step). What it bought under
// `python -m fastrnn bench` is in benchmarks/README.md (S1/S2 with panels from 4 rows: 10-25 %
// faster than BLAS; batches of 2 and 3: 1.04-1.74x; S5 at 2 threads 1.26-1.47x for LSTM and
// GRU, at 1 thread level).
// ---------------------------------------------------------------------------------------
constexpr int64_t kStackedMinRows = 4;
// Whether a call packs panels for itself (kept panels, PackedWeights, are always used): it
// pays when the steps read the weights more often than packing does, once. A one-step call
// never: its product reads each weight once, and packing (a transposing copy) costs more than
// BLAS's own packing in one gemm (`python -m fastrnn bench --streaming`, LSTM T = 1, B = 16:
// lstm_forward 689 us with panels against 537 for the NumPy step; after, 367 us). From 2
// steps at 4 rows it pays (BLAS's gemm packs the weights every step); below 4 rows BLAS runs
// gemv on the weights in place, and packing pays from about 16 row-steps. Several threads
// pack either way (BLAS would read each thread's rows from a row copy of its own).
bool packs_panels(int64_t T, int64_t B, int threads) {
  return threads > 1 || (T >= 2 && (B >= kStackedMinRows || T * B >= 16));
}

template <class T>
bool use_panels(int64_t rows) {
  return std::is_same_v<T, float> && kernels().panel_gemm != nullptr && rows >= 1;
}

// B of a per-step product C = A·B, [K, N]: trans = false, B[k][n] = w[k·ldw + n]; trans,
// column n of B is row (n / block)·block_stride + n mod block of w. The blocks are a thread's
// units gate by gate: block = its units, block_stride = H read in place from the caller's
// weights, block_stride = block from a copy that packs them together (the only form BLAS
// reads; block = N for plain rows). panels: the same B packed, when it is. k_x > 0: stacked
// weights (always in panels): the panels start with k_x rows of W_ih, for x_t's columns.
template <class T>
struct StepWeights {
  const T* w = nullptr;
  int64_t ldw = 0;
  bool trans = false;
  int64_t K = 0, N = 0;
  int64_t block = 0, block_stride = 0;
  const T* panels = nullptr;
  int64_t k_x = 0;
  // what the panels hold instead of T: bfloat16 (uint16_t) values or int8 rows with scales
  // (narrow_panels)
  PackedWeights::Narrow narrow = PackedWeights::Narrow::kNone;
};

// Where the panels of one operand go, for every thread at once: thread tid's share of the
// columns, starting at column n0 of n_total, at (n0 + kPanelCols·tid)·K. A share of n columns
// takes at most (n + kPanelCols - 1)·K floats, so the shares never overlap.
struct PanelSpace {
  int64_t K = 0, n_total = 0;
  int64_t floats(int threads) const {
    return n_total > 0 ? (n_total + kPanelCols * threads) * K : 0;
  }
  template <class T>
  T* at(T* base, int64_t n0, int tid) const { return base + (n0 + kPanelCols * tid) * K; }
};

// b's B into panels of kPanelCols columns, rows [k0, k0 + b.K) of panels k_total deep (0:
// b.K): panel q holds B[k][16q + c] at out[(q·k_total + k0 + k)·16 + c], zero past column N.
// Two operands packed into rows [0, K1) and [K1, K1 + K2) make the panels of [B1; B2].
template <class T>
void pack_panels(const StepWeights<T>& b, T* out, int64_t k0 = 0, int64_t k_total = 0) {
  if (k_total == 0) k_total = b.K;
  for (int64_t q = 0; q * kPanelCols < b.N; ++q) {
    T* panel = out + (q * k_total + k0) * kPanelCols;
    for (int64_t c = 0; c < kPanelCols; ++c) {
      const int64_t n = q * kPanelCols + c;
      if (n >= b.N) {
        for (int64_t k = 0; k < b.K; ++k) panel[k * kPanelCols + c] = T(0);
      } else if (b.trans) {
        const T* row = b.w + ((n / b.block) * b.block_stride + n % b.block) * b.ldw;
        for (int64_t k = 0; k < b.K; ++k) panel[k * kPanelCols + c] = row[k];
      }
    }
    if (!b.trans) {  // row k of the panel is 16 consecutive floats of row k of w
      const int64_t n0 = q * kPanelCols, cols = std::min<int64_t>(kPanelCols, b.N - n0);
      for (int64_t k = 0; k < b.K; ++k) copy_n(panel + k * kPanelCols, b.w + k * b.ldw + n0, cols);
    }
  }
}

// The operand B [K, N] of a thread's per-step products (see StepWeights; block = N unless
// given), in `panels` when given (nullptr: BLAS reads w), packed there unless they hold it
// already (pack = false: a prepared network's panels, PackedWeights).
template <class T>
StepWeights<T> step_weights(const T* w, int64_t ldw, bool trans, int64_t K, int64_t N,
                            T* panels, bool pack, int64_t block = 0, int64_t block_stride = 0) {
  StepWeights<T> s{w, ldw, trans, K, N, block ? block : N, block ? block_stride : N, nullptr};
  if (panels && N > 0) {
    if (pack) pack_panels(s, panels);
    s.panels = panels;
  }
  return s;
}

// A float operand's panels rewritten in place in a narrower type, as the bfloat16 and int8
// panel GEMMs read them (panel_gemm.h), one panel after another from the start of their span:
// - bfloat16 (a value's upper 16 bits): a row of 16 columns becomes 8 words, word c = column
//   c in the low half, column c + 8 in the high half. Exact for weights whose values are
//   bfloat16 values (the prepared network rounded them).
// - int8: each panel becomes its header and its rows in the layout of the kernel table
//   (kernels.h: KernelTable::int8_k_group): per column and part (the k_x rows of W_ih, the K
//   rows after), s = max|v| / 127 and q = round(v / s). Each column holds a whole row of its
//   weight matrix, so for weights quantized row by row (v = q·s, what the prepared network
//   keeps) this gives back q and s to within an ulp of s. A panel whose int8 form would not fit
//   in place (a few rows deep: int8_fits) is left in float32; the product is tiny.
template <class T>
bool int8_fits(const StepWeights<T>& s) {
  const int64_t depth = s.K + s.k_x;
  if (depth > kInt8MaxDepth) return false;
  if (kernels().int8_k_group == 4)
    return kInt8QuadHeader + kPanelCols * ((s.k_x + 3) / 4 * 4 + (s.K + 3) / 4 * 4) <=
           int64_t(sizeof(float)) * kPanelCols * depth;
  return kInt8PanelHeader + kPanelCols * depth <= int64_t(sizeof(float)) * kPanelCols * depth;
}

template <class T>
void narrow_panels(StepWeights<T>& s, PackedWeights::Narrow narrow) {
  if constexpr (std::is_same_v<T, float>) {
    using Narrow = PackedWeights::Narrow;
    if (!s.panels || narrow == Narrow::kNone) return;
    static_assert(kPanelCols == 16, "a bfloat16 panel row is 8 words of two columns");
    const int64_t depth = s.K + s.k_x, n_panels = (s.N + kPanelCols - 1) / kPanelCols;
    if (narrow == Narrow::kBf16) {
      const int64_t rows = n_panels * depth;
      uint32_t* bits = reinterpret_cast<uint32_t*>(const_cast<float*>(s.panels));
      for (int64_t r = 0; r < rows; ++r) {  // row r's words land at 8r, before its floats at 16r
        uint32_t row[16];
        std::memcpy(row, bits + 16 * r, sizeof(row));
        for (int c = 0; c < 8; ++c) bits[8 * r + c] = (row[c] >> 16) | (row[c + 8] & 0xFFFF0000u);
      }
      s.narrow = narrow;
      return;
    }
    if (!int8_fits(s)) return;
    const bool quads = kernels().int8_k_group == 4;
    const int64_t header = quads ? kInt8QuadHeader : kInt8PanelHeader;
    const int64_t kp[2] = {quads ? (s.k_x + 3) / 4 * 4 : s.k_x, quads ? (s.K + 3) / 4 * 4 : s.K};
    const int64_t panel_bytes = header + kPanelCols * (kp[0] + kp[1]);
    // panel q's int8 form starts at byte q·panel_bytes <= its floats' 64·q·depth (int8_fits),
    // and ends before panel q + 1's floats: each panel is copied out before it is overwritten
    std::vector<float> copy(size_t(depth * kPanelCols));
    char* out = reinterpret_cast<char*>(const_cast<float*>(s.panels));
    for (int64_t q = 0; q < n_panels; ++q) {
      std::memcpy(copy.data(), s.panels + q * depth * kPanelCols, copy.size() * sizeof(float));
      char* panel = out + q * panel_bytes;
      std::memset(panel, 0, size_t(panel_bytes));  // the quads' padding rows are 0
      float scales[2][kPanelCols];
      int32_t sums[2][kPanelCols];
      int8_t* rows = reinterpret_cast<int8_t*>(panel + header);
      for (int64_t c = 0; c < kPanelCols; ++c) {
        for (int part = 0; part < 2; ++part) {
          const int64_t k0 = part ? s.k_x : 0, k1 = part ? depth : s.k_x;
          int8_t* part_rows = rows + (part ? kPanelCols * kp[0] : 0);
          float m = 0.f;
          for (int64_t k = k0; k < k1; ++k) m = std::max(m, std::fabs(copy[k * kPanelCols + c]));
          const float scale = m / 127.f;
          scales[part][c] = scale;
          sums[part][c] = 0;
          for (int64_t k = k0; k < k1; ++k) {
            const float v = scale > 0.f ? std::nearbyint(copy[k * kPanelCols + c] / scale) : 0.f;
            const int8_t q = int8_t(std::clamp(v, -127.f, 127.f));
            const int64_t j = k - k0;  // the row within the part
            part_rows[quads ? (j / 4) * 4 * kPanelCols + 4 * c + j % 4 : j * kPanelCols + c] = q;
            sums[part][c] += q;
          }
        }
      }
      std::memcpy(panel, scales, sizeof(scales));
      if (quads) std::memcpy(panel + sizeof(scales), sums, sizeof(sums));
    }
    s.narrow = narrow;
  }
}

// The stacked operand of a thread's per-step product [x_t | h_{t-1}]·[W_ih | W_hh]ᵀ: N
// columns (its `block` units gate by gate, every H rows of both matrices) packed into one
// set of panels I + Ho deep. Only where use_panels holds: BLAS has no stacked form.
template <class T>
StepWeights<T> stacked_step_weights(const T* w_ih, int64_t I, const T* w_hh, int64_t Ho,
                                    int64_t N, int64_t block, int64_t H, T* panels, bool pack) {
  StepWeights<T> s{w_hh, Ho, true, Ho, N, block, H, panels, I};
  if (pack) {
    pack_panels(StepWeights<T>{w_ih, I, true, I, N, block, H}, panels, 0, I + Ho);
    pack_panels(s, panels, I, I + Ho);
  }
  return s;
}

// C[M, N] = A·B (accumulate: C += A·B); stacked weights (b.k_x > 0): C = [X | A]·B, X's
// b.k_x columns (row stride ldx) first.
template <class T>
void step_gemm(int64_t M, const T* A, int64_t lda, const StepWeights<T>& b, bool accumulate,
               T* C, int64_t ldc, const T* X = nullptr, int64_t ldx = 0) {
  if constexpr (std::is_same_v<T, float>) {
    if (b.panels && b.narrow == PackedWeights::Narrow::kBf16) {
      kernels().panel_gemm_bf16(M, b.N, {X, ldx, b.k_x}, {A, lda, b.K},
                                reinterpret_cast<const uint16_t*>(b.panels), C, ldc, accumulate);
      return;
    }
    if (b.panels && b.narrow == PackedWeights::Narrow::kInt8) {
      kernels().panel_gemm_int8(M, b.N, {X, ldx, b.k_x}, {A, lda, b.K},
                                reinterpret_cast<const int8_t*>(b.panels), C, ldc, accumulate);
      return;
    }
    if (b.panels) {
      kernels().panel_gemm(M, b.N, {X, ldx, b.k_x}, {A, lda, b.K}, b.panels, C, ldc, accumulate);
      return;
    }
  }
  // BLAS reads B as one matrix: packed operands' blocks are contiguous (block_stride == block)
  gemm<T>(false, b.trans, M, b.N, b.K, T(1), A, lda, b.w, b.ldw, accumulate ? T(1) : T(0), C,
          ldc);
}

// ---------------------------------------------------------------------------------------
// Forward. One parallel region per call: thread tid owns hidden units [j0, j1) (all G gates
// of them), packs its rows of W_ih and W_hh once, and per step runs its own GEMMs (the
// stacked one, or the input projection per chunk of steps and then the recurrent one) and
// its own pointwise pass; the threads meet at one barrier per step (two for two-phase cells
// and projections), after which h_t is complete for everyone.
// ---------------------------------------------------------------------------------------

// Rows g*H + j0 .. g*H + j1 of a [G*H, K] matrix, packed gate-major into [G*(j1-j0), K].
template <class T>
void pack_unit_rows(const T* w, int64_t G, int64_t H, int64_t K, int64_t j0, int64_t j1, T* out) {
  const int64_t n = j1 - j0;
  for (int64_t g = 0; g < G; ++g) copy_n(out + g * n * K, w + (g * H + j0) * K, n * K);
}

template <class Cell, class T>
void forward_cell(const ForwardParams<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const RnnShape& s = p.shape;
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t ldx = p.ldx ? p.ldx : I, ldy = p.ldy ? p.ldy : Ho;
  check_shape(s, p.lengths, Cell::kCanProject, G, ldx, ldy);
  const bool training = p.reserve != nullptr;
  const bool projected = P > 0;
  const int rev = p.reverse ? 1 : 0;
  const CellKernels<T>& k = kernels_for<T>(p.cell);

  auto zero_bias = zeroed<T>(p.w.b_ih ? 0 : GH);
  const T* b_ih = p.w.b_ih ? p.w.b_ih : zero_bias.get();
  const T* b_hh = p.w.b_hh ? p.w.b_hh : zero_bias.get();

  // State: the reserve's history when training, else two buffers used in turn.
  const ReserveLayout layout = ReserveLayout::make(s, S, Cell::kHasCellState);
  auto ping_h = scratch<T>(training ? 0 : 2 * B * Ho);
  auto ping_c = scratch<T>(training || !Cell::kHasCellState ? 0 : 2 * B * H);
  T* h_hist = training ? p.reserve + layout.h_hist : nullptr;
  T* c_hist = training ? p.reserve + layout.c_hist : nullptr;
  auto h_at = [&](int64_t idx) { return training ? h_hist + idx * B * Ho : ping_h.get() + (idx & 1) * B * Ho; };
  auto c_at = [&](int64_t idx) { return training ? c_hist + idx * B * H : ping_c.get() + (idx & 1) * B * H; };
  // State indices: in training, step t reads h_hist[t + rev] and writes h_hist[t + 1 - rev]
  // (see ReserveLayout); in inference, step number n reads buffer n and writes buffer n + 1.
  const int64_t first = training ? (rev ? T_ : 0) : 0;
  const int64_t last = training ? (rev ? 0 : T_) : T_;
  copy_n(h_at(first), p.h0, B * Ho);
  if constexpr (Cell::kHasCellState) copy_n(c_at(first), p.c0, B * H);

  ThreadPool& pool = ThreadPool::instance();
  const int64_t Tc = std::max<int64_t>(projection_chunk(T_, B), 1);
  // With panels, one-phase cells take the input projection into the per-step product: one
  // product [x_t | h_{t-1}]·[W_ih | W_hh]ᵀ per step, K = I + Hout, written straight into the
  // step's pre-activations (no chunk of projections computed ahead by BLAS, zeroed first by
  // it, and read back from memory step by step). GRU stacks its r and z rows so; its n rows
  // need W_in x_t and W_hn h_{t-1} apart (n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))), two
  // products, with ah's r and z columns left at 0.
  constexpr bool kSummed = kSumsPreactivations<Cell>;  // the recurrent GEMM adds into ax
  constexpr bool kTwoPhase = Cell::kResetBeforeMatmul;
  const bool panels = use_panels<T>(B) && (p.packed || packs_panels(T_, B, pool.size()));
  // one step reads W_ih once whatever it does: in one product with W_hh, as from 4 rows
  const bool stacked = !kTwoPhase && panels && (B >= kStackedMinRows || T_ == 1);
  const bool n_apart = stacked && !kSummed;  // GRU
  // What a thread keeps per hidden unit it owns: its packed rows of W_ih and of W_hh (these
  // only for BLAS: the panels below read W_hh in place), and its columns of the input and
  // recurrent projections (stacked: of one step). Thread buffers start at j0 * per_unit, so
  // one allocation fits any thread count.
  const int64_t per_unit =
      stacked ? B * G * (kSummed ? 1 : 2)
              : G * (I + (panels ? 0 : Ho)) + Tc * B * G + (kSummed ? 0 : B * G);
  auto own = scratch<T>(H * per_unit);
  const int max_threads = pool.size();  // the region gets at most this many
  auto actives = scratch<uint8_t>(max_threads * B);
  auto saved_step = scratch<T>(!training && Cell::kResetBeforeMatmul ? B * S * H : 0);
  auto rh = scratch<T>(Cell::kResetBeforeMatmul ? B * H : 0);
  auto h_raw = scratch<T>(projected ? B * H : 0);
  // The per-step products' weights in panels: W_hh (stacked: [W_ih | W_hh]; two-phase cells
  // and GRU: its r, z rows, then its n rows, and GRU's W_in apart) and W_hr; A (h_{t-1},
  // r⊙h_{t-1}, h before W_hr; stacked: x_t and h_{t-1}) read in place.
  const bool two_parts = kTwoPhase || n_apart;  // the n rows apart
  const PanelSpace ps_hh{(stacked ? I : 0) + Ho, two_parts ? 2 * H : GH},
      ps_n{H, two_parts ? H : 0}, ps_in{I, n_apart ? H : 0}, ps_hr{H, projected ? P : 0};
  const int64_t n_pan_hh = ps_hh.floats(max_threads), n_pan_n = ps_n.floats(max_threads),
                n_pan_in = ps_in.floats(max_threads);
  const int64_t panel_floats = panels ? n_pan_hh + n_pan_n + n_pan_in + ps_hr.floats(max_threads) : 0;
  // A prepared network's panels (PackedWeights) are packed again only when what they were
  // packed for has changed; otherwise this call packs its own.
  PackedWeights::Form* kept = panels && p.packed ? &p.packed->forms[stacked ? 1 : 0] : nullptr;
  const bool reuse = kept && kept->ready && kept->threads == max_threads &&
                     kept->floats == panel_floats;
  if (kept && !reuse) {
    release_block({kept->data, kept->capacity});
    *kept = PackedWeights::Form{};
    const Block block = allocate_block(sizeof(T) * size_t(panel_floats));  // 64-byte aligned
    kept->data = block.p, kept->capacity = block.capacity;
    kept->floats = panel_floats;  // its thread count is recorded after the region
  }
  auto panel_buf = scratch<T>(panels && !kept ? panel_floats : 0);
  T* const panel_base = !panels ? nullptr : kept ? static_cast<T*>(kept->data) : panel_buf.get();
  int region_threads = max_threads;  // what the region got (fewer if the pool shrank since)
  // bfloat16 or int8 panels: kept ones of a network whose weights are such values
  const PackedWeights::Narrow narrow = kept ? p.packed->narrow : PackedWeights::Narrow::kNone;

  pool.run(max_threads, [&](int tid, int nt) {
    if (tid == 0) region_threads = nt;
    // kept panels were laid out for their thread count's shares of the units: a region of
    // another count (set_num_threads between pool.size() above and here) packs them afresh
    const bool pack = !reuse || nt != max_threads;
    int64_t j0, j1, p0 = 0, p1 = 0;
    // units in blocks of 8 (one vector of the pointwise pass), or of fewer where that many
    // fill whole panels of a stacked product (LSTM: 4 units, 16 columns), so that no thread
    // gets a panel more than the other (S2, H = 200 on two threads: 100 + 100 units, 25
    // panels each, not 104 + 96 and 26 + 24)
    const int64_t unit_block =
        stacked && kPanelCols % G == 0 ? std::min<int64_t>(kPanelCols / G, 8) : 8;
    split(H, tid, nt, unit_block, j0, j1);
    if (projected) split(P, tid, nt, 8, p0, p1);
    const int64_t hs = j1 - j0, Gs = G * hs;
    T* packed_ih = own.get() + j0 * per_unit;         // [G*hs, I], not stacked
    T* packed_hh = packed_ih + (stacked ? 0 : Gs * I);  // [G*hs, Ho], without panels
    T* ax = packed_hh + (panels ? 0 : Gs * Ho);  // [Tc*B, G*hs] (stacked: [B, G*hs])
    T* ah = kSummed ? nullptr : ax + (stacked ? 1 : Tc) * B * Gs;  // [B, G*hs]
    uint8_t* active = actives.get() + tid * B;
    // A thread that owns every unit would pack the matrices into their own layout: it reads
    // the caller's (S5, 1 thread: 2 MB fewer copied per call).
    const bool all_units = j0 == 0 && j1 == H;
    const bool copy_hh = !all_units && !panels;
    if (!all_units && !stacked) pack_unit_rows(p.w.w_ih, G, H, I, j0, j1, packed_ih);
    if (copy_hh) pack_unit_rows(p.w.w_hh, G, H, Ho, j0, j1, packed_hh);
    const T* w_ih = all_units ? p.w.w_ih : packed_ih;
    // my rows of W_hh, gate by gate: a block of hs rows every H rows of the caller's matrix,
    // or every hs rows of the copy
    const T* w_hh = copy_hh ? packed_hh : p.w.w_hh + j0 * Ho;
    const int64_t gate_rows = copy_hh ? hs : H;
    T* pan = panel_base;
    auto at = [&](const PanelSpace& ps, int64_t offset, int64_t n0) {
      return pan ? ps.at(pan + offset, n0, tid) : nullptr;
    };
    const int64_t n_stacked = two_parts ? 2 * hs : Gs;  // my columns of rec
    T* rec_panels = at(ps_hh, 0, (two_parts ? 2 : G) * j0);
    StepWeights<T> rec =
        stacked ? stacked_step_weights(p.w.w_ih + j0 * I, I, w_hh, Ho, n_stacked, hs, H,
                                       rec_panels, pack)
                : step_weights(w_hh, Ho, true, Ho, n_stacked, rec_panels, pack, hs, gate_rows);
    // two-phase cells and GRU: W_hn's rows [j0, j1), and GRU's W_in; projection: W_hr's
    // rows [p0, p1)
    StepWeights<T> rec_n, in_n, proj;
    if (two_parts)
      rec_n = step_weights(w_hh + 2 * gate_rows * Ho, Ho, true, H, hs,
                           at(ps_n, n_pan_hh, j0), pack);
    if (n_apart) {
      in_n = step_weights(p.w.w_ih + (2 * H + j0) * I, I, true, I, hs,
                          at(ps_in, n_pan_hh + n_pan_n, j0), pack);
      for (int64_t b = 0; b < B; ++b)  // ah's r and z columns: no product writes them
        std::fill_n(ah + b * Gs, 2 * hs, T(0));
    }
    if (projected)
      proj = step_weights(p.w.w_hr + p0 * H, H, true, H, p1 - p0,
                          at(ps_hr, n_pan_hh + n_pan_n + n_pan_in, p0), pack);
    if (narrow != PackedWeights::Narrow::kNone) {  // every product reads narrow panels
      for (StepWeights<T>* s : {&rec, &rec_n, &in_n, &proj}) {
        if (pack) narrow_panels(*s, narrow);
        else if (s->panels && (narrow == PackedWeights::Narrow::kBf16 || int8_fits(*s)))
          s->narrow = narrow;  // as narrow_panels left them
      }
    }
    int64_t lo = 0, hi = 0;  // time steps [lo, hi) currently projected in ax

    for (int64_t n = 0; n < T_; ++n) {
      const int64_t t = rev ? T_ - 1 - n : n;
      if (!stacked && (t < lo || t >= hi)) {
        lo = rev ? std::max<int64_t>(0, t + 1 - Tc) : t;
        hi = rev ? t + 1 : std::min(T_, t + Tc);
        gemm<T>(false, true, (hi - lo) * B, Gs, I, T(1), p.x + lo * B * ldx, ldx, w_ih, I, T(0),
                ax, Gs);
      }
      const T* h_prev = training ? h_at(t + rev) : h_at(n);
      T* h_next = training ? h_at(t + 1 - rev) : h_at(n + 1);
      if (p.lengths) mark_active(active, p.lengths, B, t);

      StepFwd<T> st;
      st.B = B;
      st.H = H;
      st.j0 = j0;
      st.j1 = j1;
      st.ax = stacked ? ax : ax + (t - lo) * B * Gs;
      st.ax_ld = Gs;
      st.ax_gs = hs;
      st.ah = ah;
      st.ah_ld = Gs;
      st.ah_gs = hs;
      st.b_ih = b_ih;
      st.b_hh = b_hh;
      st.active = p.lengths ? active : nullptr;
      if constexpr (Cell::kHasCellState) {
        st.c_prev = training ? c_at(t + rev) : c_at(n);
        st.c = training ? c_at(t + 1 - rev) : c_at(n + 1);
      }
      st.saved = training ? p.reserve + layout.saved + t * B * S * H : saved_step.get();

      if constexpr (Cell::kResetBeforeMatmul) {
        st.h_prev = h_prev;
        st.h = h_next;
        st.y = p.y + t * B * ldy;
        st.y_ld = ldy;
        st.rh = rh.get();
        step_gemm(B, h_prev, Ho, rec, false, ah, Gs);
        if (hs > 0) k.forward_gates(st);
        pool.barrier();  // r⊙h complete
        step_gemm(B, rh.get(), H, rec_n, false, ah + 2 * hs, Gs);
        if (hs > 0) k.forward_state(st);
      } else {
        if (stacked) {
          const T* x_t = p.x + t * B * ldx;
          step_gemm(B, h_prev, Ho, rec, false, ax, Gs, x_t, ldx);
          if (n_apart) {
            step_gemm(B, x_t, ldx, in_n, false, ax + 2 * hs, Gs);
            step_gemm(B, h_prev, Ho, rec_n, false, ah + 2 * hs, Gs);
          }
        } else if constexpr (kSummed)  // W_hh h_{t-1} added to W_ih x_t in place
          step_gemm(B, h_prev, Ho, rec, true, ax + (t - lo) * B * Gs, Gs);
        else
          step_gemm(B, h_prev, Ho, rec, false, ah, Gs);
        if (!training) st.saved = nullptr;
        if (!projected) {
          st.h_prev = h_prev;
          st.h = h_next;
          st.y = p.y + t * B * ldy;
          st.y_ld = ldy;
        } else {
          st.h = h_raw.get();  // padded rows are settled below, after W_hr
        }
        if (hs > 0) (training ? k.forward_train : k.forward_infer)(st);
        if (projected) {
          pool.barrier();  // h before W_hr complete
          // this thread's columns [p0, p1) of h_t = W_hr h_raw, straight into place
          T* y = p.y + t * B * ldy;
          for (int64_t b = 0; b < B; ++b) {
            const bool on = !p.lengths || active[b];
            if (!on) {
              copy_n(h_next + b * P + p0, h_prev + b * P + p0, p1 - p0);
              std::memset(y + b * ldy + p0, 0, sizeof(T) * size_t(p1 - p0));
            }
          }
          step_gemm(B, h_raw.get(), H, proj, false, y + p0, ldy);
          for (int64_t b = 0; b < B; ++b) {
            const bool on = !p.lengths || active[b];
            if (on) copy_n(h_next + b * P + p0, y + b * ldy + p0, p1 - p0);
            else std::memset(y + b * ldy + p0, 0, sizeof(T) * size_t(p1 - p0));
          }
        }
      }
      pool.barrier();  // h_t complete for every thread
    }
  });
  if (kept) kept->ready = true, kept->threads = region_threads;
  copy_n(p.h_n, h_at(last), B * Ho);
  if constexpr (Cell::kHasCellState) copy_n(p.c_n, c_at(last), B * H);
}

// ---------------------------------------------------------------------------------------
// Backward. One parallel region per call, threads owning the same units as in forward: per
// step each runs the pointwise backward of its units, the threads meet, and each computes
// its units' columns of dh_{t-1} = dL/d(pre-activations)·W_hh (a column slice of W_hh, read
// in place). After the loop the deferred GEMMs are split across the threads by rows.
// ---------------------------------------------------------------------------------------
// While alive, this thread's floating-point unit flushes subnormal results to zero and reads
// subnormal operands as zero (MXCSR FTZ and DAZ, x86-64 SSE/AVX), as XLA's CPU threads do; the
// previous mode comes back after. Backward runs under it: a gradient that vanishes along a
// long sequence (IMDB's classifier reads only the last step) becomes subnormal, and on Intel
// CPUs every FMA with a subnormal operand takes a microcode assist of ~100 cycles (measured,
// LSTM T=300 B=100 H=32, dy only at the end: backward 256-339 ms, and 18-24 ms with gradients
// that stay normal). What it changes: gradients below 1.2e-38 (float32) become 0.
class FlushSubnormals {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

template <class Cell, class T>
void backward_cell(const BackwardParams<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const RnnShape& s = p.shape;
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t TB = T_ * B;
  const int64_t ldx = p.ldx ? p.ldx : I, lddy = p.lddy ? p.lddy : Ho;
  check_shape(s, p.lengths, Cell::kCanProject, G, ldx, lddy);
  const bool projected = P > 0;
  const int rev = p.reverse ? 1 : 0;
  const CellKernels<T>& k = kernels_for<T>(p.cell);
  const ReserveLayout layout = ReserveLayout::make(s, S, Cell::kHasCellState);
  const T* h_hist = p.reserve + layout.h_hist;
  const T* c_hist = p.reserve + layout.c_hist;

  auto dh = zeroed<T>(B * Ho);  // dL/dh carried backwards in time
  auto dc = zeroed<T>(Cell::kHasCellState ? B * H : 0);
  if (p.dh_n) copy_n(dh.get(), p.dh_n, B * Ho);
  if (Cell::kHasCellState && p.dc_n) copy_n(dc.get(), p.dc_n, B * H);

  auto dax = scratch<T>(TB * GH);
  auto dah_own = scratch<T>(Cell::kSplitRecurrentGrad ? TB * GH : 0);
  T* dah = Cell::kSplitRecurrentGrad ? dah_own.get() : dax.get();
  auto d_hout = scratch<T>(projected ? TB * P : 0);      // dL/dh_out per step, for dW_hr
  auto h_raw = scratch<T>(projected ? TB * H : 0);       // o⊙tanh(c) per step, for dW_hr
  auto dh_raw = scratch<T>(projected ? B * H : 0);
  auto rh = scratch<T>(Cell::kResetBeforeMatmul ? TB * H : 0);  // r⊙h per step, for dW_hn
  auto drh = scratch<T>(Cell::kResetBeforeMatmul ? B * H : 0);
  ThreadPool& pool = ThreadPool::instance();
  const int max_threads = pool.size();  // the region gets at most this many
  auto actives = scratch<uint8_t>(max_threads * B);
  // dW_ih must not see padded steps of x even as 0·x: padding may hold NaN or inf, which
  // torch's PackedSequence never reads either. With lengths, those rows are zeroed in a copy.
  auto x_masked = scratch<T>(p.lengths ? TB * I : 0);
  const T* x_valid = p.lengths ? x_masked.get() : p.x;
  const int64_t ld_valid = p.lengths ? I : ldx;
  const T* h_prev_all = h_hist + rev * B * Ho;  // [T*B, Ho], row t*B+b = state before step t
  // Bias gradients: the column sums of dL/d(pre-activations) (b_ih) and, for cells that
  // split them, of dL/d(recurrent pre-activations) (b_hh), each thread its own units'
  // columns, added up step by step while the step's rows are in cache (a separate pass over
  // all T·B rows after the loop was ~3.5 % of S1 LSTM training in perf).
  const bool sum_bias = p.dw.b_ih || p.dw.b_hh;
  constexpr bool kSplitBias = Cell::kSplitRecurrentGrad;
  auto bias_acc = zeroed<double>(sum_bias ? (kSplitBias ? 2 : 1) * GH : 0);
  auto bias_part = scratch<T>(sum_bias ? H : 0);  // per thread: its units' entries
  // The per-step products' weights in panels, each thread its columns: dh_{t-1} gets
  // dL/d(pre-activations)·W_hh (two-phase cells: the r, z rows; the n rows give d(r⊙h)), and
  // with a projection dL/dh_out·W_hr gives dL/d(h before W_hr).
  constexpr bool kTwoPhase = Cell::kResetBeforeMatmul;
  const bool panels = use_panels<T>(B);
  const PanelSpace ps_dh{kTwoPhase ? 2 * H : GH, Ho},
      ps_2{kTwoPhase ? H : P, kTwoPhase || projected ? H : 0};
  const int64_t n_pan_dh = ps_dh.floats(max_threads);
  auto panel_buf = scratch<T>(panels ? n_pan_dh + ps_2.floats(max_threads) : 0);
  // Nothing inside a parallel region may throw (a thread leaving early would leave the others
  // at a barrier): everything is allocated and checked before it.

  pool.run(max_threads, [&](int tid, int nt) {
    const FlushSubnormals flush;
    int64_t j0, j1, p0 = 0, p1 = 0;
    split(H, tid, nt, 8, j0, j1);
    if (projected) split(P, tid, nt, 8, p0, p1);
    const int64_t hs = j1 - j0;
    uint8_t* active = actives.get() + tid * B;
    T* pan = panel_buf.get();
    T* part = bias_part.get() + j0;  // [hs]
    const int64_t d0 = projected ? p0 : j0, d1 = projected ? p1 : j1;  // my columns of dh
    const StepWeights<T> rec = step_weights(p.w.w_hh + d0, Ho, false, ps_dh.K, d1 - d0,
                                            panels ? ps_dh.at(pan, d0, tid) : nullptr, true);
    StepWeights<T> rec_2;  // two-phase: W_hn's columns [j0, j1); projection: W_hr's
    if (kTwoPhase || projected)
      rec_2 = step_weights(kTwoPhase ? p.w.w_hh + 2 * H * H + j0 : p.w.w_hr + j0, H, false,
                           ps_2.K, hs, panels ? ps_2.at(pan + n_pan_dh, j0, tid) : nullptr,
                           true);

    for (int64_t n = 0; n < T_; ++n) {
      const int64_t t = rev ? n : T_ - 1 - n;  // the forward's order, reversed
      if (p.lengths) mark_active(active, p.lengths, B, t);
      T* dax_t = dax.get() + t * B * GH;
      T* dah_t = dah + t * B * GH;

      StepBwd<T> st;
      st.B = B;
      st.H = H;
      st.j0 = j0;
      st.j1 = j1;
      st.saved = p.reserve + layout.saved + t * B * S * H;
      st.h_prev = h_hist + (t + rev) * B * Ho;
      if constexpr (Cell::kHasCellState) {
        st.c_prev = c_hist + (t + rev) * B * H;
        st.c = c_hist + (t + 1 - rev) * B * H;
        st.dc = dc.get();
      }
      st.dax = dax_t;
      st.dah = dah_t;
      st.active = p.lengths ? active : nullptr;

      if constexpr (Cell::kResetBeforeMatmul) {
        st.dy = p.dy + t * B * lddy;
        st.dy_ld = lddy;
        st.dh = dh.get();
        st.rh = rh.get() + t * B * H;
        st.drh = drh.get();
        if (hs > 0) k.backward_state(st);
        pool.barrier();  // da_n complete
        // d(r⊙h) = da_n·W_hn for my units, then dh_{t-1} += [da_r, da_z]·W_h{r,z}
        step_gemm(B, dax_t + 2 * H, GH, rec_2, false, drh.get() + j0, H);
        if (hs > 0) k.backward_gates(st);
        pool.barrier();  // da_r complete
        step_gemm(B, dax_t, GH, rec, true, dh.get() + j0, H);
      } else if (projected) {
        // dL/dh_out = carried dh + dy on active rows; there the carried dh is used up (the
        // GEMM below rebuilds it), on padded rows it passes through unchanged.
        T* dho = d_hout.get() + t * B * P;
        const T* dy = p.dy + t * B * lddy;
        for (int64_t b = 0; b < B; ++b) {
          T* dhb = dh.get() + b * P;
          if (p.lengths && !active[b]) {
            std::memset(dho + b * P + p0, 0, sizeof(T) * size_t(p1 - p0));
            continue;
          }
          for (int64_t j = p0; j < p1; ++j) {
            dho[b * P + j] = dhb[j] + dy[b * lddy + j];
            dhb[j] = T(0);
          }
        }
        pool.barrier();  // dL/dh_out complete
        step_gemm(B, dho, P, rec_2, false, dh_raw.get() + j0, H);
        st.dh_raw = dh_raw.get();
        st.h_raw = h_raw.get() + t * B * H;
        if (hs > 0) k.backward_projected(st);
        pool.barrier();  // dL/d(pre-activations) complete
        step_gemm(B, dah_t, GH, rec, true, dh.get() + p0, P);
      } else {
        st.dy = p.dy + t * B * lddy;
        st.dy_ld = lddy;
        st.dh = dh.get();
        if (hs > 0) k.backward(st);
        pool.barrier();  // dL/d(pre-activations) complete
        step_gemm(B, dah_t, GH, rec, true, dh.get() + j0, H);
      }
      if (sum_bias && hs > 0) {  // my columns of dax_t (and dah_t) are final
        for (int g = 0; g < G; ++g) {
          const int64_t col = g * H + j0;
          add_column_sums(dax_t + col, B, GH, hs, part, bias_acc.get() + col);
          if constexpr (kSplitBias)
            add_column_sums(dah_t + col, B, GH, hs, part, bias_acc.get() + GH + col);
        }
      }
    }
    // Deferred over all T·B rows, split across the threads: dx by rows, the weight
    // gradients by their rows; the biases are summed already (above).
    pool.barrier();
    int64_t r0, r1;
    split(TB, tid, nt, 1, r0, r1);
    gemm<T>(false, false, r1 - r0, I, GH, T(1), dax.get() + r0 * GH, GH, p.w.w_ih, I,
            p.accumulate_dx ? T(1) : T(0), p.dx + r0 * ldx, ldx);
    if (p.lengths) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r / B, b = r % B;
        T* row = x_masked.get() + r * I;
        if (t < p.lengths[b]) copy_n(row, p.x + r * ldx, I);
        else std::memset(row, 0, sizeof(T) * size_t(I));
      }
      pool.barrier();  // the masked x complete
    }
    int64_t g0, g1;
    split(GH, tid, nt, 8, g0, g1);
    gemm<T>(true, false, g1 - g0, I, TB, T(1), dax.get() + g0, GH, x_valid, ld_valid, T(0),
            p.dw.w_ih + g0 * I, I);
    if constexpr (Cell::kResetBeforeMatmul) {
      // rows < 2H read h_{t-1}, the n rows read r⊙h_{t-1}
      const int64_t a0 = std::min(g0, 2 * H), a1 = std::min(g1, 2 * H);
      gemm<T>(true, false, a1 - a0, H, TB, T(1), dax.get() + a0, GH, h_prev_all, H, T(0),
              p.dw.w_hh + a0 * H, H);
      const int64_t n0 = std::max(g0, 2 * H), n1 = std::max(g1, 2 * H);
      gemm<T>(true, false, n1 - n0, H, TB, T(1), dax.get() + n0, GH, rh.get(), H, T(0),
              p.dw.w_hh + n0 * H, H);
    } else {
      gemm<T>(true, false, g1 - g0, Ho, TB, T(1), dah + g0, GH, h_prev_all, Ho, T(0),
              p.dw.w_hh + g0 * Ho, Ho);
    }
    for (int g = 0; g < G; ++g)
      for (int64_t c = g * H + j0; c < g * H + j1; ++c) {
        if (p.dw.b_ih) p.dw.b_ih[c] = T(bias_acc[c]);
        if (p.dw.b_hh) p.dw.b_hh[c] = T(bias_acc[kSplitBias ? GH + c : c]);
      }
    if (projected) {
      int64_t q0, q1;
      split(P, tid, nt, 1, q0, q1);
      gemm<T>(true, false, q1 - q0, H, TB, T(1), d_hout.get() + q0, P, h_raw.get(), H, T(0),
              p.dw.w_hr + q0 * H, H);
    }
  });
  copy_n(p.dh0, dh.get(), B * Ho);
  if constexpr (Cell::kHasCellState) copy_n(p.dc0, dc.get(), B * H);
}

// ---------------------------------------------------------------------------------------
// Layers and directions (the order is stack.h's)
// ---------------------------------------------------------------------------------------

// Inverted dropout in place on a layer's [T, B, D*Hout] output (see dropout.h).
template <class T>
void apply_dropout(T* a, int64_t n, double p, uint64_t seed, int layer) {
  const uint32_t threshold = dropout_threshold(p);
  const T scale = p < 1.0 ? T(1.0 / (1.0 - p)) : T(0);
  for (int64_t i = 0; i < n; ++i)
    a[i] = dropout_bits(seed, layer, i) >= threshold ? a[i] * scale : T(0);
}

}  // namespace

template <class T>
void forward(const ForwardParams<T>& p);
template <class T>
void backward(const BackwardParams<T>& p);

// Inference through L > 1 one-directional layers, a chunk of time steps at a time: every
// layer runs the chunk, carrying its state from the chunk before, so the sequences between
// layers take [2][Tc, B, Hout] rather than [2][T, B, Hout]: memory independent of T. Each
// step computes what it computes in one pass. (A reverse direction needs the whole of its
// input before its first output, so bidirectional stacks keep whole sequences.)
template <class T>
void forward_stack_in_chunks(const StackForwardParams<T>& p, int64_t Tc) {
  const RnnShape& s = p.shape;
  const int64_t B = s.B, LBH = int64_t(p.L) * B * s.H, LBHo = int64_t(p.L) * B * s.hout();
  auto between = scratch<T>(2 * Tc * B * s.hout());
  auto h = scratch<T>(2 * LBHo);  // state in, state out (in turn)
  auto c = scratch<T>(p.c0 ? 2 * LBH : 0);
  auto lengths = scratch<int64_t>(p.lengths ? B : 0);
  copy_n(h.get(), p.h0, LBHo);
  if (p.c0) copy_n(c.get(), p.c0, LBH);
  int in = 0;
  for (int64_t t0 = 0; t0 < s.T; t0 += Tc, in ^= 1) {
    StackForwardParams<T> q = p;
    q.shape.T = std::min(Tc, s.T - t0);
    q.x = p.x + t0 * B * s.I;
    q.y = p.y + t0 * B * s.hout();
    if (p.lengths) {  // steps left in each sequence, counted from t0
      for (int64_t b = 0; b < B; ++b)
        lengths[b] = std::clamp<int64_t>(p.lengths[b] - t0, 0, q.shape.T);
      q.lengths = lengths.get();
    }
    q.h0 = h.get() + in * LBHo;
    q.h_n = h.get() + (in ^ 1) * LBHo;
    q.c0 = p.c0 ? c.get() + in * LBH : nullptr;
    q.c_n = p.c0 ? c.get() + (in ^ 1) * LBH : nullptr;
    run_forward_stack(
        q, [](int64_t) { return static_cast<T*>(nullptr); }, static_cast<T*>(nullptr), between.get(),
        [](const ForwardParams<T>& f) { forward(f); }, [](T*, int64_t, int) {});
  }
  copy_n(p.h_n, h.get() + in * LBHo, LBHo);
  if (p.c0) copy_n(p.c_n, c.get() + in * LBH, LBH);
}

// A call's use of a Workspace: its scratch comes from there while the scope lives (on this
// thread: the pool's threads allocate nothing), and at its end the workspace grows to what
// the call asked for, so that the next call of this shape finds it all there.
class WorkspaceScope {
 public:
  explicit WorkspaceScope(Workspace* ws) : ws_(ws) {
    if (!ws_) return;
    ws_->used = ws_->wanted = 0;
    tl_workspace = ws_;
  }
  ~WorkspaceScope() {
    if (!ws_) return;
    tl_workspace = nullptr;
    if (const size_t wanted = ws_->wanted; wanted > ws_->capacity) {
      ws_->release();
      try {
        const Block b = allocate_block(wanted);
        ws_->data = b.p, ws_->capacity = b.capacity;
      } catch (const std::bad_alloc&) {  // the next call allocates its scratch as usual
      }
    }
    ws_->used = ws_->wanted = 0;
  }
  WorkspaceScope(const WorkspaceScope&) = delete;
  WorkspaceScope& operator=(const WorkspaceScope&) = delete;

 private:
  Workspace* ws_;
};

template <class T>
void forward_stack(const StackForwardParams<T>& p) {
  WorkspaceScope scope(p.workspace);
  const int64_t Tc = projection_chunk(p.shape.T, p.shape.B);
  if (p.reserve == nullptr && p.L > 1 && p.D == 1 && Tc < p.shape.T) {
    forward_stack_in_chunks(p, Tc);
    return;
  }
  const int64_t R = reserve_elements(p.cell, p.shape);
  const int64_t LD = int64_t(p.L) * p.D, TBDH = p.shape.T * p.shape.B * p.D * p.shape.hout();
  const bool training = p.reserve != nullptr;
  auto between = scratch<T>(!training && p.L > 1 ? 2 * TBDH : 0);
  run_forward_stack(
      p, [&](int64_t k) { return training ? p.reserve + k * R : nullptr; },
      training ? p.reserve + LD * R : nullptr, between.get(),
      [](const ForwardParams<T>& f) { forward(f); },
      [&](T* a, int64_t n, int layer) { apply_dropout(a, n, p.dropout, p.seed, layer); });
}

template <class T>
void backward_stack(const StackBackwardParams<T>& p) {
  const int64_t R = reserve_elements(p.cell, p.shape);
  const int64_t LD = int64_t(p.L) * p.D, TBDH = p.shape.T * p.shape.B * p.D * p.shape.hout();
  auto grads = scratch<T>(p.L > 1 ? 2 * TBDH : 0);
  run_backward_stack(
      p, [&](int64_t k) { return p.reserve + k * R; }, p.reserve + LD * R, grads.get(),
      [](const BackwardParams<T>& b) { backward(b); },
      [&](T* a, int64_t n, int layer) { apply_dropout(a, n, p.dropout, p.seed, layer); });
}

// ---------------------------------------------------------------------------------------
// Entry points: CellKind → Cell, once per call.
// ---------------------------------------------------------------------------------------
template <class T>
void forward(const ForwardParams<T>& p) {
  with_cell(p.cell, [&](auto c) { forward_cell<decltype(c), T>(p); });
}

template <class T>
void backward(const BackwardParams<T>& p) {
  FASTRNN_CHECK(p.reserve != nullptr, "saved: backward needs the reserve of a training forward");
  with_cell(p.cell, [&](auto c) { backward_cell<decltype(c), T>(p); });
}

std::string simd_level() { return kernels_isa(); }

double fma_peak_gflops() {
  const auto loop = kernels().fma_loop;
  if (loop == nullptr) return 0.0;
  constexpr int64_t kRounds = int64_t(1) << 25;  // 6.4 GFLOP a thread: ~70 ms at 93 GFLOP/s
  const double kFlopsPerRound = kFmaChains * kernels().fma_width * 2.0;
  ThreadPool& pool = ThreadPool::instance();
  double best = 0.0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    int used = 1;
    const auto t0 = std::chrono::steady_clock::now();
    pool.run(pool.size(), [&](int tid, int nt) {
      loop(kRounds, 1e-3f * float(tid + 1));
      if (tid == 0) used = nt;
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, used * kRounds * kFlopsPerRound / s * 1e-9);
  }
  return best;
}
std::string blas_info() { return blas_config(); }
int num_threads() { return ThreadPool::instance().size(); }
void set_num_threads(int n) {
  FASTRNN_CHECK(n >= 1, "set_num_threads: expected n >= 1, got ", n);
  ThreadPool::instance().set_size(n);
}

// The CPU engine's instantiations: every cell × {float, double}.
template void forward<float>(const ForwardParams<float>&);
template void forward<double>(const ForwardParams<double>&);
template void backward<float>(const BackwardParams<float>&);
template void backward<double>(const BackwardParams<double>&);
template void forward_stack<float>(const StackForwardParams<float>&);
template void forward_stack<double>(const StackForwardParams<double>&);
template void backward_stack<float>(const StackBackwardParams<float>&);
template void backward_stack<double>(const StackBackwardParams<double>&);

}  // namespace cpu
}  // namespace fastrnn
