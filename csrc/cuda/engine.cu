// SPDX-License-Identifier: MIT
// cuda/engine.cu — the CUDA engine: the same loop as cpu/engine.cpp (read that first), on the
// caller's stream, with cuBLAS GEMMs and the kernels of cuda/pointwise.cuh. Per layer and
// direction: the input projection of a chunk of steps as one GEMM; per step one recurrent GEMM
// (two for two-phase cells, plus W_hr) and one pointwise kernel; backward per step one kernel
// and one GEMM for dh, then dx, dW_ih, dW_hh (and dW_hr) as one GEMM each over all T·B rows and
// the biases as a GEMM against a ones vector. Layers and directions as forward_stack in the
// CPU engine. No maths of its own: cells/*.h is compiled here too. Scratch comes from the
// stream-ordered allocator (cudaMallocAsync), freed on the stream when the call returns; no
// host synchronisation happens anywhere.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <type_traits>

#include "cuda/cublas.h"
#include "cuda/engine.h"
#include "cuda/persistent.cuh"
#include "cuda/pointwise.cuh"
#include "fastrnn/cells/all.h"
#include "fastrnn/stack.h"

namespace fastrnn::cuda {

namespace {
// Largest H the persistent kernels take. 256 is where they were measured ahead of the
// per-step path on an H100 (B <= 16); above it the per-step path was faster (see the
// benchmark notes in benchmarks/README.md). 0 disables them.
std::atomic<int64_t> g_persistent_max_hidden{256};
}
void set_persistent(int64_t max_hidden) { g_persistent_max_hidden = max_hidden; }
int64_t persistent_max_hidden() { return g_persistent_max_hidden; }

namespace {

// The small-batch persistent kernels (persistent.cuh) serve one-phase cells without a
// projection in float, half and bfloat16 when they fit; double always takes the per-step path.
template <class Cell, class T>
bool use_persistent(int64_t B, int64_t H, int64_t P, bool backward, persistent::Plan& plan) {
  if constexpr (Cell::kResetBeforeMatmul || std::is_same_v<T, double>) {
    return false;
  } else {
    const int64_t max_hidden = g_persistent_max_hidden;
    return P == 0 && persistent::plan<Cell, T>(B, H, max_hidden, backward, plan);
  }
}


// Scratch of n elements from the stream-ordered pool; std::bad_alloc when the GPU is full.
template <class E>
class Scratch {
 public:
  Scratch(int64_t n, cudaStream_t stream) : stream_(stream) {
    if (n <= 0) return;
    const cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&p_), size_t(n) * sizeof(E), stream);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw std::bad_alloc();
    }
    FASTRNN_CUDA_CHECK(e);
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  E* get() const { return p_; }

 private:
  E* p_ = nullptr;
  cudaStream_t stream_;
};

template <class E>
void copy_async(E* dst, const E* src, int64_t n, cudaStream_t s) {
  if (n > 0) FASTRNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(E), cudaMemcpyDeviceToDevice, s));
}
template <class E>
void zero_async(E* dst, int64_t n, cudaStream_t s) {
  if (n > 0) FASTRNN_CUDA_CHECK(cudaMemsetAsync(dst, 0, size_t(n) * sizeof(E), s));
}

template <class Src, class Dst>
__global__ void convert_kernel(const Src* src, Dst* dst, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = Dst(static_cast<Acc<Dst>>(static_cast<Acc<Src>>(src[i])));
}
template <class Src, class Dst>
void convert_async(const Src* src, Dst* dst, int64_t n, cudaStream_t s) {
  if (n > 0) convert_kernel<<<blocks_for(n), kThreads, 0, s>>>(src, dst, n);
}

void check_launch() { FASTRNN_CUDA_CHECK(cudaGetLastError()); }

