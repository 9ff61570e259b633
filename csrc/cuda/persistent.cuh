// SPDX-License-Identifier: MIT
// cuda/persistent.cuh — the small-batch path: one kernel launch runs every time step of a
// layer-direction, with the recurrent weights held on chip for the whole sequence.
//
// Why: at B <= 16 a step is a few microseconds of arithmetic but two launches (cuBLAS GEMM +
// pointwise kernel), so the per-step path is bound by launch latency. Here each block owns U
// hidden units (all G gates of them): it keeps its slice of W_hh in shared memory (forward:
// rows g*H + j; backward: columns j), computes its gate pre-activations from h_{t-1} (read
// from L2), applies the cell's maths, writes its part of h_t, and all blocks meet at one grid
// barrier per step. Launched cooperatively, so every block is resident and the barrier cannot
// deadlock. The reserve, states and outputs are laid out exactly as on the per-step path, so
// the two paths mix freely (a persistent forward with a per-step backward and vice versa).
//
// Data written by other blocks during the kernel (h, dah) is read with __ldcg (L2, never a
// stale L1 line); data a thread wrote itself (its units' c, dh) stays in registers.
#pragma once

#include <cooperative_groups.h>

#include "cuda/pointwise.cuh"

namespace fastrnn::cuda::persistent {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxB = 16;          // batch rows handled (accumulators per lane)
constexpr int kMaxRowsPerWarp = 4;  // gate rows per warp in forward: G*U <= 32
constexpr int kMaxUnits = 8;        // hidden units per block
constexpr int kChunk = 256;         // h columns staged in shared memory at a time

template <class T> __device__ __forceinline__ float ldg_f(const T* p) {
  return static_cast<float>(__ldcg(p));
}
template <> __device__ __forceinline__ float ldg_f<__half>(const __half* p) {
  return __half2float(__ldcg(p));
}
template <> __device__ __forceinline__ float ldg_f<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(__ldcg(p));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Arguments shared by the forward and backward kernels; pointers as in forward_cell and
// backward_cell (engine.cu), device memory.
template <class T>
struct Args {
  int64_t steps = 0, B = 0, H = 0;  // steps = T
  int rev = 0, units = 1;
  const int64_t* lengths = nullptr;
  const T* w_hh = nullptr;   // [G*H, H]
  const T* b_ih = nullptr;   // [G*H] or nullptr
  const T* b_hh = nullptr;
  // forward
  const T* ax = nullptr;     // [T, B, G*H] input projection of every step
  T* h = nullptr;            // training: h_hist [T+1, B, H]; inference: [2, B, H] in turn
  float* c = nullptr;        // the same for c (float accumulation type)
  float* saved = nullptr;    // [T, B, S*H] when training
  T* y = nullptr;
  int64_t ldy = 0;
  bool training = false;
  // backward
  const T* dy = nullptr;
  int64_t lddy = 0;
  T* dh = nullptr;           // [B, H] in: dh_n, out: dh0
  float* dc = nullptr;       // [B, H] in/out
  T* dax = nullptr;          // [T, B, G*H]
  T* dah = nullptr;          // [T, B, G*H] (== dax unless the cell splits them)
};

template <class Cell, class T>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(Args<T> a) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ unsigned char smem_raw[];
  const int U = a.units;
  const int rows = G * U;
  const int64_t H = a.H, B = a.B, GH = G * H;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  T* ws = reinterpret_cast<T*>(smem_raw);                                  // [rows, H]
  float* hs = reinterpret_cast<float*>(smem_raw + ((size_t(rows) * H * sizeof(T) + 15) / 16) * 16);  // [B, kChunk]
  float* gs = hs + kMaxB * kChunk;                                          // [B, rows]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  for (int64_t e = tid; e < int64_t(rows) * H; e += kThreads) {  // this block's W_hh rows
    const int r = int(e / H), g = r / U, u = r % U;
    const int64_t k = e - int64_t(r) * H, j = j0 + u;
    ws[e] = j < H ? a.w_hh[(g * H + j) * H + k] : T(0.0f);
  }
  // the thread of (b, u) owns unit j of row b: its c lives in a register across steps
  const int pb = tid / U, pu = tid % U;
  const int64_t pj = j0 + pu;
  const bool owner = tid < B * U && pj < H;
  __syncthreads();

  for (int64_t n = 0; n < a.steps; ++n) {
    const int64_t t = a.rev ? a.steps - 1 - n : n;
    const T* hp = a.training ? a.h + (t + a.rev) * B * H : a.h + (n & 1) * B * H;
    T* hn = a.training ? a.h + (t + 1 - a.rev) * B * H : a.h + ((n + 1) & 1) * B * H;
    const float* cp = a.training ? a.c + (t + a.rev) * B * H : a.c + (n & 1) * B * H;
    float* cn = a.training ? a.c + (t + 1 - a.rev) * B * H : a.c + ((n + 1) & 1) * B * H;

    // gates of this block's rows: acc[rr][b] = Σ_k W[r, k] h_prev[b, k], r = warp + rr*kWarps
    float acc[kMaxRowsPerWarp][kMaxB];
#pragma unroll
    for (int rr = 0; rr < kMaxRowsPerWarp; ++rr)
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) acc[rr][b] = 0.0f;
    for (int64_t k0 = 0; k0 < H; k0 += kChunk) {
      const int kn = int(H - k0 < kChunk ? H - k0 : kChunk);
      __syncthreads();
      for (int e = tid; e < B * kn; e += kThreads) {
        const int b = e / kn, kk = e % kn;
        hs[b * kChunk + kk] = ldg_f(hp + b * H + k0 + kk);
      }
      __syncthreads();
#pragma unroll
      for (int rr = 0; rr < kMaxRowsPerWarp; ++rr) {
        const int r = warp + rr * kWarps;
        if (r >= rows) break;
        const T* wr = ws + int64_t(r) * H + k0;
        for (int kk = lane; kk < kn; kk += 32) {
          const float w = static_cast<float>(wr[kk]);
#pragma unroll
          for (int b = 0; b < kMaxB; ++b)
            if (b < B) acc[rr][b] += w * hs[b * kChunk + kk];
        }
      }
    }
