// SPDX-License-Identifier: MIT
// bindings.cpp — pybind11 module fastrnn._core: dense arrays in, new arrays out, the GIL
// released around every kernel. No defaults, no layouts, no maths: python/fastrnn/_api.py
// decides all of that and hands over C-contiguous arrays of one dtype. The shape checks here
// only keep a direct caller of _core from reading out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

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

template <class T>
const T* opt_ptr(const std::optional<Arr<T>>& a) { return a ? a->data() : nullptr; }

struct Common {  // what forward and backward both receive
  RnnShape shape;
  int G = 0;
};

template <class T>
Common check_common(CellKind cell, const Arr<T>& x, const Arr<T>& w_ih, const Arr<T>& w_hh,
                    const std::optional<Arr<T>>& b_ih, const std::optional<Arr<T>>& b_hh,
                    const std::optional<Arr<T>>& w_hr, const std::optional<Arr<int64_t>>& lengths) {
  Common c;
  c.G = gate_count(cell);
  if (x.ndim() != 3) throw std::invalid_argument("x: expected 3 dimensions (T, B, I)");
  if (w_ih.ndim() != 2 || w_ih.shape(0) % c.G != 0)
    throw std::invalid_argument("w_ih: expected shape (G*H, I)");
  c.shape.T = x.shape(0);
  c.shape.B = x.shape(1);
  c.shape.I = x.shape(2);
  c.shape.H = w_ih.shape(0) / c.G;
  c.shape.P = w_hr ? w_hr->shape(0) : 0;
  const int64_t GH = c.G * c.shape.H;
  expect_shape(w_ih, {GH, c.shape.I}, "w_ih");
  expect_shape(w_hh, {GH, c.shape.hout()}, "w_hh");
  if (bool(b_ih) != bool(b_hh)) throw std::invalid_argument("b_ih, b_hh: give both or neither");
  if (b_ih) expect_shape(*b_ih, {GH}, "b_ih");
  if (b_hh) expect_shape(*b_hh, {GH}, "b_hh");
  if (w_hr) expect_shape(*w_hr, {c.shape.P, c.shape.H}, "w_hr");
  if (lengths) expect_shape(*lengths, {c.shape.B}, "lengths");
  return c;
}

template <class T>
py::tuple forward(int cell_id, Arr<T> x, Arr<T> w_ih, Arr<T> w_hh, std::optional<Arr<T>> b_ih,
                  std::optional<Arr<T>> b_hh, std::optional<Arr<T>> w_hr, Arr<T> h0,
                  std::optional<Arr<T>> c0, std::optional<Arr<int64_t>> lengths, bool reverse,
                  bool training) {
  const auto cell = CellKind(cell_id);
  const Common c = check_common(cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const RnnShape& s = c.shape;
  const bool has_c = cell == CellKind::kLstm;
  expect_shape(h0, {s.B, s.hout()}, "h0");
  if (has_c != bool(c0)) throw std::invalid_argument("c0: expected only for LSTM");
  if (c0) expect_shape(*c0, {s.B, s.H}, "c0");

  Arr<T> y({s.T, s.B, s.hout()}), h_n({s.B, s.hout()});
  std::optional<Arr<T>> c_n, reserve;
  if (has_c) c_n = Arr<T>({s.B, s.H});
  if (training) reserve = Arr<T>({reserve_elements(cell, s)});

  ForwardParams<T> p;
  p.cell = cell;
  p.shape = s;
  p.reverse = reverse;
  p.lengths = lengths ? lengths->data() : nullptr;
  p.x = x.data();
  p.w = {w_ih.data(), w_hh.data(), opt_ptr(b_ih), opt_ptr(b_hh), opt_ptr(w_hr)};
  p.h0 = h0.data();
  p.c0 = opt_ptr(c0);
  p.y = y.mutable_data();
  p.h_n = h_n.mutable_data();
  p.c_n = c_n ? c_n->mutable_data() : nullptr;
  p.reserve = reserve ? reserve->mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    cpu::forward<T>(p);
  }
  return py::make_tuple(y, h_n, c_n ? py::object(*c_n) : py::none(),
                        reserve ? py::object(*reserve) : py::none());
}

template <class T>
py::tuple backward(int cell_id, Arr<T> x, Arr<T> w_ih, Arr<T> w_hh, std::optional<Arr<T>> b_ih,
                   std::optional<Arr<T>> b_hh, std::optional<Arr<T>> w_hr, Arr<T> reserve,
                   std::optional<Arr<int64_t>> lengths, bool reverse, Arr<T> dy,
                   std::optional<Arr<T>> dh_n, std::optional<Arr<T>> dc_n) {
  const auto cell = CellKind(cell_id);
  const Common c = check_common(cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const RnnShape& s = c.shape;
  const bool has_c = cell == CellKind::kLstm;
  expect_shape(reserve, {reserve_elements(cell, s)}, "saved");
  expect_shape(dy, {s.T, s.B, s.hout()}, "dy");
  if (dh_n) expect_shape(*dh_n, {s.B, s.hout()}, "dh_n");
  if (dc_n && !has_c) throw std::invalid_argument("dc_n: expected only for LSTM");
  if (dc_n) expect_shape(*dc_n, {s.B, s.H}, "dc_n");

  Arr<T> dx({s.T, s.B, s.I}), dh0({s.B, s.hout()});
  Arr<T> dw_ih({c.G * s.H, s.I}), dw_hh({c.G * s.H, s.hout()});
  std::optional<Arr<T>> dc0, db_ih, db_hh, dw_hr;
  if (has_c) dc0 = Arr<T>({s.B, s.H});
  if (b_ih) db_ih = Arr<T>({c.G * s.H});
  if (b_hh) db_hh = Arr<T>({c.G * s.H});
  if (w_hr) dw_hr = Arr<T>({s.P, s.H});

  BackwardParams<T> p;
  p.cell = cell;
  p.shape = s;
  p.reverse = reverse;
  p.lengths = lengths ? lengths->data() : nullptr;
  p.x = x.data();
  p.w = {w_ih.data(), w_hh.data(), opt_ptr(b_ih), opt_ptr(b_hh), opt_ptr(w_hr)};
  p.reserve = reserve.data();
  p.dy = dy.data();
  p.dh_n = opt_ptr(dh_n);
  p.dc_n = opt_ptr(dc_n);
  p.dx = dx.mutable_data();
  p.dh0 = dh0.mutable_data();
  p.dc0 = dc0 ? dc0->mutable_data() : nullptr;
  p.dw = {dw_ih.mutable_data(), dw_hh.mutable_data(), db_ih ? db_ih->mutable_data() : nullptr,
          db_hh ? db_hh->mutable_data() : nullptr, dw_hr ? dw_hr->mutable_data() : nullptr};
  {
    py::gil_scoped_release release;
    cpu::backward<T>(p);
  }
  auto obj = [](const std::optional<Arr<T>>& a) { return a ? py::object(*a) : py::none(); };
  return py::make_tuple(dx, dh0, obj(dc0), dw_ih, dw_hh, obj(db_ih), obj(db_hh), obj(dw_hr));
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
  m.def("reserve_elements", [](int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
    return reserve_elements(CellKind(cell), RnnShape{T, B, I, H, P});
  });
  m.def("simd_level", &cpu::simd_level);
  m.def("blas_info", &cpu::blas_info);
  m.def("num_threads", &cpu::num_threads);
  m.def("set_num_threads", &cpu::set_num_threads);
}
