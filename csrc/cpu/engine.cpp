// SPDX-License-Identifier: MIT
// cpu/engine.cpp — the CPU engine: one layer and direction of any cell, forward and backward.
// It owns the GEMMs, the time loop and its direction, length masking, the training reserve
// and the scratch memory; the cells own the maths (cells/*.h) and cpu/pointwise.h applies it.
//
// Layers and directions: forward_stack/backward_stack run the layer-directions in turn, the
// directions of a layer writing side by side into one buffer, dropout between layers.
//
// Forward, per call: the input projection W_ih·x for a chunk of time steps as one GEMM, then
// per step one recurrent GEMM (two for two-phase cells, plus W_hr for a projection) and one
// fused pointwise pass. Backward, per step: one pointwise pass and one GEMM for dh; after the
// loop dx, dW_ih, dW_hh (and dW_hr) are one GEMM each over all T·B rows, biases a column sum.
// Scratch is allocated once per call, never per step.
#include "fastrnn/engine.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "fastrnn/cells/gru.h"
#include "fastrnn/cells/lstm.h"
#include "fastrnn/cells/rnn.h"
#include "fastrnn/dropout.h"
#include "fastrnn/platform.h"
#include "fastrnn/stack.h"

namespace fastrnn {
namespace {

// The one switch from CellKind to a Cell type: f(Cell{}) for the cell of `kind`.
template <class F>
decltype(auto) with_cell(CellKind kind, F&& f) {
  switch (kind) {
    case CellKind::kLstm: return f(Lstm{});
    case CellKind::kGru: return f(Gru{});
    case CellKind::kGruResetBefore: return f(GruResetBefore{});
    case CellKind::kRnnTanh: return f(RnnTanh{});
    case CellKind::kRnnRelu: return f(RnnRelu{});
  }
  throw std::invalid_argument(check_msg("cell: unknown cell kind ", int(kind)));
}

}  // namespace

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

namespace cpu {
namespace {

// Uninitialised scratch of n elements (n may be 0); std::bad_alloc when it cannot be had.
template <class E>
std::unique_ptr<E[]> scratch(int64_t n) {
  return std::unique_ptr<E[]>(new E[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}
template <class E>
std::unique_ptr<E[]> zeroed(int64_t n) {
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

void check_shape(const RnnShape& s, const int64_t* lengths, bool can_project) {
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

// Time steps whose input projection is computed by one GEMM: enough rows (T_c·B >= 4096)
// for BLAS to run at full speed, while the scratch stays independent of T.
int64_t projection_chunk(int64_t T, int64_t B) {
  return std::min<int64_t>(T, std::max<int64_t>(16, 4096 / std::max<int64_t>(B, 1)));
}

// Σ over rows of a [rows, n] block with row stride ld, accumulated in double.
template <class T>
void column_sums(const T* a, int64_t rows, int64_t n, int64_t ld, T* out) {
  auto acc = zeroed<double>(n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) acc[j] += a[r * ld + j];
  for (int64_t j = 0; j < n; ++j) out[j] = T(acc[j]);
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
void forward_cell(const ForwardParams<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const RnnShape& s = p.shape;
  check_shape(s, p.lengths, Cell::kCanProject);
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t ldx = p.ldx ? p.ldx : I, ldy = p.ldy ? p.ldy : Ho;
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

  const int64_t Tc = std::max<int64_t>(projection_chunk(T_, B), 1);
  auto ax = scratch<T>(Tc * B * GH);
  auto ah = scratch<T>(B * GH);
  auto saved_step = scratch<T>(!training && Cell::kResetBeforeMatmul ? B * S * H : 0);
  auto rh = scratch<T>(Cell::kResetBeforeMatmul ? B * H : 0);
  auto h_raw = scratch<T>(projected ? B * H : 0);
  auto h_proj = scratch<T>(projected ? B * P : 0);
  auto active = scratch<uint8_t>(B);
  int64_t chunk_lo = 0, chunk_hi = 0;  // time steps [lo, hi) currently projected in ax

  for (int64_t n = 0; n < T_; ++n) {
    const int64_t t = rev ? T_ - 1 - n : n;
    if (t < chunk_lo || t >= chunk_hi) {
      chunk_lo = rev ? std::max<int64_t>(0, t + 1 - Tc) : t;
      chunk_hi = rev ? t + 1 : std::min(T_, t + Tc);
      gemm<T>(false, true, (chunk_hi - chunk_lo) * B, GH, I, T(1), p.x + chunk_lo * B * ldx,
              ldx, p.w.w_ih, I, T(0), ax.get(), GH);
    }
    const T* h_prev = training ? h_at(t + rev) : h_at(n);
    T* h_next = training ? h_at(t + 1 - rev) : h_at(n + 1);
    if (p.lengths) mark_active(active.get(), p.lengths, B, t);

    StepFwd<T> st;
    st.B = B;
    st.H = H;
    st.ax = ax.get() + (t - chunk_lo) * B * GH;
    st.ah = ah.get();
    st.b_ih = b_ih;
    st.b_hh = b_hh;
    st.active = p.lengths ? active.get() : nullptr;
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
      gemm<T>(false, true, B, 2 * H, Ho, T(1), h_prev, Ho, p.w.w_hh, Ho, T(0), ah.get(), GH);
      k.forward_gates(st);
      gemm<T>(false, true, B, H, H, T(1), rh.get(), H, p.w.w_hh + 2 * H * Ho, Ho, T(0),
              ah.get() + 2 * H, GH);
      k.forward_state(st);
    } else {
      gemm<T>(false, true, B, GH, Ho, T(1), h_prev, Ho, p.w.w_hh, Ho, T(0), ah.get(), GH);
      if (!training) st.saved = nullptr;
      if (!projected) {
        st.h_prev = h_prev;
        st.h = h_next;
        st.y = p.y + t * B * ldy;
        st.y_ld = ldy;
      } else {
        st.h = h_raw.get();  // padded rows are settled below, after W_hr
      }
      (training ? k.forward_train : k.forward_infer)(st);
      if (projected) {
        gemm<T>(false, true, B, P, H, T(1), h_raw.get(), H, p.w.w_hr, H, T(0), h_proj.get(), P);
        T* y = p.y + t * B * ldy;
        for (int64_t b = 0; b < B; ++b) {
          const bool on = !p.lengths || active[b];
          copy_n(h_next + b * P, on ? h_proj.get() + b * P : h_prev + b * P, P);
          if (on) copy_n(y + b * ldy, h_proj.get() + b * P, P);
          else std::memset(y + b * ldy, 0, sizeof(T) * size_t(P));
        }
      }
    }
  }
  copy_n(p.h_n, h_at(last), B * Ho);
  if constexpr (Cell::kHasCellState) copy_n(p.c_n, c_at(last), B * H);
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
void backward_cell(const BackwardParams<T>& p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const RnnShape& s = p.shape;
  check_shape(s, p.lengths, Cell::kCanProject);
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t TB = T_ * B;
  const int64_t ldx = p.ldx ? p.ldx : I, lddy = p.lddy ? p.lddy : Ho;
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
  auto active = scratch<uint8_t>(B);

  for (int64_t n = 0; n < T_; ++n) {
    const int64_t t = rev ? n : T_ - 1 - n;  // the forward's order, reversed
    if (p.lengths) mark_active(active.get(), p.lengths, B, t);
    T* dax_t = dax.get() + t * B * GH;
    T* dah_t = dah + t * B * GH;

    StepBwd<T> st;
    st.B = B;
    st.H = H;
    st.saved = p.reserve + layout.saved + t * B * S * H;
    st.h_prev = h_hist + (t + rev) * B * Ho;
    if constexpr (Cell::kHasCellState) {
      st.c_prev = c_hist + (t + rev) * B * H;
      st.c = c_hist + (t + 1 - rev) * B * H;
      st.dc = dc.get();
    }
    st.dax = dax_t;
    st.dah = dah_t;
    st.active = p.lengths ? active.get() : nullptr;

    if constexpr (Cell::kResetBeforeMatmul) {
      st.dy = p.dy + t * B * lddy;
      st.dy_ld = lddy;
      st.dh = dh.get();
      st.rh = rh.get() + t * B * H;
      st.drh = drh.get();
      k.backward_state(st);
      // d(r⊙h) = da_n·W_hn, then dh_{t-1} += [da_r, da_z]·W_h{r,z}
      gemm<T>(false, false, B, H, H, T(1), dax_t + 2 * H, GH, p.w.w_hh + 2 * H * H, H, T(0),
              drh.get(), H);
      k.backward_gates(st);
      gemm<T>(false, false, B, H, 2 * H, T(1), dax_t, GH, p.w.w_hh, H, T(1), dh.get(), H);
      continue;
    }
    if (projected) {
      // dL/dh_out = carried dh + dy on active rows; there the carried dh is used up (it is
      // rebuilt by the GEMM below), on padded rows it passes through unchanged.
      T* dho = d_hout.get() + t * B * P;
      const T* dy = p.dy + t * B * lddy;
      for (int64_t b = 0; b < B; ++b) {
        T* dhb = dh.get() + b * P;
        if (p.lengths && !active[b]) {
          std::memset(dho + b * P, 0, sizeof(T) * size_t(P));
          continue;
        }
        for (int64_t j = 0; j < P; ++j) dho[b * P + j] = dhb[j] + dy[b * lddy + j];
        std::memset(dhb, 0, sizeof(T) * size_t(P));
      }
      gemm<T>(false, false, B, H, P, T(1), dho, P, p.w.w_hr, H, T(0), dh_raw.get(), H);
      st.dh_raw = dh_raw.get();
      st.h_raw = h_raw.get() + t * B * H;
      k.backward_projected(st);
    } else {
      st.dy = p.dy + t * B * lddy;
      st.dy_ld = lddy;
      st.dh = dh.get();
      k.backward(st);
    }
    gemm<T>(false, false, B, Ho, GH, T(1), dah_t, GH, p.w.w_hh, Ho, T(1), dh.get(), Ho);
  }
  copy_n(p.dh0, dh.get(), B * Ho);
  if constexpr (Cell::kHasCellState) copy_n(p.dc0, dc.get(), B * H);

  // Deferred over all T·B rows: dx, dW_ih, dW_hh, dW_hr, biases.
  gemm<T>(false, false, TB, I, GH, T(1), dax.get(), GH, p.w.w_ih, I,
          p.accumulate_dx ? T(1) : T(0), p.dx, ldx);
  // dW_ih must not see padded steps of x even as 0·x: padding may hold NaN or inf, which
  // torch's PackedSequence never reads either. With lengths, those rows are zeroed in a copy.
  const T* x_valid = p.x;
  int64_t ld_valid = ldx;
  auto x_masked = scratch<T>(p.lengths ? TB * I : 0);
  if (p.lengths) {
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t b = 0; b < B; ++b) {
        T* row = x_masked.get() + (t * B + b) * I;
        if (t < p.lengths[b]) copy_n(row, p.x + (t * B + b) * ldx, I);
        else std::memset(row, 0, sizeof(T) * size_t(I));
      }
    x_valid = x_masked.get();
    ld_valid = I;
  }
  gemm<T>(true, false, GH, I, TB, T(1), dax.get(), GH, x_valid, ld_valid, T(0), p.dw.w_ih, I);
  const T* h_prev_all = h_hist + rev * B * Ho;  // [T*B, Ho], row t*B+b = state before step t
  if constexpr (Cell::kResetBeforeMatmul) {
    gemm<T>(true, false, 2 * H, H, TB, T(1), dax.get(), GH, h_prev_all, H, T(0), p.dw.w_hh, H);
    gemm<T>(true, false, H, H, TB, T(1), dax.get() + 2 * H, GH, rh.get(), H, T(0),
            p.dw.w_hh + 2 * H * H, H);
  } else {
    gemm<T>(true, false, GH, Ho, TB, T(1), dah, GH, h_prev_all, Ho, T(0), p.dw.w_hh, Ho);
  }
  if (p.dw.b_ih) column_sums(dax.get(), TB, GH, GH, p.dw.b_ih);
  if (p.dw.b_hh) column_sums(dah, TB, GH, GH, p.dw.b_hh);
  if (projected)
    gemm<T>(true, false, P, H, TB, T(1), d_hout.get(), P, h_raw.get(), H, T(0), p.dw.w_hr, H);
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

template <class T>
void forward_stack(const StackForwardParams<T>& p) {
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
std::string blas_info() { return blas_config(); }
int num_threads() { return blas_threads(); }
void set_num_threads(int n) {
  FASTRNN_CHECK(n >= 1, "set_num_threads: expected n >= 1, got ", n);
  set_blas_threads(n);
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