// GEMM with K == 0 made explicit: cuBLAS leaves that case loosely specified.
template <class T>
void gemm_k(cudaStream_t s, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A,
            int64_t lda, const T* B, int64_t ldb, float beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (beta == 0.0f)
      FASTRNN_CUDA_CHECK(cudaMemset2DAsync(C, size_t(ldc) * sizeof(T), 0, size_t(N) * sizeof(T), size_t(M), s));
    return;  // beta == 1: C unchanged
  }
  gemm<T>(s, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

int64_t projection_chunk(int64_t T, int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(T, std::max<int64_t>(16, 262144 / std::max<int64_t>(B, 1))));
}

// ---------------------------------------------------------------------------------------
// Forward, one layer and direction
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
void forward_cell(const ForwardParams<T>& p, cudaStream_t stream) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const RnnShape& s = p.shape;
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t ldx = p.ldx ? p.ldx : I, ldy = p.ldy ? p.ldy : Ho;
  const bool training = p.reserve != nullptr;
  const bool projected = P > 0;
  const int rev = p.reverse ? 1 : 0;
  const unsigned nb = blocks_for(B * H);

  const ReserveBytes layout = ReserveBytes::make<T>(s, S, Cell::kHasCellState);
  char* res = reinterpret_cast<char*>(p.reserve);
  Scratch<T> ping_h(training ? 0 : 2 * B * Ho, stream);
  Scratch<A> ping_c(training || !Cell::kHasCellState ? 0 : 2 * B * H, stream);
  T* h_hist = training ? reinterpret_cast<T*>(res + layout.h_hist) : nullptr;
  A* c_hist = training ? reinterpret_cast<A*>(res + layout.c_hist) : nullptr;
  A* saved_all = training ? reinterpret_cast<A*>(res + layout.saved) : nullptr;
  auto h_at = [&](int64_t i) { return training ? h_hist + i * B * Ho : ping_h.get() + (i & 1) * B * Ho; };
  auto c_at = [&](int64_t i) { return training ? c_hist + i * B * H : ping_c.get() + (i & 1) * B * H; };
  const int64_t first = training ? (rev ? T_ : 0) : 0;
  const int64_t last = training ? (rev ? 0 : T_) : T_;
  copy_async(h_at(first), p.h0, B * Ho, stream);
  if constexpr (Cell::kHasCellState) convert_async(p.c0, c_at(first), B * H, stream);

  persistent::Plan plan;
  if (T_ > 0 && use_persistent<Cell, T>(B, H, P, false, plan)) {
    if constexpr (!Cell::kResetBeforeMatmul && !std::is_same_v<A, double>) {
      Scratch<T> ax_all(T_ * B * GH, stream);
      gemm_k<T>(stream, false, true, T_ * B, GH, I, p.x, ldx, p.w.w_ih, I, 0.0f, ax_all.get(), GH);
      persistent::Args<T> a;
      a.steps = T_;
      a.B = B;
      a.H = H;
      a.rev = rev;
      a.lengths = p.lengths;
      a.w_hh = p.w.w_hh;
      a.b_ih = p.w.b_ih;
      a.b_hh = p.w.b_hh;
      a.ax = ax_all.get();
      a.h = training ? h_hist : ping_h.get();
      a.c = Cell::kHasCellState ? (training ? c_hist : ping_c.get()) : nullptr;
      a.saved = saved_all;
      a.y = p.y;
      a.ldy = ldy;
      a.training = training;
      persistent::launch<Cell, T>(plan, a, false, stream);
      copy_async(p.h_n, h_at(last), B * Ho, stream);
      if constexpr (Cell::kHasCellState) convert_async(c_at(last), p.c_n, B * H, stream);
      return;
    }
  }

  const int64_t Tc = projection_chunk(T_, B);
  Scratch<T> ax(Tc * B * GH, stream), ah(B * GH, stream);
  Scratch<A> saved_step(!training && Cell::kResetBeforeMatmul ? B * S * H : 0, stream);
  Scratch<T> rh(Cell::kResetBeforeMatmul ? B * H : 0, stream);
  Scratch<T> h_raw(projected ? B * H : 0, stream), h_proj(projected ? B * P : 0, stream);
  int64_t lo = 0, hi = 0;

  for (int64_t n = 0; n < T_; ++n) {
    const int64_t t = rev ? T_ - 1 - n : n;
    if (t < lo || t >= hi) {
      lo = rev ? std::max<int64_t>(0, t + 1 - Tc) : t;
      hi = rev ? t + 1 : std::min(T_, t + Tc);
      gemm_k<T>(stream, false, true, (hi - lo) * B, GH, I, p.x + lo * B * ldx, ldx, p.w.w_ih, I,
                0.0f, ax.get(), GH);
    }
    const T* h_prev = training ? h_at(t + rev) : h_at(n);
    T* h_next = training ? h_at(t + 1 - rev) : h_at(n + 1);

    StepFwd<T> st;
    st.B = B;
    st.H = H;
    st.t = t;
    st.lengths = p.lengths;
    st.ax = ax.get() + (t - lo) * B * GH;
    st.ah = ah.get();
    st.b_ih = p.w.b_ih;
    st.b_hh = p.w.b_hh;
    if constexpr (Cell::kHasCellState) {
      st.c_prev = training ? c_at(t + rev) : c_at(n);
      st.c = training ? c_at(t + 1 - rev) : c_at(n + 1);
    }
    st.saved = training ? saved_all + t * B * S * H : saved_step.get();

    if constexpr (Cell::kResetBeforeMatmul) {
      st.h_prev = h_prev;
      st.h = h_next;
      st.y = p.y + t * B * ldy;
      st.y_ld = ldy;
      st.rh = rh.get();
      gemm_k<T>(stream, false, true, B, 2 * H, Ho, h_prev, Ho, p.w.w_hh, Ho, 0.0f, ah.get(), GH);
      forward_gates_kernel<Cell, T><<<nb, kThreads, 0, stream>>>(st);
      check_launch();
      gemm_k<T>(stream, false, true, B, H, H, rh.get(), H, p.w.w_hh + 2 * H * Ho, Ho, 0.0f,
                ah.get() + 2 * H, GH);
      forward_state_kernel<Cell, T><<<nb, kThreads, 0, stream>>>(st);
      check_launch();
    } else {
      gemm_k<T>(stream, false, true, B, GH, Ho, h_prev, Ho, p.w.w_hh, Ho, 0.0f, ah.get(), GH);
      if (!projected) {
        st.h_prev = h_prev;
        st.h = h_next;
        st.y = p.y + t * B * ldy;
        st.y_ld = ldy;
      } else {
        st.h = h_raw.get();
      }
      if (training) forward_kernel<Cell, T, true><<<nb, kThreads, 0, stream>>>(st);
      else forward_kernel<Cell, T, false><<<nb, kThreads, 0, stream>>>(st);
      check_launch();
      if (projected) {
        gemm_k<T>(stream, false, true, B, P, H, h_raw.get(), H, p.w.w_hr, H, 0.0f, h_proj.get(), P);
        projection_select_kernel<T><<<blocks_for(B * P), kThreads, 0, stream>>>(
            B, P, t, p.lengths, h_proj.get(), h_prev, h_next, p.y + t * B * ldy, ldy);
        check_launch();
      }
    }
  }
  copy_async(p.h_n, h_at(last), B * Ho, stream);
  if constexpr (Cell::kHasCellState) convert_async(c_at(last), p.c_n, B * H, stream);
}