#pragma unroll
    for (int rr = 0; rr < kMaxRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) {
        const float v = warp_sum(acc[rr][b]);
        if (lane == 0 && r < rows && b < B) gs[b * rows + r] = v;
      }
    }
    __syncthreads();

    if (owner) {
      const int64_t idx = pb * H + pj;
      if (!step_active(a.lengths, t, pb)) {
        hn[idx] = hp[idx];  // own unit: written by this thread at the previous step
        if constexpr (Cell::kHasCellState) cn[idx] = cp[idx];
        a.y[t * B * a.ldy + pb * a.ldy + pj] = T(0.0f);
        if (a.training)
          for (int k = 0; k < S; ++k) a.saved[(t * B + pb) * S * H + k * H + pj] = 0.0f;
      } else {
        float a_x[G], a_h[G], keep[S], hv, cv = 0.0f;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const int64_t gj = g * H + pj;
          a_x[g] = static_cast<float>(a.ax[(t * B + pb) * GH + gj]) +
                   (a.b_ih ? static_cast<float>(a.b_ih[gj]) : 0.0f);
          a_h[g] = gs[pb * rows + g * U + pu] + (a.b_hh ? static_cast<float>(a.b_hh[gj]) : 0.0f);
        }
        Cell::forward(a_x, a_h, Cell::kReadsHPrev ? static_cast<float>(hp[idx]) : 0.0f,
                      Cell::kHasCellState ? cp[idx] : 0.0f, keep, hv, cv);
        hn[idx] = T(hv);
        if constexpr (Cell::kHasCellState) cn[idx] = cv;
        a.y[t * B * a.ldy + pb * a.ldy + pj] = T(hv);
        if (a.training)
#pragma unroll
          for (int k = 0; k < S; ++k) a.saved[(t * B + pb) * S * H + k * H + pj] = keep[k];
      }
    }
    grid.sync();  // every unit of h_t written before any block reads it
  }
}

