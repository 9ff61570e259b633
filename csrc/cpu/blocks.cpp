// SPDX-License-Identifier: MIT
// cpu/blocks.cpp — see blocks.h.
#include "cpu/blocks.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <pthread.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastrnn::cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kLineBytes = 64;

struct Cache {
  std::mutex m;
  std::vector<Block> free;  // oldest first
  size_t held = 0;
};

// Never destroyed: a NumPy array that owns a block may be collected after static destructors
// have run (at interpreter exit); what the cache holds then is still reachable, not leaked.
//
// fork: a child has only the thread that forked, so a lock another thread held at that moment
// would stay locked in it for ever (and the list could be half-changed). The atfork handlers
// make that impossible by construction: fork takes the lock first (waiting for whoever holds
// it, for no longer than one list update: nothing blocks under it), and the parent and the
// child each release it, the child then holding a consistent list.
Cache& cache() {
  static Cache* c = [] {
    Cache* created = new Cache;
    pthread_atfork([] { cache().m.lock(); }, [] { cache().m.unlock(); },
                   [] { cache().m.unlock(); });
    return created;
  }();
  return *c;
}

}  // namespace

Block allocate_block(size_t bytes) {
  if (bytes > SIZE_MAX - kHugePage) throw std::bad_alloc();
  const bool huge = bytes >= kHugeBlockBytes;
  const size_t align = huge ? kHugePage : kLineBytes;
  const size_t size = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  if (size < kMinCachedBytes) {  // by capacity, as release_block decides what it keeps
    void* p = std::aligned_alloc(align, size);
    if (!p) throw std::bad_alloc();
    return {p, size};
  }
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.m);
    size_t best = c.free.size();
    for (size_t i = 0; i < c.free.size(); ++i) {
      const size_t cap = c.free[i].capacity;
      if (cap >= size && cap / 2 <= size &&
          (best == c.free.size() || cap < c.free[best].capacity))
        best = i;
    }
    if (best < c.free.size()) {
      const Block b = c.free[best];
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
      c.held -= b.capacity;
      return b;
    }
  }
  void* p = std::aligned_alloc(align, size);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(p, size, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return {p, size};
}

void release_block(Block b) noexcept {
  if (!b.p) return;
  if (b.capacity < kMinCachedBytes || b.capacity > kMaxCachedBytes) {
    std::free(b.p);
    return;
  }
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.m);
    try {
      c.free.push_back(b);
    } catch (...) {  // no room to remember it: give it back
      std::free(b.p);
      return;
    }
    c.held += b.capacity;
    size_t drop = 0;
    while (c.held > kMaxCachedBytes) {
      c.held -= c.free[drop].capacity;
      std::free(c.free[drop].p);
      ++drop;
    }
    c.free.erase(c.free.begin(), c.free.begin() + static_cast<std::ptrdiff_t>(drop));
  }
}

void hold_block_cache(double seconds) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.m);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

size_t cached_block_bytes() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.m);
  return c.held;
}

}  // namespace fastrnn::cpu
