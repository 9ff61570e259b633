// SPDX-License-Identifier: MIT
// bindings.cpp — pybind11 module fastrnn._core: dense arrays in, new arrays out, the GIL
// released around every kernel. One forward and one backward per call for a whole stack of
// layers and directions. No defaults, no layouts, no maths: python/fastrnn/_api.py
// decides all of that and hands over C-contiguous arrays of one dtype. The shape checks here
// only keep a direct caller of _core from reading out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/blocks.h"
#include "fastrnn/engine.h"

namespace py = pybind11;
using namespace fastrnn;

namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style>;

template <class T>
void expect_shape(const Arr<T>& a, std::vector<int64_t> dims, const char* name) {
  bool ok = a.ndim() == py::ssize_t(dims.size());
  for (size_t d = 0; ok && d < dims.size(); ++d) ok = a.shape(d) == dims[d];
  if (!ok) {
    std::string want = "(", got = "(";
    for (auto d : dims) want += std::to_string(d) + ",";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) got += std::to_string(a.shape(d)) + ",";
    throw std::invalid_argument(std::string(name) + ": expected shape " + want + ") got " + got + ")");
  }
}

// A new C-contiguous array. From kMinCachedBytes on it takes a block kept between calls
// (cpu/blocks.h: memory already faulted in) and gives the block back when NumPy frees it.
template <class T>
Arr<T> new_array(std::vector<int64_t> shape) {
  size_t bytes = sizeof(T);
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && bytes > SIZE_MAX / 2 / size_t(d))) return Arr<T>(shape);  // NumPy says why
    bytes *= size_t(d);
  }
  if (bytes < cpu::kMinCachedBytes) return Arr<T>(shape);
  auto owner = std::make_unique<cpu::Block>(cpu::allocate_block(bytes));
  T* data = static_cast<T*>(owner->p);
  py::capsule base(owner.get(), [](void* o) {
    std::unique_ptr<cpu::Block> block(static_cast<cpu::Block*>(o));
    cpu::release_block(*block);
  });
  owner.release();  // the capsule has it now
  return Arr<T>(shape, data, base);
}

template <class T>
const T* opt_ptr(const std::optional<Arr<T>>& a) { return a ? a->data() : nullptr; }

// The flat weight list in torch _flat_weights order → one RnnWeights per layer-direction,
// checking every shape (Python has already; this keeps direct callers of _core in bounds).
template <class T>
std::vector<RnnWeights<T>> split_weights(const std::vector<Arr<T>>& flat, bool bias,
                                         const RnnShape& s, int G, int L, int D) {
  const size_t per = 2 + (bias ? 2 : 0) + (s.P > 0 ? 1 : 0);
  if (flat.size() != per * size_t(L) * size_t(D))
    throw std::invalid_argument("weights: expected " + std::to_string(per * L * D) +
                                " arrays, got " + std::to_string(flat.size()));
  const int64_t GH = G * s.H, Ho = s.hout();
  std::vector<RnnWeights<T>> w(size_t(L) * D);
  for (int l = 0; l < L; ++l)
    for (int d = 0; d < D; ++d) {
      const size_t k = size_t(l) * D + d, base = k * per;
      const int64_t I_l = l == 0 ? s.I : D * Ho;
      expect_shape(flat[base], {GH, I_l}, "w_ih");
      expect_shape(flat[base + 1], {GH, Ho}, "w_hh");
      w[k].w_ih = flat[base].data();
      w[k].w_hh = flat[base + 1].data();
      if (bias) {
        expect_shape(flat[base + 2], {GH}, "b_ih");
        expect_shape(flat[base + 3], {GH}, "b_hh");
        w[k].b_ih = flat[base + 2].data();
        w[k].b_hh = flat[base + 3].data();
      }
      if (s.P > 0) {
        expect_shape(flat[base + per - 1], {s.P, s.H}, "w_hr");
        w[k].w_hr = flat[base + per - 1].data();
      }
    }
  return w;
}

struct Config {  // the arguments forward and backward share, checked once
  CellKind cell;
  RnnShape shape;
  int L, D, G;
  bool bias, has_c;
};

