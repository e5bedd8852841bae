// Channel.send and Channel.recv as METH_FASTCALL methods: the per-message path skips pybind11's
// generic dispatcher (argument-vector building, overload loop, type-caster lookups), which
// costs more than the channel operation. Everything else on Channel stays a pybind11 method.
#pragma once

#include <pybind11/pybind11.h>

namespace memchannel::py_glue {

struct PyChannel;

// Adds send() and recv() to the pybind11 class `channel_cls` (of PyChannel).
void add_fast_methods(pybind11::handle channel_cls);

// A method descriptor for `def` on `cls` (the METH_FASTCALL methods skip pybind11's dispatcher).
void add_fast_method(pybind11::handle cls, PyMethodDef* def);

// The PyChannel of a Channel object (the method descriptor has already checked the type).
PyChannel& channel_of(PyObject* self);

}  // namespace memchannel::py_glue
