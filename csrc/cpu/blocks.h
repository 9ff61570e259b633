// SPDX-License-Identifier: MIT
// cpu/blocks.h — the CPU engine's large blocks of memory, kept between calls.
//
// A training loop asks for the same large blocks on every call (the reserve, the gradient
// scratch, the input projection, y and dx), and memory fresh from the kernel is cleared and
// faulted in page by page on first touch.
// So blocks of kMinCachedBytes and more are kept when released, for a later request of up to
// their size (and at least half of it), up to kMaxCachedBytes in all, the oldest given back
// first; from kHugeBlockBytes on they are 2 MiB-aligned and advised to use transparent huge
// pages, as NumPy does for its arrays (a fresh S3 LSTM training call took ~11,900 faults of
// 4 KiB, 450 with huge pages). Smaller blocks are not kept. Every block is 64-byte aligned
// at least: the panel GEMM's panel rows are 64 bytes, and in glibc's 16-byte aligned blocks
// every other 32-byte load of them straddled two cache lines. The floor is twice glibc's
// first mmap threshold: left to glibc, blocks of that size were trimmed from the heap top
// (or unmapped) and faulted in again every call, S1's y (1.8 MiB) and the next call's blocks
// (getrusage: 1,650 faults a call; 0 with y kept here too), and with a floor of 1 MiB still
// S2 LSTM's weight gradients, dx and panels (0.5-0.75 MiB: 600 faults a call; 0 now).
// What it bought under `python -m fastrnn bench` is in benchmarks/README.md (S1 LSTM training
// 33.6 / 35.9 -> 29.3 / 27.1 ms in two rounds, with the activations change).
#pragma once

#include <cstddef>

namespace fastrnn::cpu {

constexpr size_t kMinCachedBytes = size_t(256) << 10;
constexpr size_t kHugeBlockBytes = size_t(4) << 20;
constexpr size_t kMaxCachedBytes = size_t(128) << 20;

struct Block {
  void* p = nullptr;
  size_t capacity = 0;  // what release_block must be given back
};

// At least `bytes` (0 is fine); throws std::bad_alloc when it cannot be had. Uninitialised.
Block allocate_block(size_t bytes);
// Thread-safe; a null p does nothing.
void release_block(Block b) noexcept;
// Bytes held for reuse now (for tests).
size_t cached_block_bytes() noexcept;
// Holds the cache's lock for `seconds` (for tests: a fork while another thread holds it).
void hold_block_cache(double seconds);

}  // namespace fastrnn::cpu
