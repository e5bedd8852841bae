// Argument conversions shared by the Arena, Channel and Buffer objects (the timeout rule is
// timeout_seconds in pybind/wait.h).
#pragma once

#include <pybind11/pybind11.h>

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

}  // namespace memchannel::py_glue
