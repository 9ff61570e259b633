// SPDX-License-Identifier: MIT
// cpu/threads.h — the CPU engine's own threads. One pool for the process; a call runs one
// parallel region, fn(tid, nthreads) on every thread (the caller is tid 0), and the threads
// meet at barrier() inside it (one per time step in the recurrent loop). BLAS runs
// single-threaded inside the region: all parallelism is the engine's, so two pools never
// fight over the cores.
//
// Thread safety: regions are serialised. A call that finds the pool busy (another Python
// thread is inside a kernel) waits for it, then runs on all the threads: every call gets the
// thread count it was set for, so its results are the same bits as when the calls run one
// after another (the last bits of a GEMM depend on how its columns are split, see README).
// set_size() waits for the running region too, and a region never has more threads than
// the caller sized its per-thread buffers for (run's max_threads).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace fastrnn::cpu {

// A reference to the callable fn(tid, n) a region runs: what run() needs of it, without the
// heap allocation std::function makes for a closure of many references (one a call, and a
// prepared network's step allocates nothing). It must outlive the run() it is given to, as a
// temporary lambda in the call does.
class RegionFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RegionFn>>>
  RegionFn(F&& f)  // NOLINT: implicit, so that run(n, [&](int tid, int nt) {...}) reads as before
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, int tid, int n) { (*static_cast<std::remove_reference_t<F>*>(o))(tid, n); }) {}
  void operator()(int tid, int n) const { call_(obj_, tid, n); }

 private:
  void* obj_;
  void (*call_)(void*, int, int);
};

class ThreadPool {
 public:
  static ThreadPool& instance();

  int size() const { return size_.load(std::memory_order_acquire); }
  void set_size(int n);  // n >= 1; takes effect for the next region

  // Run fn(tid, n) on n = min(size(), max_threads) threads and return when all are done.
  // Pass max_threads = the size() that per-thread buffers were allocated for. Not
  // reentrant: fn must not call run().
  void run(int max_threads, const RegionFn& fn);

  // Inside run(): wait until every thread of the region has arrived.
  void barrier();

  ~ThreadPool();

 private:
  ThreadPool();
  void worker(int tid, uint64_t seen);
  void stop_workers();
  void start_workers(int n);
  void after_fork_in_child();

  std::atomic<int> size_{1};  // written under region_, read by callers sizing their buffers
  // more threads than this process may run on at once: waiters then sleep almost at once, as
  // a spinning one would hold the core the awaited thread needs (written under region_)
  std::atomic<bool> oversubscribed_{false};
  std::vector<std::thread> workers_;
  std::mutex region_;  // one region at a time
  // dispatch of a region to the workers
  std::mutex m_;
  std::condition_variable cv_;
  const RegionFn* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // written under m_; read lock-free by lingering workers
  int active_ = 1;       // threads in the current region
  bool quit_ = false;
  std::atomic<int> done_{0};
  // barrier: arrivals counted, the last one advances the phase; waiters spin, then sleep,
  // and the last one takes the lock to wake them only when one of them is asleep
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> phase_{0};
  std::atomic<int> sleepers_{0};
  std::mutex bm_;
  std::condition_variable bcv_;
  static thread_local int region_threads_;
};

// [lo, hi) of `n` items for thread tid of nt, in multiples of `align` where possible.
inline void split(int64_t n, int tid, int nt, int64_t align, int64_t& lo, int64_t& hi) {
  const int64_t blocks = (n + align - 1) / align;
  const int64_t b0 = blocks * tid / nt, b1 = blocks * (tid + 1) / nt;
  lo = std::min(n, b0 * align);
  hi = std::min(n, b1 * align);
}

}  // namespace fastrnn::cpu
