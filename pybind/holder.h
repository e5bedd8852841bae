// The one place that uses pybind11's internals (py::detail). Nothing else in pybind/ may.
//
// Why: a method of Arena or Channel must find the C++ object behind `self` and refuse an object
// that has none (made by T.__new__(T) without __init__, or whose __init__ failed; pybind11
// would hand the method uninitialised memory). pybind11's public casts answer neither
// question cheaply, and Channel.send / recv (pybind/fastcall.cc) must not pay for a generic
// cast per message. These helpers read the instance's value-and-holder record directly.
//
// The layout of py::detail::instance is not a stable API: pyproject.toml and the Makefile pin
// pybind11 to the tested minor series (>=3.1,<3.2); a new series is taken by re-running
// tests/python (test_uninitialised.py covers these paths) and then moving the pin.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <typeinfo>

namespace memchannel::py_glue {

namespace py = pybind11;

// What `self` holds: whether it is an instance of the pybind11 class of T (or of a Python
// subclass), and the T its std::shared_ptr<T> holder points to (nullptr if that holder was
// never constructed).
template <typename T>
struct Held {
  bool is_instance = false;
  T* object = nullptr;
};

template <typename T>
Held<T> held_object(PyObject* self) {
  const py::detail::type_info* tinfo = py::detail::get_type_info(typeid(T));
  if (tinfo == nullptr || !PyObject_TypeCheck(self, tinfo->type)) return {};
  auto vh = reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder(tinfo, false);
  if (!vh || !vh.holder_constructed() || !vh.template holder<std::shared_ptr<T>>()) return {true, nullptr};
  return {true, vh.template holder<std::shared_ptr<T>>().get()};
}

// The per-message form of held_object, for a `self` whose type a method descriptor has
// already checked: the first value of the instance, or nullptr if its holder was never
// constructed. The value pointer alone is not enough: pybind11 allocates it (uninitialised)
// on the first cast of an object whose __init__ never ran.
template <typename T>
T* held_object_of_checked_type(PyObject* self) {
  auto vh = reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder();
  if (!vh.holder_constructed() || vh.value_ptr() == nullptr) return nullptr;
  return static_cast<T*>(vh.value_ptr());
}

// The per-call fast path's form (Lock/Semaphore acquire and release): the value of a
// simple-layout instance (a class with one pybind11 base, as every memchannel class) whose
// holder is constructed, read from the instance record without get_value_and_holder;
// nullptr otherwise (the caller then takes the general path, which explains the refusal).
// `self`'s type must have been checked (a method descriptor does).
template <typename T>
T* held_object_fast(PyObject* self) {
  const auto* inst = reinterpret_cast<const py::detail::instance*>(self);
  if (!inst->simple_layout || !inst->simple_holder_constructed) return nullptr;
  return static_cast<T*>(inst->simple_value_holder[0]);
}

}  // namespace memchannel::py_glue