template <class T>
Config make_config(int cell_id, const Arr<T>& x, int64_t H, int64_t P, int L, int D, bool bias,
                   const std::optional<Arr<int64_t>>& lengths) {
  Config c{CellKind(cell_id), {}, L, D, 0, bias, CellKind(cell_id) == CellKind::kLstm};
  c.G = gate_count(c.cell);
  if (x.ndim() != 3) throw std::invalid_argument("x: expected 3 dimensions (T, B, I)");
  if (L < 1 || (D != 1 && D != 2)) throw std::invalid_argument("num_layers/directions out of range");
  c.shape = RnnShape{x.shape(0), x.shape(1), x.shape(2), H, P};
  if (lengths) expect_shape(*lengths, {c.shape.B}, "lengths");
  return c;
}

template <class T>
py::tuple forward(int cell_id, Arr<T> x, std::vector<Arr<T>> weights, int64_t H, int64_t P,
                  bool bias, Arr<T> h0, std::optional<Arr<T>> c0,
                  std::optional<Arr<int64_t>> lengths, int L, int D, double dropout,
                  uint64_t seed, bool training) {
  const Config c = make_config(cell_id, x, H, P, L, D, bias, lengths);
  const RnnShape& s = c.shape;
  const int64_t LD = int64_t(L) * D;
  const auto w = split_weights(weights, bias, s, c.G, L, D);
  expect_shape(h0, {LD, s.B, s.hout()}, "h0");
  if (c.has_c != bool(c0)) throw std::invalid_argument("c0: expected only for LSTM");
  if (c0) expect_shape(*c0, {LD, s.B, s.H}, "c0");

  Arr<T> y = new_array<T>({s.T, s.B, D * s.hout()}), h_n({LD, s.B, s.hout()});
  std::optional<Arr<T>> c_n, reserve;
  if (c.has_c) c_n = Arr<T>({LD, s.B, s.H});
  if (training) reserve = new_array<T>({stack_reserve_elements(c.cell, s, L, D)});

  StackForwardParams<T> p;
  p.cell = c.cell;
  p.shape = s;
  p.L = L;
  p.D = D;
  p.dropout = dropout;
  p.seed = seed;
  p.lengths = lengths ? lengths->data() : nullptr;
  p.x = x.data();
  p.w = w.data();
  p.h0 = h0.data();
  p.c0 = opt_ptr(c0);
  p.y = y.mutable_data();
  p.h_n = h_n.mutable_data();
  p.c_n = c_n ? c_n->mutable_data() : nullptr;
  p.reserve = reserve ? reserve->mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    cpu::forward_stack<T>(p);
  }
  return py::make_tuple(y, h_n, c_n ? py::object(*c_n) : py::none(),
                        reserve ? py::object(*reserve) : py::none());
}

template <class T>
py::tuple backward(int cell_id, Arr<T> x, std::vector<Arr<T>> weights, int64_t H, int64_t P,
                   bool bias, Arr<T> reserve, std::optional<Arr<int64_t>> lengths, int L, int D,
                   double dropout, uint64_t seed, Arr<T> dy, std::optional<Arr<T>> dh_n,
                   std::optional<Arr<T>> dc_n) {
  const Config c = make_config(cell_id, x, H, P, L, D, bias, lengths);
  const RnnShape& s = c.shape;
  const int64_t LD = int64_t(L) * D;
  const auto w = split_weights(weights, bias, s, c.G, L, D);
  expect_shape(reserve, {stack_reserve_elements(c.cell, s, L, D)}, "saved");
  expect_shape(dy, {s.T, s.B, D * s.hout()}, "dy");
  if (dh_n) expect_shape(*dh_n, {LD, s.B, s.hout()}, "dh_n");
  if (dc_n && !c.has_c) throw std::invalid_argument("dc_n: expected only for LSTM");
  if (dc_n) expect_shape(*dc_n, {LD, s.B, s.H}, "dc_n");

  Arr<T> dx = new_array<T>({s.T, s.B, s.I}), dh0({LD, s.B, s.hout()});
  std::optional<Arr<T>> dc0;
  if (c.has_c) dc0 = Arr<T>({LD, s.B, s.H});
  std::vector<Arr<T>> dflat;  // same order and shapes as `weights`
  for (const auto& a : weights)
    dflat.push_back(new_array<T>(std::vector<int64_t>(a.shape(), a.shape() + a.ndim())));
  auto dw_views = split_weights(dflat, bias, s, c.G, L, D);  // pointers into dflat
  std::vector<RnnWeightGrads<T>> dw(dw_views.size());
  for (size_t k = 0; k < dw.size(); ++k)
    dw[k] = {const_cast<T*>(dw_views[k].w_ih), const_cast<T*>(dw_views[k].w_hh),
             const_cast<T*>(dw_views[k].b_ih), const_cast<T*>(dw_views[k].b_hh),
             const_cast<T*>(dw_views[k].w_hr)};

  StackBackwardParams<T> p;
  p.cell = c.cell;
  p.shape = s;
  p.L = L;
  p.D = D;
  p.dropout = dropout;
  p.seed = seed;
  p.lengths = lengths ? lengths->data() : nullptr;
  p.x = x.data();
  p.w = w.data();
  p.reserve = reserve.data();
  p.dy = dy.data();
  p.dh_n = opt_ptr(dh_n);
  p.dc_n = opt_ptr(dc_n);
  p.dx = dx.mutable_data();
  p.dh0 = dh0.mutable_data();
  p.dc0 = dc0 ? dc0->mutable_data() : nullptr;
  p.dw = dw.data();
  {
    py::gil_scoped_release release;
    cpu::backward_stack<T>(p);
  }
  py::list dlist;
  for (auto& a : dflat) dlist.append(a);
  return py::make_tuple(dx, dh0, dc0 ? py::object(*dc0) : py::none(), dlist);
}