// ---------------------------------------------------------------------------------------
// Backward, one layer and direction
// ---------------------------------------------------------------------------------------
template <class Cell, class T>
void backward_cell(const BackwardParams<T>& p, cudaStream_t stream) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  using A = Acc<T>;
  const RnnShape& s = p.shape;
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, Ho = s.hout(), GH = G * H;
  const int64_t TB = T_ * B;
  const int64_t ldx = p.ldx ? p.ldx : I, lddy = p.lddy ? p.lddy : Ho;
  const bool projected = P > 0;
  const int rev = p.reverse ? 1 : 0;
  const unsigned nb = blocks_for(B * H);
  const ReserveBytes layout = ReserveBytes::make<T>(s, S, Cell::kHasCellState);
  const char* res = reinterpret_cast<const char*>(p.reserve);
  const T* h_hist = reinterpret_cast<const T*>(res + layout.h_hist);
  const A* c_hist = reinterpret_cast<const A*>(res + layout.c_hist);
  const A* saved_all = reinterpret_cast<const A*>(res + layout.saved);

  Scratch<T> dh(B * Ho, stream);
  Scratch<A> dc(Cell::kHasCellState ? B * H : 0, stream);
  if (p.dh_n) copy_async(dh.get(), p.dh_n, B * Ho, stream);
  else zero_async(dh.get(), B * Ho, stream);
  if constexpr (Cell::kHasCellState) {
    if (p.dc_n) convert_async(p.dc_n, dc.get(), B * H, stream);
    else zero_async(dc.get(), B * H, stream);
  }
  Scratch<T> dax(TB * GH, stream), dah_own(Cell::kSplitRecurrentGrad ? TB * GH : 0, stream);
  T* dah = Cell::kSplitRecurrentGrad ? dah_own.get() : dax.get();
  Scratch<T> d_hout(projected ? TB * P : 0, stream), h_raw(projected ? TB * H : 0, stream);
  Scratch<T> dh_raw(projected ? B * H : 0, stream);
  Scratch<T> rh(Cell::kResetBeforeMatmul ? TB * H : 0, stream);
  Scratch<T> drh(Cell::kResetBeforeMatmul ? B * H : 0, stream);

  persistent::Plan plan;
  const bool persist = T_ > 0 && use_persistent<Cell, T>(B, H, P, true, plan);
  if (persist) {
    if constexpr (!Cell::kResetBeforeMatmul && !std::is_same_v<A, double>) {
      persistent::Args<T> a;
      a.steps = T_;
      a.B = B;
      a.H = H;
      a.rev = rev;
      a.lengths = p.lengths;
      a.w_hh = p.w.w_hh;
      a.h = const_cast<T*>(h_hist);
      a.c = const_cast<A*>(c_hist);
      a.saved = const_cast<A*>(saved_all);
      a.dy = p.dy;
      a.lddy = lddy;
      a.dh = dh.get();
      a.dc = Cell::kHasCellState ? dc.get() : nullptr;
      a.dax = dax.get();
      a.dah = dah;
      persistent::launch<Cell, T>(plan, a, true, stream);
    }
  }
  for (int64_t n = 0; n < (persist ? 0 : T_); ++n) {
    const int64_t t = rev ? n : T_ - 1 - n;
    T* dax_t = dax.get() + t * B * GH;
    T* dah_t = dah + t * B * GH;
    StepBwd<T> st;
    st.B = B;
    st.H = H;
    st.t = t;
    st.lengths = p.lengths;
    st.saved = saved_all + t * B * S * H;
    st.h_prev = h_hist + (t + rev) * B * Ho;
    if constexpr (Cell::kHasCellState) {
      st.c_prev = c_hist + (t + rev) * B * H;
      st.c = c_hist + (t + 1 - rev) * B * H;
      st.dc = dc.get();
    }
    st.dax = dax_t;
    st.dah = dah_t;

    if constexpr (Cell::kResetBeforeMatmul) {
      st.dy = p.dy + t * B * lddy;
      st.dy_ld = lddy;
      st.dh = dh.get();
      st.rh = rh.get() + t * B * H;
      st.drh = drh.get();
      backward_state_kernel<Cell, T><<<nb, kThreads, 0, stream>>>(st);
      check_launch();
      gemm_k<T>(stream, false, false, B, H, H, dax_t + 2 * H, GH, p.w.w_hh + 2 * H * H, H, 0.0f,
                drh.get(), H);
      backward_gates_kernel<Cell, T><<<nb, kThreads, 0, stream>>>(st);
      check_launch();
      gemm_k<T>(stream, false, false, B, H, 2 * H, dax_t, GH, p.w.w_hh, H, 1.0f, dh.get(), H);
    } else {
      if (projected) {
        T* dho = d_hout.get() + t * B * P;
        projection_grad_kernel<T><<<blocks_for(B * P), kThreads, 0, stream>>>(
            B, P, t, p.lengths, dh.get(), p.dy + t * B * lddy, lddy, dho);
        check_launch();
        gemm_k<T>(stream, false, false, B, H, P, dho, P, p.w.w_hr, H, 0.0f, dh_raw.get(), H);
        st.dh_raw = dh_raw.get();
        st.h_raw = h_raw.get() + t * B * H;
        backward_kernel<Cell, T, true><<<nb, kThreads, 0, stream>>>(st);
      } else {
        st.dy = p.dy + t * B * lddy;
        st.dy_ld = lddy;
        st.dh = dh.get();
        backward_kernel<Cell, T, false><<<nb, kThreads, 0, stream>>>(st);
      }
      check_launch();
      gemm_k<T>(stream, false, false, B, Ho, GH, dah_t, GH, p.w.w_hh, Ho, 1.0f, dh.get(), Ho);
    }
  }
  copy_async(p.dh0, dh.get(), B * Ho, stream);
  if constexpr (Cell::kHasCellState) convert_async(dc.get(), p.dc0, B * H, stream);

  gemm_k<T>(stream, false, false, TB, I, GH, dax.get(), GH, p.w.w_ih, I,
            p.accumulate_dx ? 1.0f : 0.0f, p.dx, ldx);
  // dW_ih must not see padded x even as 0·x (padding may hold NaN): zero it in a copy.
  const T* x_valid = p.x;
  int64_t ld_valid = ldx;
  Scratch<T> x_masked(p.lengths ? TB * I : 0, stream);
  if (p.lengths && TB * I > 0) {
    mask_padding_kernel<T><<<blocks_for(TB * I), kThreads, 0, stream>>>(T_, B, I, p.lengths, p.x,
                                                                         ldx, x_masked.get());
    check_launch();
    x_valid = x_masked.get();
    ld_valid = I;
  }
  gemm_k<T>(stream, true, false, GH, I, TB, dax.get(), GH, x_valid, ld_valid, 0.0f, p.dw.w_ih, I);
  const T* h_prev_all = h_hist + rev * B * Ho;
  if constexpr (Cell::kResetBeforeMatmul) {
    gemm_k<T>(stream, true, false, 2 * H, H, TB, dax.get(), GH, h_prev_all, H, 0.0f, p.dw.w_hh, H);
    gemm_k<T>(stream, true, false, H, H, TB, dax.get() + 2 * H, GH, rh.get(), H, 0.0f,
              p.dw.w_hh + 2 * H * H, H);
  } else {
    gemm_k<T>(stream, true, false, GH, Ho, TB, dah, GH, h_prev_all, Ho, 0.0f, p.dw.w_hh, Ho);
  }
  if (p.dw.b_ih) {  // column sums as ones[1, T·B] · dax[T·B, G·H]
    Scratch<T> ones(TB, stream);
    if (TB > 0) {
      fill_kernel<T><<<blocks_for(TB), kThreads, 0, stream>>>(ones.get(), TB, T(1.0f));
      check_launch();
    }
    gemm_k<T>(stream, false, false, 1, GH, TB, ones.get(), TB, dax.get(), GH, 0.0f, p.dw.b_ih, GH);
    gemm_k<T>(stream, false, false, 1, GH, TB, ones.get(), TB, dah, GH, 0.0f, p.dw.b_hh, GH);
  }
  if (projected)
    gemm_k<T>(stream, true, false, P, H, TB, d_hout.get(), P, h_raw.get(), H, 0.0f, p.dw.w_hr, H);
}

