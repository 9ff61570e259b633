# SPDX-License-Identifier: MIT
"""Reliability of the compiled CPU engine beyond single correct calls: concurrency (the GIL is
released; calls from many Python threads give the serial results bit for bit; the engine's
thread pool survives being resized under load), determinism (bitwise, run after run and
process after process, at a fixed thread count), resources (no memory growth over thousands
of training calls; no heap allocation per time step, counted by a preloaded malloc; T = 100,000
in loops, not recursion), numerics at the extremes (saturation without overflow warnings) and
out-of-memory as a clear MemoryError.

Not here: bad arguments (test_errors.py, test_fuzz.py), NaN/Inf propagation (test_engine.py),
the sanitizer and valgrind jobs (.ci/run).
"""

import copy
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastrnn
from _tolerances import (SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,
                         assert_within_float32_budget, textbook_float32_reference)
from test_api import VARIANTS, Problem, assert_bitwise, assert_same_maths

HERE = os.path.dirname(os.path.abspath(__file__))
# CI's sanitizer job (.ci/sanitize) preloads AddressSanitizer, which owns malloc and keeps
# freed memory in quarantine: allocation counts and resident memory are not ours to read then.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def child(code, env=None, timeout=300):
    """Run `code` in a fresh Python (tests/ on its path); return its stdout. A crash fails."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, cwd=HERE, env={**os.environ, **(env or {})})
    assert run.returncode == 0, f"child exited {run.returncode}:\n{run.stderr[-3000:]}"
    return run.stdout


def digest(result):
    """One hash of every array of a {name: array} result, names and dtypes included."""
    h = hashlib.sha256()
    for name in sorted(result):
        a = np.ascontiguousarray(result[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# A size with work for every thread (H split in blocks of 8), odd so edges are exercised.
SIZES = dict(T=7, B=9, I=13, H=37)


# ----------------------------------------------------------------------------------------------
# Concurrency


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_concurrent_calls_give_the_serial_results(threads, restore_threads):
    """8 Python threads each run forward + backward of every variant in both dtypes 3 times,
    all at once: every result is bitwise the one the same call gives alone."""
    fastrnn.set_num_threads(threads)
    problems = [Problem(v, dtype=dt, seed=k, **SIZES)
                for k, (v, dt) in enumerate((v, dt) for v in VARIANTS for dt in (np.float32, np.float64))]
    serial = [p.run("cpu") for p in problems]
    failures, start = [], threading.Barrier(8)

    def worker(offset):
        start.wait()
        try:
            for rep in range(3):
                for k in range(len(problems)):
                    i = (k + offset + rep) % len(problems)  # threads start on different calls
                    assert_bitwise(problems[i].run("cpu"), serial[i], f"problem {i}")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures, failures[0]


def test_resizing_the_pool_under_load(restore_threads):
    """set_num_threads while other Python threads are inside kernels: every result is still
    right (against the reference; a call may run at the old or the new thread count)."""
    problems = [Problem(v, **SIZES) for v in VARIANTS]
    expected = [p.run("reference") for p in problems]
    failures, stop = [], threading.Event()

    def worker():
        try:
            while not stop.is_set():
                for p, e in zip(problems, expected):
                    assert_same_maths(p.run("cpu"), e, p.variant)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(4)]
    for t in pool:
        t.start()
    try:
        for n in [1, 3, 2, 4, 1, 2] * 5:
            fastrnn.set_num_threads(n)
    finally:
        stop.set()
        for t in pool:
            t.join()
    assert not failures, failures[0]


def test_kernels_release_the_gil():
    """While one thread is inside a long kernel (~0.5 s), another runs Python code. The kernel
    thread signals just before its call; the main thread sleeps 50 ms (letting the call's
    Python preamble, ~0.1 ms, reach the engine), then does Python work and looks whether the
    kernel has returned. Had the engine kept the GIL, the main thread could not wake from its
    sleep until the kernel returned, and would find it returned."""
    p = Problem("lstm", T=4000, B=64, I=64, H=128, L=1, D=1, lengths=None, dtype=np.float32)
    entered, returned = threading.Event(), threading.Event()

    def kernel():
        entered.set()
        fastrnn.lstm_forward(p.x, p.weights, backend="cpu")
        returned.set()

    t = threading.Thread(target=kernel)
    t.start()
    entered.wait()
    time.sleep(0.05)
    work = sum(i * i for i in range(20000))  # Python bytecode: needs the GIL
    finished_first = not returned.is_set()
    t.join()
    assert work > 0
    assert finished_first, "the main thread could not run while the kernel ran: GIL held?"


def test_set_num_threads_waits_without_the_gil(restore_threads):
    """set_num_threads waits for a running call to finish; meanwhile other Python threads run.
    One thread is inside a long kernel (~0.5 s), a second calls set_num_threads (and waits),
    and the main thread, after a 50 ms sleep, does Python work and looks whether either has
    returned. Had set_num_threads kept the GIL while it waited, the main thread could not wake
    until both had."""
    p = Problem("lstm", T=4000, B=64, I=64, H=128, L=1, D=1, lengths=None, dtype=np.float32)
    entered, returned, resized = threading.Event(), threading.Event(), threading.Event()

    def kernel():
        entered.set()
        fastrnn.lstm_forward(p.x, p.weights, backend="cpu")
        returned.set()

    def resize():
        fastrnn.set_num_threads(3 - min(2, fastrnn.backends()["cpu"]["threads"]))
        resized.set()

    threads = [threading.Thread(target=kernel), threading.Thread(target=resize)]
    threads[0].start()
    entered.wait()
    time.sleep(0.05)  # the kernel is running
    threads[1].start()
    time.sleep(0.05)  # set_num_threads is waiting for it
    work = sum(i * i for i in range(20000))  # Python bytecode: needs the GIL
    neither_returned = not returned.is_set() and not resized.is_set()
    for t in threads:
        t.join()
    assert work > 0 and resized.is_set()
    assert neither_returned, "the main thread could not run while set_num_threads waited: GIL held?"


# A forked child must never inherit a lock that another thread of the parent held at the fork.
# The child holds only the forking thread; it allocates large blocks (y, the reserve: >= 256
# KiB, from the block cache) in a training forward and backward, and must finish.
FORK_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np, fastrnn
    from fastrnn import _backends

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 64)).astype(np.float32)
    w = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in [(256, 64), (256, 64)]]

    def child_work():
        out = fastrnn.lstm_forward(x, w, training=True, backend="cpu")
        fastrnn.lstm_backward(out.saved, np.ones_like(out.y))
        os._exit(0)

    def fork_and_wait(what):
        pid = os.fork()
        if pid == 0:
            child_work()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, (what, status)
                return
            time.sleep(0.01)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise SystemExit(f"the child forked {what} hung (a lock held for ever?)")

    # 1. while another thread holds the block cache's lock (a test hook of _core)
    holder = threading.Thread(target=_backends._core.hold_block_cache, args=(0.5,))
    holder.start()
    time.sleep(0.1)
    fork_and_wait("while the block cache was locked")
    holder.join()

    # 2. under load: two threads run training calls (every block through the cache) while
    # the main thread forks
    stop = threading.Event()
    def load():
        while not stop.is_set():
            out = fastrnn.lstm_forward(x, w, training=True, backend="cpu")
            fastrnn.lstm_backward(out.saved, np.ones_like(out.y))
    workers = [threading.Thread(target=load) for _ in range(2)]
    for t in workers:
        t.start()
    for k in range(int(sys.argv[1])):
        fork_and_wait(f"under load ({k})")
    stop.set()
    for t in workers:
        t.join()
    print("ok")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_while_threads_use_the_engine():
    """A fork that lands while another thread holds the block cache's lock, and 30 forks while
    two threads run training calls: every child allocates large blocks and finishes."""
    child = subprocess.run([sys.executable, "-c", FORK_SCRIPT, "30"], capture_output=True,
                           text=True, timeout=600)
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bitwise_reproducible_at_a_fixed_thread_count(variant, threads, restore_threads):
    """The same call, repeated, with other thread counts in between, and in a fresh process,
    gives bitwise the same outputs and gradients, in float32 and float64."""
    for dtype in (np.float32, np.float64):
        problem = Problem(variant, dtype=dtype, **SIZES)
        fastrnn.set_num_threads(threads)
        first = problem.run("cpu")
        for other in (1, 2, 3):
            fastrnn.set_num_threads(other)
            problem.run("cpu")
            fastrnn.set_num_threads(threads)
            assert_bitwise(problem.run("cpu"), first, f"after a run at {other} threads:")
        if dtype == np.float32 and threads == 2:  # one process per variant is enough
            out = child(f"""
                import numpy as np, fastrnn
                from test_reliability import Problem, SIZES, digest
                fastrnn.set_num_threads({threads})
                print(digest(Problem({variant!r}, dtype=np.float32, **SIZES).run("cpu")))
            """)
            assert out.strip() == digest(first), "a fresh process gave other bits"


# ----------------------------------------------------------------------------------------------
# Resources


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's quarantine holds freed memory")
def test_no_memory_growth_over_thousands_of_training_calls():
    """3,000 forward + backward calls (every variant, after 300 to warm up) in a fresh process:
    its resident memory grows by less than 4 MiB (a leak of one small reserve per call would
    be 3,000 x 10 KiB = 30 MiB)."""
    out = child("""
        import numpy as np, fastrnn
        from test_reliability import Problem, VARIANTS

        def rss_kib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * (__import__("os").sysconf("SC_PAGE_SIZE") // 1024)

        problems = [Problem(v, T=9, B=5, I=11, H=19) for v in VARIANTS]
        for _ in range(50):
            for p in problems:
                p.run("cpu")
        before = rss_kib()
        for _ in range(500):
            for p in problems:
                p.run("cpu")
        print(before, rss_kib())
    """)
    before, after = map(int, out.split())
    assert after - before < 4096, f"resident memory grew {after - before} KiB over 3,000 calls"


def test_large_blocks_are_kept_between_calls_but_never_shared():
    """Blocks of 256 KiB and more (y, dx, the weight gradients, the reserve, the engine's
    scratch) are kept for later calls instead of being faulted in afresh each time: a block
    comes back only once NumPy has freed its array, so what a call returned keeps its values,
    bit for bit, while later calls of every size run; what is kept never exceeds the 128 MiB
    bound."""
    from fastrnn import _core

    rng = np.random.default_rng(0)
    T, B, I, H = 40, 64, 48, 128  # y 1.25 MiB, the reserve 7.5 MiB
    w = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H))]
    x1, x2 = (rng.standard_normal((T, B, I), dtype=np.float32) for _ in range(2))
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    out = fastrnn.lstm_forward(x1, w, training=True, backend="cpu")
    want_y = out.y.copy()
    first = fastrnn.lstm_backward(out.saved, dy)
    want_dx, want_dw_hh = first.dx.copy(), first.dweights[1].copy()  # dW_hh: 256 KiB
    del out, first

    kept = fastrnn.lstm_forward(x1, w, training=True, backend="cpu")
    grads = fastrnn.lstm_backward(kept.saved, dy)
    for t in (T, 3 * T, T // 2, 10 * T, T):  # other calls, of other sizes, come and go
        x = np.resize(x2, (t, B, I))
        other = fastrnn.lstm_forward(x, w, training=True, backend="cpu")
        fastrnn.lstm_backward(other.saved, np.ones_like(other.y))
        assert _core.cached_block_bytes() <= 128 * 2**20
    again = fastrnn.lstm_backward(kept.saved, dy).dx  # from the reserve kept meanwhile
    assert_bitwise({"y": kept.y, "dx": grads.dx, "dW_hh": grads.dweights[1], "dx again": again},
                   {"y": want_y, "dx": want_dx, "dW_hh": want_dw_hh, "dx again": want_dx},
                   "kept while other calls ran:")
    del kept, grads, other, again
    assert 0 < _core.cached_block_bytes() <= 128 * 2**20


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's malloc is the one preloaded")
@pytest.mark.parametrize("T, B, I, H, L", [(28, 128, 28, 128, 1), (35, 20, 200, 200, 2)],
                         ids=["S1", "S2"])
def test_a_training_loop_does_not_fault_its_memory_in_again(T, B, I, H, L):
    """What the kept blocks are for: after a first call, each forward + backward of LSTM
    training takes its memory already faulted in. Counted with getrusage in a fresh process:
    S1 (y 1.8 MiB, the reserve 10.5 MiB, the scratch) took 1,650 minor page faults a call when
    every block came fresh from the kernel; S2, two layers, still took 600 with only blocks of
    1 MiB and more kept (its weight gradients, dx and panels are 0.5-0.75 MiB); both none now
    (a bound of 200 leaves room for whatever else the interpreter touches)."""
    out = child(f"""
        import resource, numpy as np, fastrnn
        rng = np.random.default_rng(0)
        T, B, I, H, L = {T}, {B}, {I}, {H}, {L}
        x = rng.standard_normal((T, B, I), dtype=np.float32)
        dy = rng.standard_normal((T, B, H), dtype=np.float32)
        w = []
        for layer in range(L):
            w += [rng.uniform(-0.1, 0.1, s).astype(np.float32)
                  for s in ((4 * H, I if layer == 0 else H), (4 * H, H), (4 * H,), (4 * H,))]

        def step():
            out = fastrnn.lstm_forward(x, w, num_layers=L, training=True, backend="cpu")
            fastrnn.lstm_backward(out.saved, dy)

        for _ in range(3):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            step()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    """)
    faults = float(out.split()[-1])
    assert faults < 200, f"{faults:.0f} page faults per training call: blocks are not reused"


def test_stacked_inference_memory_does_not_grow_with_T():
    """A 2-layer LSTM over T=20,000 steps (B=16, H=128, float32) runs chunk by chunk through
    both layers: its peak memory beyond x and y is the chunk's, not the 156 MiB of the whole
    sequence between the layers (the whole-sequence code measured 160 MiB here). ru_maxrss
    is a process-wide peak, hence the fresh process."""
    out = child("""
        import resource, numpy as np, fastrnn
        T, B, H = 20000, 16, 128
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H), dtype=np.float32)
        w = [rng.uniform(-0.1, 0.1, s).astype(np.float32)
             for _ in range(2) for s in ((4 * H, H), (4 * H, H), (4 * H,), (4 * H,))]
        fastrnn.lstm_forward(x[:2], w, num_layers=2)  # load everything first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = fastrnn.lstm_forward(x, w, num_layers=2).y
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - before) * 1024 - y.nbytes)
    """)
    extra = int(out.split()[-1])
    assert extra < 48 * 2**20, f"{extra / 2**20:.0f} MiB beyond y (a whole sequence: 156 MiB)"


# A malloc that counts: preloaded into a child process, it sees every heap allocation of the
# process (C++ new, NumPy, Python's large objects, OpenBLAS) and hands it to glibc.
COUNTING_MALLOC = r"""
#include <stdatomic.h>
#include <stddef.h>
extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
static atomic_long allocations;
long counted_allocations(void) { return atomic_load(&allocations); }
void* malloc(size_t n) { atomic_fetch_add(&allocations, 1); return __libc_malloc(n); }
void* calloc(size_t k, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_calloc(k, n); }
void* realloc(void* p, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_realloc(p, n); }
void* memalign(size_t a, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_memalign(a, n); }
void* aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void** p, size_t a, size_t n) { *p = memalign(a, n); return *p ? 0 : 12; }
"""


@pytest.fixture(scope="module")
def counting_malloc(tmp_path_factory):
    directory = tmp_path_factory.mktemp("malloc")
    source, library = directory / "counting_malloc.c", directory / "counting_malloc.so"
    source.write_text(COUNTING_MALLOC)
    cc = os.environ.get("CC", "cc")
    build = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"{cc} could not build the counting malloc:\n{build.stderr}"
    return str(library)


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's malloc is the one preloaded")
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_allocation_per_time_step(variant, counting_malloc):
    """Count the heap allocations of one forward + backward call (2 engine threads) with a
    counting malloc, at T=256 and T=257: equal, so nothing is allocated per time step, nor
    per chunk of the input projection (256 steps a chunk at B=4: one chunk, then two). The
    lengths differ by one step so that every array stays on the same side of the engine's
    256 KiB block floor (blocks above it come from its cache without a malloc: T=40 against
    T=400 differed by the handful of arrays that crossed it) and of NumPy's small-block cache.
    """
    counts = {}
    for T in (256, 257):
        out = child(f"""
            import ctypes, numpy as np, fastrnn
            from test_reliability import Problem
            fastrnn.set_num_threads(2)
            p = Problem({variant!r}, T={T}, B=4, I=8, H=16, dtype=np.float32)
            p.run("cpu")  # warm: first-call allocations (thread pool, kernel tables) are not per step
            counted = ctypes.CDLL(None).counted_allocations
            before = counted()
            p.run("cpu")
            print(counted() - before)
        """, env={"LD_PRELOAD": counting_malloc})
        counts[T] = int(out)
        assert counts[T] > 0, "nothing counted: the comparison would prove nothing"
    assert counts[256] == counts[257], f"heap allocations per call depend on T: {counts}"


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_a_sequence_of_100000_steps(variant):
    """T = 100,000 at a small H: forward + backward run (no recursion, no stack growth), stay
    finite, and the forward equals 10 chained calls of 10,000 steps (h_n, c_n fed back)."""
    p = Problem(variant, T=100_000, B=2, I=3, H=5, L=1, D=1, lengths=None)
    result = p.run("cpu")
    for name, a in result.items():
        assert np.isfinite(a).all(), name
    forward = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}[p.cell]
    state = dict(h0=p.h0, c0=p.c0) if p.cell == "lstm" else dict(h0=p.h0)
    ys = []
    for chunk in np.split(p.x, 10):
        out = forward(chunk, p.weights, **state, backend="cpu", **p.kwargs)
        ys.append(out.y)
        state = dict(h0=out.h_n, c0=out.c_n) if p.cell == "lstm" else dict(h0=out.h_n)
    assert_close(np.concatenate(ys), result["y"], rtol=SAME_MATHS_F64_RTOL,
                 atol=SAME_MATHS_F64_ATOL, name="y, chained")
    assert_close(state["h0"], result["h_n"], rtol=SAME_MATHS_F64_RTOL,
                 atol=SAME_MATHS_F64_ATOL, name="h_n, chained")
    if variant == "rnn_tanh":  # the reference's Python loop is fast enough for this cell
        assert_same_maths(result, p.run("reference"), "T=100000 vs reference:")


# ----------------------------------------------------------------------------------------------
# Numerics at the extremes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_huge_pre_activations_saturate_without_warnings(variant, dtype):
    """Inputs up to 1/16 of the dtype's largest value: sigmoid and tanh saturate to exactly
    0, ±1 (their gradients to 0), nothing overflows, no warning is raised (pytest turns
    warnings into errors), and the engine matches the reference."""
    p = Problem(variant, dtype=dtype)
    big = np.finfo(dtype).max / 16
    p.x = p.x.copy()
    p.x[0], p.x[1], p.x[2, :, ::2] = big, -big, 1e4
    got = p.run("cpu")
    with textbook_float32_reference():  # float32: the naive implementation, BLAS-independent
        naive = p.run("reference")
    exact = naive
    if dtype == np.float32:  # the float64 reference on the very same (float32) values
        p64 = copy.copy(p)
        for name in ("x", "h0", "c0", "dy", "dh_n", "dc_n"):
            value = getattr(p, name)
            setattr(p64, name, None if value is None else value.astype(np.float64))
        p64.weights = [w.astype(np.float64) for w in p.weights]
        exact = p64.run("reference")
    for name in exact:
        assert np.isfinite(got[name]).all(), name
        if dtype == np.float64:
            assert_close(got[name], exact[name], rtol=SAME_MATHS_F64_RTOL,
                         atol=SAME_MATHS_F64_ATOL, name=name)
        else:  # against float64 on the same inputs
            assert_within_float32_budget(got[name], naive[name], exact[name], name=name,
                                         forward=name in ("y", "h_n", "c_n"))


# ----------------------------------------------------------------------------------------------
# Out of memory


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("training", [False, True])
def test_impossible_sizes_raise_a_clear_memory_error(backend, training):
    """x as a zero-stride view of 2^40 x 2^20 steps (4 EiB dense): MemoryError naming the call,
    the sizes and what they need; nothing is attempted half way."""
    x = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (2**40, 2**20, 1))
    w = [np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)]
    with pytest.raises(MemoryError, match=r"lstm_forward: not enough memory for T=1099511627776, "
                                          r"B=1048576, I=1, H=1, .* y 4\.0 EiB"):
        fastrnn.lstm_forward(x, w, backend=backend, training=training)