template <class Cell, class T>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(Args<T> a) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ unsigned char smem_raw[];
  const int U = a.units;
  const int64_t H = a.H, B = a.B, GH = G * H;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  T* wt = reinterpret_cast<T*>(smem_raw);  // [U, G*H]: column j0+u of W_hh as a row
  float* red = reinterpret_cast<float*>(smem_raw + ((size_t(U) * GH * sizeof(T) + 15) / 16) * 16);  // [kWarps, B]
  float* ds = red + kWarps * kMaxB;  // [B, kChunk]: a chunk of dah_t rows, shared by all warps
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  for (int64_t e = tid; e < int64_t(U) * GH; e += kThreads) {
    const int u = int(e / GH);
    const int64_t r = e - int64_t(u) * GH, j = j0 + u;
    wt[e] = j < H ? a.w_hh[r * H + j] : T(0.0f);
  }
  const int pb = tid / U, pu = tid % U;
  const int64_t pj = j0 + pu;
  const bool owner = tid < B * U && pj < H;
  float dh = owner ? static_cast<float>(a.dh[pb * H + pj]) : 0.0f;  // dL/dh_t of (pb, pj)
  float dc = owner && Cell::kHasCellState ? a.dc[pb * H + pj] : 0.0f;
  // phase B split: warps_per_unit warps share unit u, each over every wpu-th run of 32 rows
  const int wpu = kWarps / U, bu = warp / wpu, part = warp % wpu;
  __syncthreads();

  for (int64_t n = 0; n < a.steps; ++n) {
    const int64_t t = a.rev ? n : a.steps - 1 - n;
    T* dax_t = a.dax + t * B * GH;
    T* dah_t = a.dah + t * B * GH;
    float dh_direct = dh;
    if (owner) {  // phase A: this thread's unit, all gates
      const int64_t idx = pb * H + pj;
      if (!step_active(a.lengths, t, pb)) {
        for (int g = 0; g < G; ++g) dax_t[pb * GH + g * H + pj] = T(0.0f);
        if constexpr (Cell::kSplitRecurrentGrad)
          for (int g = 0; g < G; ++g) dah_t[pb * GH + g * H + pj] = T(0.0f);
      } else {
        float keep[S], d_x[G], d_h[G], dhp = 0.0f;
#pragma unroll
        for (int k = 0; k < S; ++k) keep[k] = a.saved[(t * B + pb) * S * H + k * H + pj];
        const float* cprev = a.c + (t + a.rev) * B * H;
        const float* ccur = a.c + (t + 1 - a.rev) * B * H;
        const float dht = dh + static_cast<float>(a.dy[t * B * a.lddy + pb * a.lddy + pj]);
        Cell::backward(keep,
                       Cell::kReadsHPrev ? static_cast<float>(a.h[(t + a.rev) * B * H + idx]) : 0.0f,
                       Cell::kHasCellState ? cprev[idx] : 0.0f,
                       Cell::kHasCellState ? ccur[idx] : 0.0f, dht, dc, d_x, d_h, dhp);
#pragma unroll
        for (int g = 0; g < G; ++g) dax_t[pb * GH + g * H + pj] = T(d_x[g]);
        if constexpr (Cell::kSplitRecurrentGrad)
#pragma unroll
          for (int g = 0; g < G; ++g) dah_t[pb * GH + g * H + pj] = T(d_h[g]);
        dh_direct = dhp;
      }
    }
    grid.sync();  // every row of dah_t written

    // phase B: dh_{t-1}[b, j0+bu] = dh_direct + Σ_r dah_t[b, r] W_hh[r, j0+bu]
    // dah_t is read from L2 once per block, a chunk at a time, and shared by its warps
    float acc[kMaxB];
#pragma unroll
    for (int b = 0; b < kMaxB; ++b) acc[b] = 0.0f;
    for (int64_t r0 = 0; r0 < GH; r0 += kChunk) {
      const int rn = int(GH - r0 < kChunk ? GH - r0 : kChunk);
      __syncthreads();
      for (int e = tid; e < B * rn; e += kThreads) {
        const int b = e / rn, rr = e % rn;
        ds[b * kChunk + rr] = ldg_f(dah_t + b * GH + r0 + rr);
      }
      __syncthreads();
      const T* w = wt + int64_t(bu) * GH + r0;
      for (int rr = part * 32 + lane; rr < rn; rr += 32 * wpu) {
        const float wv = static_cast<float>(w[rr]);
#pragma unroll
        for (int b = 0; b < kMaxB; ++b)
          if (b < B) acc[b] += wv * ds[b * kChunk + rr];
      }
    }
#pragma unroll
    for (int b = 0; b < kMaxB; ++b) {
      const float v = warp_sum(acc[b]);
      if (lane == 0 && b < B) red[warp * kMaxB + b] = v;
    }
    __syncthreads();
    if (owner) {
      float sum = dh_direct;
      for (int p = 0; p < wpu; ++p) sum += red[(pu * wpu + p) * kMaxB + pb];
      dh = sum;
    }
    __syncthreads();  // red is rewritten next step
  }
  if (owner) {
    a.dh[pb * H + pj] = T(dh);
    if constexpr (Cell::kHasCellState) a.dc[pb * H + pj] = dc;
  }
}