template <class T>
void dropout_async(T* a, int64_t n, double p, uint64_t seed, int layer, cudaStream_t s) {
  if (n <= 0) return;
  // the scale rounded to T's accumulation type, as the CPU engine rounds it to T
  const double scale = p < 1.0 ? double(Acc<T>(1.0 / (1.0 - p))) : 0.0;
  dropout_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(a, n, dropout_threshold(p), scale, seed, layer);
  check_launch();
}

}  // namespace

template <class T>
int64_t stack_reserve_bytes(CellKind cell, const RnnShape& s, int L, int D) {
  const int64_t per = with_cell(cell, [&](auto c) {
    using Cell = decltype(c);
    return ReserveBytes::make<T>(s, Cell::kSaved, Cell::kHasCellState).total;
  });
  return int64_t(L) * D * per + int64_t(L - 1) * s.T * s.B * D * s.hout() * int64_t(sizeof(T));
}

template <class T>
void forward_stack(const StackForwardParams<T>& p, cudaStream_t stream) {
  const int64_t R = stack_reserve_bytes<T>(p.cell, p.shape, 1, 1);  // one layer-direction
  const int64_t LD = int64_t(p.L) * p.D, TBDH = p.shape.T * p.shape.B * p.D * p.shape.hout();
  const bool training = p.reserve != nullptr;
  char* res = reinterpret_cast<char*>(p.reserve);
  Scratch<T> between(!training && p.L > 1 ? 2 * TBDH : 0, stream);
  run_forward_stack(
      p, [&](int64_t k) { return training ? reinterpret_cast<T*>(res + k * R) : nullptr; },
      training ? reinterpret_cast<T*>(res + LD * R) : nullptr, between.get(),
      [&](const ForwardParams<T>& f) {
        with_cell(f.cell, [&](auto c) { forward_cell<decltype(c), T>(f, stream); });
      },
      [&](T* a, int64_t n, int layer) { dropout_async(a, n, p.dropout, p.seed, layer, stream); });
}