// A prepared network (fastrnn.prepare): its weights, which the Python object owns and never
// writes, and their packed panels (PackedWeights), kept between calls. forward runs a whole
// inference call; step runs one time step of every layer (unidirectional stacks) into arrays
// the caller gives, which may be the state arrays themselves (each layer reads its h0, c0
// before it writes h_n, c_n). Calls on one object take turns (a mutex, taken without the GIL).
template <class T>
class Prepared {
 public:
  // narrow: 0, or what the weight matrices' values are (fastrnn.prepare rounded them), so
  // that their panels keep fewer bits (float32 only): 1 bfloat16 values, 2 int8 rows times
  // a scale each (PackedWeights::Narrow)
  Prepared(int cell_id, std::vector<Arr<T>> weights, int64_t I, int64_t H, int64_t P, bool bias,
           int L, int D, int narrow)
      : cell_(CellKind(cell_id)), I_(I), H_(H), P_(P), L_(L), D_(D), weights_(std::move(weights)),
        packed_(size_t(L) * size_t(D)) {
    if (L < 1 || (D != 1 && D != 2) || H < 1 || I < 0 || P < 0)
      throw std::invalid_argument("prepare: sizes out of range");
    if (narrow < 0 || narrow > 2)
      throw std::invalid_argument("prepare: narrow must be 0, 1 or 2");
    if (narrow && !std::is_same_v<T, float>)
      throw std::invalid_argument("weights_dtype: bfloat16 and int8 weights are for float32 networks");
    w_ = split_weights(weights_, bias, RnnShape{0, 0, I, H, P}, gate_count(cell_), L, D);
    for (PackedWeights& k : packed_) k.narrow = PackedWeights::Narrow(narrow);
  }

  py::tuple forward(Arr<T> x, Arr<T> h0, std::optional<Arr<T>> c0,
                    std::optional<Arr<int64_t>> lengths) {
    const RnnShape s = shape(x);
    const int64_t LD = int64_t(L_) * D_;
    expect_shape(x, {s.T, s.B, I_}, "x");
    expect_shape(h0, {LD, s.B, s.hout()}, "h0");
    check_c(c0, {LD, s.B, H_}, "c0");
    if (lengths) expect_shape(*lengths, {s.B}, "lengths");
    Arr<T> y = new_array<T>({s.T, s.B, D_ * s.hout()}), h_n({LD, s.B, s.hout()});
    std::optional<Arr<T>> c_n;
    if (has_c()) c_n = Arr<T>({LD, s.B, H_});
    run(s, x.data(), h0.data(), opt_ptr(c0), lengths ? lengths->data() : nullptr,
        y.mutable_data(), h_n.mutable_data(), c_n ? c_n->mutable_data() : nullptr);
    return py::make_tuple(y, h_n, c_n ? py::object(*c_n) : py::none());
  }