// ---------------------------------------------------------------------------------------
// Host side: whether the persistent path fits this problem on this device, and its launch
// ---------------------------------------------------------------------------------------
struct Plan {
  int units = 0, blocks = 0;
  size_t smem = 0;
};

inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Fits when B <= 16, one block per U = 2^k units (U <= 8) covers H with at most one block per
// SM, G*U <= 32 gate rows, the weight slice fits in shared memory and the device can launch
// cooperatively with every block resident. H <= 8·SMs, i.e. 1056 on an H100.
template <class Cell, class T>
bool plan(int64_t B, int64_t H, int64_t max_hidden, bool backward, Plan& p) {
  if (B < 1 || B > kMaxB || H < 1 || H > max_hidden) return false;
  int dev = 0, sms = 0, coop = 0, max_smem = 0;
  FASTRNN_CUDA_CHECK(cudaGetDevice(&dev));
  FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop) return false;
  int u = 1;
  while (int64_t(u) * sms < H) u *= 2;
  if (u > kMaxUnits || Cell::kGates * u > kWarps * kMaxRowsPerWarp) return false;
  const int64_t G = Cell::kGates;
  p.units = u;
  p.blocks = int((H + u - 1) / u);
  p.smem = backward ? align16(size_t(u) * G * H * sizeof(T)) +
                          (kWarps * kMaxB + kMaxB * kChunk) * sizeof(float)
                    : align16(size_t(G) * u * H * sizeof(T)) + kMaxB * kChunk * sizeof(float) +
                          kMaxB * G * u * sizeof(float);
  if (p.smem > size_t(max_smem)) return false;
  const void* kernel = backward ? reinterpret_cast<const void*>(&backward_kernel<Cell, T>)
                                : reinterpret_cast<const void*>(&forward_kernel<Cell, T>);
  FASTRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem)));
  int occupancy = 0;
  FASTRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, kThreads, p.smem));
  return occupancy >= 1 && int64_t(occupancy) * sms >= p.blocks;
}

template <class Cell, class T>
void launch(const Plan& p, Args<T> a, bool backward, cudaStream_t stream) {
  a.units = p.units;
  void* args[] = {&a};
  const void* kernel = backward ? reinterpret_cast<const void*>(&backward_kernel<Cell, T>)
                                : reinterpret_cast<const void*>(&forward_kernel<Cell, T>);
  FASTRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, dim3(p.blocks), dim3(kThreads), args,
                                                 p.smem, stream));
}

}  // namespace fastrnn::cuda::persistent
