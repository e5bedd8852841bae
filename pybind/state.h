// Module state: what each interpreter's _memchannel module holds for the C++ code.
//
// The module supports a per-interpreter GIL, so no Python object lives in a C++ static: every
// interpreter that imports _memchannel gets its own ModuleState, made by the module's exec and
// kept in the interpreter's state dict (PyInterpreterState_GetDict) until that interpreter is
// cleared. A pybind11 module has no PyModuleDef state of its own (m_size 0), and a lookup
// through the interpreter dict does not depend on sys.modules, which is torn down earlier.
#pragma once

#include <Python.h>

#include <array>

#include "pybind/errors.h"

namespace memchannel::py_glue {

struct ModuleState {
  std::array<PyObject*, kErrorClassCount> errors{};  // memchannel.errors classes, by ErrorClass
  PyObject* buffer_type = nullptr;                    // this interpreter's memchannel.Buffer type
  // Object messages (pybind/objects.cc): pickle.dumps / pickle.loads, the kwnames tuple
  // ("buffer_callback",), and, imported at first use, the Python side of frames with
  // out-of-band buffers (memchannel._objects.send_frame_with_buffers / decode).
  PyObject* pickle_dumps = nullptr;
  PyObject* pickle_loads = nullptr;
  PyObject* buffer_callback_kwnames = nullptr;
  PyObject* objects_send_with_buffers = nullptr;
  PyObject* objects_decode = nullptr;
  // A list for pickle's out-of-band buffers and its bound append, reused by send_object while
  // no other send_object of this interpreter is pickling (buffers_list_busy); a nested or
  // concurrent one makes its own.
  PyObject* buffers_list = nullptr;
  PyObject* buffers_append = nullptr;
  bool buffers_list_busy = false;
  // Memory of freed Buffer objects (pybind/buffer.cc), reused by the next ones a Channel of this
  // interpreter makes: a received message costs no pymalloc call at either end. Touched with
  // this interpreter's GIL held; PyObject_Free'd with the state.
  static constexpr int kBufferFreeMax = 256;
  std::array<void*, kBufferFreeMax> buffer_free{};
  int buffer_free_count = 0;
};

// Module exec, once per interpreter: imports memchannel.errors and builds this interpreter's
// state (strong references to the classes and to `buffer_type`).
void init_module_state(PyObject* buffer_type);

// This interpreter's state. Raises RuntimeError (py::error_already_set) if the module was
// never initialised in this interpreter, or the interpreter is being cleared.
ModuleState& module_state();

// A strong reference to this interpreter's state (the capsule that owns it): whoever holds it
// may keep a ModuleState* (a Channel object does), even past the interpreter dict's clearing.
PyObject* module_state_ref();

}  // namespace memchannel::py_glue
