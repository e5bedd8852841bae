#include "pybind/state.h"

#include <utility>

namespace memchannel::py_glue {
namespace {

constexpr const char* kStateKey = "memchannel._memchannel.state";

extern "C" void free_state(PyObject* capsule) {
  auto* state = static_cast<ModuleState*>(PyCapsule_GetPointer(capsule, kStateKey));
  if (state == nullptr) {
    PyErr_Clear();
    return;
  }
  for (PyObject*& cls : state->errors) Py_CLEAR(cls);
  Py_CLEAR(state->buffer_type);
  Py_CLEAR(state->pickle_dumps);
  Py_CLEAR(state->pickle_loads);
  Py_CLEAR(state->buffer_callback_kwnames);
  Py_CLEAR(state->objects_send_with_buffers);
  Py_CLEAR(state->objects_decode);
  Py_CLEAR(state->buffers_append);
  Py_CLEAR(state->buffers_list);
  for (int i = 0; i < state->buffer_free_count; ++i) PyObject_Free(state->buffer_free[static_cast<size_t>(i)]);
  delete state;
}

}  // namespace

void init_module_state(PyObject* buffer_type) {
  PyObject* dict = PyInterpreterState_GetDict(PyInterpreterState_Get());
  if (dict == nullptr) throw py::error_already_set();
  auto* state = new ModuleState();
  // The capsule owns `state` from here: a failure below frees what was filled in.
  py::object capsule = py::reinterpret_steal<py::object>(PyCapsule_New(state, kStateKey, free_state));
  if (!capsule) {
    delete state;
    throw py::error_already_set();
  }
  py::module_ errors = py::module_::import("memchannel.errors");
  for (size_t i = 0; i < kErrorClassCount; ++i) {
    py::object cls = errors.attr(error_class_name(static_cast<ErrorClass>(i)));
    state->errors[i] = cls.release().ptr();
  }
  state->buffer_type = Py_NewRef(buffer_type);
  py::module_ pickle = py::module_::import("pickle");
  state->pickle_dumps = py::object(pickle.attr("dumps")).release().ptr();
  state->pickle_loads = py::object(pickle.attr("loads")).release().ptr();
  state->buffer_callback_kwnames = py::make_tuple("buffer_callback").release().ptr();
  py::list buffers;
  state->buffers_append = py::object(buffers.attr("append")).release().ptr();
  state->buffers_list = buffers.release().ptr();
  if (PyDict_SetItemString(dict, kStateKey, capsule.ptr()) != 0) throw py::error_already_set();
}

namespace {

PyObject* state_capsule() {  // borrowed, or nullptr
  PyObject* dict = PyInterpreterState_GetDict(PyInterpreterState_Get());
  return dict != nullptr ? PyDict_GetItemString(dict, kStateKey) : nullptr;
}

// This interpreter's state and its capsule (borrowed); raises if there is none.
std::pair<ModuleState*, PyObject*> found_state() {
  PyObject* capsule = state_capsule();
  void* state = capsule != nullptr ? PyCapsule_GetPointer(capsule, kStateKey) : nullptr;
  if (state == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "memchannel._memchannel is not initialised in this interpreter");
    throw py::error_already_set();
  }
  return {static_cast<ModuleState*>(state), capsule};
}

}  // namespace

PyObject* module_state_ref() { return Py_NewRef(found_state().second); }

ModuleState& module_state() { return *found_state().first; }

}  // namespace memchannel::py_glue