template <class T>
void backward_stack(const StackBackwardParams<T>& p, cudaStream_t stream) {
  const int64_t R = stack_reserve_bytes<T>(p.cell, p.shape, 1, 1);
  const int64_t LD = int64_t(p.L) * p.D, TBDH = p.shape.T * p.shape.B * p.D * p.shape.hout();
  const char* res = reinterpret_cast<const char*>(p.reserve);
  Scratch<T> grads(p.L > 1 ? 2 * TBDH : 0, stream);
  run_backward_stack(
      p, [&](int64_t k) { return reinterpret_cast<const T*>(res + k * R); },
      reinterpret_cast<const T*>(res + LD * R), grads.get(),
      [&](const BackwardParams<T>& b) {
        with_cell(b.cell, [&](auto c) { backward_cell<decltype(c), T>(b, stream); });
      },
      [&](T* a, int64_t n, int layer) { dropout_async(a, n, p.dropout, p.seed, layer, stream); });
}

// The CUDA engine's instantiations: every cell × {float, double, half, bfloat16}.
#define FASTRNN_CUDA_INSTANTIATE(T)                                                       \
  template int64_t stack_reserve_bytes<T>(CellKind, const RnnShape&, int, int);           \
  template void forward_stack<T>(const StackForwardParams<T>&, cudaStream_t);             \
  template void backward_stack<T>(const StackBackwardParams<T>&, cudaStream_t);
FASTRNN_CUDA_INSTANTIATE(float)
FASTRNN_CUDA_INSTANTIATE(double)
FASTRNN_CUDA_INSTANTIATE(__half)
FASTRNN_CUDA_INSTANTIATE(__nv_bfloat16)

}  // namespace fastrnn::cuda