  void step(Arr<T> x, Arr<T> h, std::optional<Arr<T>> c, Arr<T> h_out,
            std::optional<Arr<T>> c_out) {
    if (D_ != 1) throw std::invalid_argument("step: a bidirectional network has no step");
    if (x.ndim() != 2) throw std::invalid_argument("x: expected 2 dimensions (B, I)");
    const int64_t B = x.shape(0);
    const RnnShape s{1, B, I_, H_, P_};
    expect_shape(x, {B, I_}, "x");
    expect_shape(h, {L_, B, s.hout()}, "h");
    expect_shape(h_out, {L_, B, s.hout()}, "out[0]");
    check_c(c, {L_, B, H_}, "c");
    check_c(c_out, {L_, B, H_}, "out[1]");
    run(s, x.data(), h.data(), opt_ptr(c), nullptr, nullptr, h_out.mutable_data(),
        c_out ? c_out->mutable_data() : nullptr);
  }

 private:
  bool has_c() const { return cell_ == CellKind::kLstm; }
  RnnShape shape(const Arr<T>& x) const {
    if (x.ndim() != 3) throw std::invalid_argument("x: expected 3 dimensions (T, B, I)");
    return RnnShape{x.shape(0), x.shape(1), I_, H_, P_};
  }
  void check_c(const std::optional<Arr<T>>& c, std::vector<int64_t> dims, const char* name) {
    if (has_c() != bool(c)) throw std::invalid_argument(std::string(name) + ": expected only for LSTM");
    if (c) expect_shape(*c, std::move(dims), name);
  }
  // y == nullptr: a step, whose y is the last layer's h (kept in y_, not returned)
  void run(const RnnShape& s, const T* x, const T* h0, const T* c0, const int64_t* lengths,
           T* y, T* h_n, T* c_n) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(m_);
    if (!y) {
      y_.resize(size_t(s.B * s.hout()));
      y = y_.data();
    }
    StackForwardParams<T> p;
    p.cell = cell_;
    p.shape = s;
    p.L = L_;
    p.D = D_;
    p.lengths = lengths;
    p.x = x;
    p.w = w_.data();
    p.h0 = h0;
    p.c0 = c0;
    p.y = y;
    p.h_n = h_n;
    p.c_n = c_n;
    p.packed = packed_.data();
    p.workspace = &workspace_;
    cpu::forward_stack<T>(p);
  }

  CellKind cell_;
  int64_t I_, H_, P_;
  int L_, D_;
  std::vector<Arr<T>> weights_;  // keeps the arrays w_ points into alive
  std::vector<RnnWeights<T>> w_;
  std::vector<PackedWeights> packed_;  // [L*D]
  Workspace workspace_;
  std::vector<T> y_;
  std::mutex m_;
};

template <class T>
void bind_prepared(py::module_& m, const char* name) {
  py::class_<Prepared<T>>(m, name)
      .def(py::init<int, std::vector<Arr<T>>, int64_t, int64_t, int64_t, bool, int, int, int>())
      .def("forward", &Prepared<T>::forward)
      .def("step", &Prepared<T>::step);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastrnn's compiled CPU engine. Private: call it through fastrnn's public API.";
  py::enum_<CellKind>(m, "CellKind")
      .value("LSTM", CellKind::kLstm)
      .value("GRU", CellKind::kGru)
      .value("GRU_RESET_BEFORE", CellKind::kGruResetBefore)
      .value("RNN_TANH", CellKind::kRnnTanh)
      .value("RNN_RELU", CellKind::kRnnRelu);
  // float32 first: pybind11 tries overloads in order and an exact dtype match wins, since
  // array_t without forcecast refuses to convert.
  m.def("forward", &forward<float>);
  m.def("forward", &forward<double>);
  m.def("backward", &backward<float>);
  m.def("backward", &backward<double>);
  m.def("reserve_elements", [](int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                               int L, int D) {
    return stack_reserve_elements(CellKind(cell), RnnShape{T, B, I, H, P}, L, D);
  });
  bind_prepared<float>(m, "PreparedFloat32");
  bind_prepared<double>(m, "PreparedFloat64");
  m.def("simd_level", &cpu::simd_level);
  m.def("cached_block_bytes", &cpu::cached_block_bytes);
  m.def("blas_info", &cpu::blas_info);
  m.def("num_threads", &cpu::num_threads);
  // waits for a running call to finish: without the GIL, so other Python threads go on
  m.def("set_num_threads", &cpu::set_num_threads, py::call_guard<py::gil_scoped_release>());
  m.def("hold_block_cache", &cpu::hold_block_cache, py::call_guard<py::gil_scoped_release>());
  m.def("fma_peak_gflops", &cpu::fma_peak_gflops, py::call_guard<py::gil_scoped_release>());
}
