// Argument conversions shared by the Arena, Channel and Buffer objects (the timeout rule is
// timeout_seconds in pybind/wait.h).
#pragma once

#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace memchannel::py_glue {

namespace py = pybind11;

// A size argument (capacity, maxsize, nbytes, offset, shape entries): an int (not a bool) that
// is >= 0 and fits a u64; TypeError / ValueError naming `name` otherwise.
inline uint64_t to_size(const py::object& value, const char* name) {
  if (PyBool_Check(value.ptr()) || !PyIndex_Check(value.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, got " + Py_TYPE(value.ptr())->tp_name);
  }
  const py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(value.ptr()));
  if (PyObject_RichCompareBool(v.ptr(), py::int_(0).ptr(), Py_LT) == 1) {
    throw py::value_error(std::string(name) + " must be >= 0, got " + std::string(py::str(v)));
  }
  const unsigned long long out = PyLong_AsUnsignedLongLong(v.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(name) + " is too large");
  }
  return out;
}

// Positional-or-keyword arguments of a METH_FASTCALL method: `out` gets at most names.size()
// values (nullptr where not given); the first `required` must be given. `first_alias` is a
// second keyword for the first argument (threading spells `block` as `blocking`).
template <size_t N>
void parse_fastcall(const char* fn, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                    const std::array<const char*, N>& names, size_t required, std::array<PyObject*, N>& out,
                    const char* first_alias = nullptr) {
  out.fill(nullptr);
  if (static_cast<size_t>(nargs) > N) {
    throw py::type_error(std::string(fn) + "() takes at most " + std::to_string(N) + " arguments (" +
                         std::to_string(nargs) + " given)");
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) out[static_cast<size_t>(i)] = args[i];
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t k = 0; k < nkw; ++k) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, k);
    size_t i = 0;
    while (i < N && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) ++i;
    if (i == N && N >= 1 && first_alias != nullptr && PyUnicode_CompareWithASCIIString(key, first_alias) == 0) i = 0;
    if (i == N) {
      throw py::type_error(std::string(fn) + "() got an unexpected keyword argument '" +
                           std::string(py::str(key)) + "'");
    }
    if (out[i] != nullptr) {
      throw py::type_error(std::string(fn) + "() got multiple values for argument '" + names[i] + "'");
    }
    out[i] = args[nargs + k];
  }
  for (size_t i = 0; i < required; ++i) {
    if (out[i] == nullptr) {
      throw py::type_error(std::string(fn) + "() missing required argument '" + names[i] + "'");
    }
  }
}

// `block` of a fastcall method: true when not given, else its truth value.
inline bool block_flag(PyObject* block) {
  if (block == nullptr) return true;
  const int truth = PyObject_IsTrue(block);
  if (truth < 0) throw py::error_already_set();
  return truth != 0;
}

// `timeout` of a fastcall method: None when not given (the rule is timeout_seconds, wait.h).
inline py::object timeout_arg(PyObject* timeout) {
  return timeout == nullptr ? py::none() : py::reinterpret_borrow<py::object>(timeout);
}

}  // namespace memchannel::py_glue
