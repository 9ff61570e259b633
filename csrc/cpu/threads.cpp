// SPDX-License-Identifier: MIT
// cpu/threads.cpp — the pool behind cpu/threads.h: workers sleep on a condition variable
// between regions and spin, then sleep, at barriers, where the wait is a few microseconds.
#include "cpu/threads.h"

#include <pthread.h>

#include <algorithm>
#include <new>

#include "cpu/gemm.h"

namespace fastrnn::cpu {

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
  start_workers(n);
}

void ThreadPool::worker(int tid, uint64_t seen) {
  for (;;) {
    const std::function<void(int, int)>* job;
    int n;
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
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

void ThreadPool::run(int max_threads, const std::function<void(int, int)>& fn) {
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
  for (int spin = 0; done_.load(std::memory_order_acquire) < n - 1; ++spin)
    if (spin > 4000) std::this_thread::yield();
}

// Spin briefly (a step's work is balanced, so the others are usually microseconds away),
// then sleep: with more threads than free cores a spinning waiter would steal the time of
// the very thread it waits for.
void ThreadPool::barrier() {
  const int n = region_threads_;
  if (n <= 1) return;
  const uint32_t phase = phase_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(bm_);
      phase_.store(phase + 1, std::memory_order_release);
    }
    bcv_.notify_all();
    return;
  }
  for (int spin = 0; spin < 4000; ++spin)
    if (phase_.load(std::memory_order_acquire) != phase) return;
  std::unique_lock<std::mutex> lock(bm_);
  bcv_.wait(lock, [&] { return phase_.load(std::memory_order_acquire) != phase; });
}

}  // namespace fastrnn::cpu
