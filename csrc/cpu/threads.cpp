// SPDX-License-Identifier: MIT
// cpu/threads.cpp — the pool behind cpu/threads.h. Waits are spun first, then slept: a
// barrier's wait is usually a few microseconds (a step's work is balanced), and a worker
// lingers a moment after a region because a training loop's next call comes quickly; past
// the budget a waiter sleeps on a condition variable, so an idle pool costs nothing.
#include "cpu/threads.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <new>

#include "cpu/gemm.h"

namespace fastrnn::cpu {
namespace {

// How long a waiter spins before it sleeps. Waking a sleeper costs tens of microseconds on
// a VM (a futex wake and a reschedule), more than a batch-1 step's whole work, so both
// budgets are well above a step; the first part spins with `pause`, the rest yields the core
// each round, so that with more threads than free cores the awaited thread can run.
constexpr std::chrono::microseconds kPauseSpin{20};
constexpr std::chrono::microseconds kBarrierSpin{300};
constexpr std::chrono::microseconds kLinger{200};  // a worker, between regions
// With more threads than cores (FASTRNN_NUM_THREADS above the CPUs this process may use),
// spinning steals the awaited thread's core. `python -m fastrnn bench --shape 100,1,256,256
// --cells lstm,gru --modes inference --threads 3` on 2 cores, two rounds, the budgets above
// -> this one: LSTM 4.78/5.25 -> 3.68/4.36 ms, GRU 4.10/3.79 -> 3.04/3.17.
constexpr std::chrono::microseconds kOversubscribedSpin{2};

// CPUs this process may run on (its affinity mask), at least 1.
int usable_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spin until done() or `budget` has passed; true if done() became true.
template <class Done>
bool spin_until(Done done, std::chrono::microseconds budget) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  for (unsigned i = 1;; ++i) {
    if (done()) return true;
    if (i % 64 == 0) {  // the clock every 64 rounds: ~1 us of pause
      const auto waited = clock::now() - start;
      if (waited > budget) return false;
      if (waited > kPauseSpin) {
        std::this_thread::yield();
        continue;
      }
    }
    cpu_relax();
  }
}

}  // namespace

thread_local int ThreadPool::region_threads_ = 1;

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

// OpenBLAS runs single-threaded from here on (its calls from several threads at once are
// safe): every thread of a region calls it on its own share. A forked child (a DataLoader
// worker, multiprocessing) inherits the pool but not its threads: it starts fresh ones.
ThreadPool::ThreadPool() {
  set_blas_threads(1);
  pthread_atfork(nullptr, nullptr, [] { instance().after_fork_in_child(); });
}

void ThreadPool::after_fork_in_child() {
  // The parent's threads and any lock they held do not exist here: forget them without
  // joining or unlocking (placement-new leaks the old handles, as it must).
  new (&workers_) std::vector<std::thread>();
  new (&region_) std::mutex();
  new (&m_) std::mutex();
  new (&cv_) std::condition_variable();
  new (&bm_) std::mutex();
  new (&bcv_) std::condition_variable();
  generation_ = 0;
  sleepers_ = 0;
  quit_ = false;
  start_workers(size());
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(m_);
    quit_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  quit_ = false;
}

void ThreadPool::start_workers(int n) {
  // A new worker serves the regions started after this point, even if it is scheduled late.
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(m_);
    generation = generation_;
  }
  for (int tid = 1; tid < n; ++tid)
    workers_.emplace_back([this, tid, generation] { worker(tid, generation); });
}

void ThreadPool::set_size(int n) {
  std::lock_guard<std::mutex> region(region_);
  n = std::max(1, n);
  if (n == size()) return;
  stop_workers();
  size_.store(n, std::memory_order_release);
  oversubscribed_.store(n > usable_cpus());
  start_workers(n);
}

void ThreadPool::worker(int tid, uint64_t seen) {
  for (;;) {
    const RegionFn* job;
    int n;
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; },
               oversubscribed_.load() ? kOversubscribedSpin : kLinger);
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [&] { return quit_ || generation_.load() != seen; });
      if (quit_) return;
      seen = generation_.load();
      job = job_;
      n = active_;
    }
    // Only the region's threads report done: run() waits for n - 1 of them, and a count from
    // a worker outside the region (tid >= n, when a region is capped below size()) could let
    // it return, and free fn, while a worker inside is still running it.
    if (tid < n) {
      region_threads_ = n;
      (*job)(tid, n);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }
}

void ThreadPool::run(int max_threads, const RegionFn& fn) {
  std::unique_lock<std::mutex> region(region_);  // fn must not call run(): not reentrant
  const int n = std::min(size(), std::max(max_threads, 1));
  if (n == 1) {  // nothing to share: this thread alone
    const int saved = region_threads_;
    region_threads_ = 1;
    fn(0, 1);
    region_threads_ = saved;
    return;
  }
  done_.store(0, std::memory_order_relaxed);
  arrived_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(m_);
    job_ = &fn;
    active_ = n;
    ++generation_;
  }
  cv_.notify_all();
  region_threads_ = n;
  fn(0, n);
  region_threads_ = 1;
  // the workers finish within a step of the caller: spin (with yields), never sleep
  while (!spin_until([&] { return done_.load(std::memory_order_acquire) >= n - 1; },
                     kBarrierSpin)) {
  }
}

// Spin, then sleep (see the budgets above). The last thread to arrive advances the phase and
// wakes the sleepers, taking the lock only when there are any: a waiter counts itself in
// sleepers_ and re-checks the phase under the lock before it sleeps, and both sides use
// sequentially consistent operations, so either the waiter sees the new phase or the last
// arriver sees the waiter (and its lock then waits until the waiter is inside wait()).
void ThreadPool::barrier() {
  const int n = region_threads_;
  if (n <= 1) return;
  const uint32_t phase = phase_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    phase_.store(phase + 1);  // seq_cst
    if (sleepers_.load() > 0) {
      { std::lock_guard<std::mutex> lock(bm_); }
      bcv_.notify_all();
    }
    return;
  }
  auto passed = [&] { return phase_.load(std::memory_order_acquire) != phase; };
  if (spin_until(passed, oversubscribed_.load() ? kOversubscribedSpin : kBarrierSpin)) return;
  std::unique_lock<std::mutex> lock(bm_);
  sleepers_.fetch_add(1);  // seq_cst, before the phase is read again
  bcv_.wait(lock, [&] { return phase_.load() != phase; });
  sleepers_.fetch_sub(1);
}

}  // namespace fastrnn::cpu
