// SPDX-License-Identifier: MIT
// cuda/bindings.cpp — pybind11 module fastrnn._cuda, built only with the CUDA path and imported
// lazily, so CPU users never load CUDA libraries. Device pointers in (as integers), nothing
// allocated here: python/fastrnn/_api.py validates every argument and allocates outputs with
// the caller's array library on the caller's device. The GIL is released around every launch
// sequence; work is queued on the stream passed in, and nothing waits for it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/engine.h"
#include "fastrnn/platform.h"

namespace py = pybind11;
using namespace fastrnn;

namespace {

template <class T> const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T> T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// Makes `device` current for the scope of a call and restores the caller's device after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    FASTRNN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) FASTRNN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

struct Shape {  // what forward and backward share
  int cell, L, D;
  int64_t T, B, I, H, P;
  bool bias;
  RnnShape rnn() const { return RnnShape{T, B, I, H, P}; }
};

template <class T>
std::vector<RnnWeights<T>> weights_of(const Shape& s, const std::vector<uintptr_t>& flat) {
  const size_t per = 2 + (s.bias ? 2 : 0) + (s.P > 0 ? 1 : 0);
  FASTRNN_CHECK(flat.size() == per * size_t(s.L) * size_t(s.D), "weights: expected ",
                per * s.L * s.D, " pointers, got ", flat.size());
  std::vector<RnnWeights<T>> w(size_t(s.L) * s.D);
  for (size_t k = 0; k < w.size(); ++k) {
    const uintptr_t* q = flat.data() + k * per;
    w[k].w_ih = cptr<T>(q[0]);
    w[k].w_hh = cptr<T>(q[1]);
    if (s.bias) {
      w[k].b_ih = cptr<T>(q[2]);
      w[k].b_hh = cptr<T>(q[3]);
    }
    if (s.P > 0) w[k].w_hr = cptr<T>(q[per - 1]);
  }
  return w;
}

template <class T>
void forward_t(const Shape& s, uintptr_t x, const std::vector<uintptr_t>& weights, uintptr_t h0,
               uintptr_t c0, uintptr_t lengths, double dropout, uint64_t seed, uintptr_t y,
               uintptr_t h_n, uintptr_t c_n, uintptr_t reserve, cudaStream_t stream) {
  const auto w = weights_of<T>(s, weights);
  StackForwardParams<T> p;
  p.cell = CellKind(s.cell);
  p.shape = s.rnn();
  p.L = s.L;
  p.D = s.D;
  p.dropout = dropout;
  p.seed = seed;
  p.lengths = cptr<int64_t>(lengths);
  p.x = cptr<T>(x);
  p.w = w.data();
  p.h0 = cptr<T>(h0);
  p.c0 = cptr<T>(c0);
  p.y = mptr<T>(y);
  p.h_n = mptr<T>(h_n);
  p.c_n = mptr<T>(c_n);
  p.reserve = mptr<T>(reserve);
  cuda::forward_stack<T>(p, stream);
}

template <class T>
void backward_t(const Shape& s, uintptr_t x, const std::vector<uintptr_t>& weights,
                uintptr_t reserve, uintptr_t lengths, double dropout, uint64_t seed, uintptr_t dy,
                uintptr_t dh_n, uintptr_t dc_n, uintptr_t dx, uintptr_t dh0, uintptr_t dc0,
                const std::vector<uintptr_t>& dweights, cudaStream_t stream) {
  const auto w = weights_of<T>(s, weights);
  const auto dwc = weights_of<T>(s, dweights);
  std::vector<RnnWeightGrads<T>> dw(dwc.size());
  for (size_t k = 0; k < dw.size(); ++k)
    dw[k] = {const_cast<T*>(dwc[k].w_ih), const_cast<T*>(dwc[k].w_hh),
             const_cast<T*>(dwc[k].b_ih), const_cast<T*>(dwc[k].b_hh),
             const_cast<T*>(dwc[k].w_hr)};
  StackBackwardParams<T> p;
  p.cell = CellKind(s.cell);
  p.shape = s.rnn();
  p.L = s.L;
  p.D = s.D;
  p.dropout = dropout;
  p.seed = seed;
  p.lengths = cptr<int64_t>(lengths);
  p.x = cptr<T>(x);
  p.w = w.data();
  p.reserve = cptr<T>(reserve);
  p.dy = cptr<T>(dy);
  p.dh_n = cptr<T>(dh_n);
  p.dc_n = cptr<T>(dc_n);
  p.dx = mptr<T>(dx);
  p.dh0 = mptr<T>(dh0);
  p.dc0 = mptr<T>(dc0);
  p.dw = dw.data();
  cuda::backward_stack<T>(p, stream);
}

// dtype name → f<T>(): the one switch from a runtime dtype to a type.
template <class F>
decltype(auto) with_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(float{});
  if (dtype == "float64") return f(double{});
  if (dtype == "float16") return f(__half{});
  if (dtype == "bfloat16") return f(__nv_bfloat16{});
  throw py::type_error("dtype: expected float32, float64, float16 or bfloat16, got " + dtype);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastrnn's CUDA engine. Private: call it through fastrnn's public API.";
  py::class_<Shape>(m, "Shape")
      .def(py::init<int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, bool>(),
           py::arg("cell"), py::arg("L"), py::arg("D"), py::arg("T"), py::arg("B"), py::arg("I"),
           py::arg("H"), py::arg("P"), py::arg("bias"));
  m.def("reserve_bytes", [](const std::string& dtype, const Shape& s) {
    return with_dtype(dtype, [&](auto t) {
      return cuda::stack_reserve_bytes<decltype(t)>(CellKind(s.cell), s.rnn(), s.L, s.D);
    });
  });
  m.def("forward", [](const std::string& dtype, int device, uintptr_t stream, const Shape& s,
                      uintptr_t x, std::vector<uintptr_t> weights, uintptr_t h0, uintptr_t c0,
                      uintptr_t lengths, double dropout, uint64_t seed, uintptr_t y,
                      uintptr_t h_n, uintptr_t c_n, uintptr_t reserve) {
    py::gil_scoped_release release;
    DeviceScope scope(device);
    with_dtype(dtype, [&](auto t) {
      forward_t<decltype(t)>(s, x, weights, h0, c0, lengths, dropout, seed, y, h_n, c_n, reserve,
                             reinterpret_cast<cudaStream_t>(stream));
    });
  });
  m.def("backward", [](const std::string& dtype, int device, uintptr_t stream, const Shape& s,
                       uintptr_t x, std::vector<uintptr_t> weights, uintptr_t reserve,
                       uintptr_t lengths, double dropout, uint64_t seed, uintptr_t dy,
                       uintptr_t dh_n, uintptr_t dc_n, uintptr_t dx, uintptr_t dh0,
                       uintptr_t dc0, std::vector<uintptr_t> dweights) {
    py::gil_scoped_release release;
    DeviceScope scope(device);
    with_dtype(dtype, [&](auto t) {
      backward_t<decltype(t)>(s, x, weights, reserve, lengths, dropout, seed, dy, dh_n, dc_n, dx,
                              dh0, dc0, dweights, reinterpret_cast<cudaStream_t>(stream));
    });
  });
  m.def("devices", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return py::list();
    }
    py::list out;
    for (int i = 0; i < n; ++i) {
      cudaDeviceProp prop{};
      FASTRNN_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
      py::dict d;
      d["index"] = i;
      d["name"] = std::string(prop.name);
      d["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
      d["memory_bytes"] = prop.totalGlobalMem;
      out.append(d);
    }
    return out;
  });
  m.def("set_persistent", &cuda::set_persistent, py::arg("max_hidden"),
        "Largest hidden size the small-batch persistent kernels take (0 = never); default 256.");
  m.def("persistent_max_hidden", &cuda::persistent_max_hidden);
  m.def("runtime_version", [] {
    int v = 0;
    FASTRNN_CUDA_CHECK(cudaRuntimeGetVersion(&v));
    return v;
  });
}
