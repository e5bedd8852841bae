#include "pybind/buffer.h"

#include <cstring>
#include <new>

#include "pybind/args.h"
#include "pybind/gil.h"
#include "pybind/state.h"

namespace memchannel::py_glue {

extern "C" int buffer_getbuffer(PyObject* obj, Py_buffer* view, int flags) {
  Buffer* b = as_buffer(obj);
  if (b->state != Buffer::State::kLive) {
    PyErr_SetString(PyExc_ValueError,
                    b->state == Buffer::State::kSent
                        ? "memchannel Buffer was sent; ownership moved to the channel"
                        : "operation forbidden on a released memchannel Buffer");
    view->obj = nullptr;
    return -1;
  }
  if (b->readonly && (flags & PyBUF_WRITABLE) == PyBUF_WRITABLE) {
    PyErr_SetString(PyExc_BufferError,
                    "this memchannel Buffer is a read-only share (memchannel.share): other holders see "
                    "the same memory; copy it to write");
    view->obj = nullptr;
    return -1;
  }
  view->obj = Py_NewRef(obj);
  view->buf = b->data;
  view->len = static_cast<Py_ssize_t>(b->nbytes);
  view->readonly = b->readonly ? 1 : 0;
  view->itemsize = b->itemsize;
  view->format = (flags & PyBUF_FORMAT) ? const_cast<char*>(b->format.c_str()) : nullptr;
  view->ndim = b->ndim;
  view->shape = (flags & PyBUF_ND) == PyBUF_ND ? b->shape : nullptr;
  view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? b->strides : nullptr;
  view->suboffsets = nullptr;
  view->internal = nullptr;
  if (view->shape == nullptr) view->ndim = 1;  // unshaped request: plain bytes
  ++b->exports;
  return 0;
}

namespace {
// One Buffer object per received message: memory from the home state's free list, else
// pymalloc (the object is under 512 bytes), without the zeroing of PyType_GenericAlloc (the
// constructor writes every field), the type referenced as tp_alloc would (a heap type). Every
// Buffer object of an interpreter has its type's tp_basicsize, so any freed one fits.
PyObject* alloc_buffer_object(PyTypeObject* type, ModuleState* home, PyObject* home_owner) {
  void* mem = nullptr;
  if (home != nullptr && home->buffer_free_count > 0) {
    mem = home->buffer_free[static_cast<size_t>(--home->buffer_free_count)];
  } else {
    mem = PyObject_Malloc(static_cast<size_t>(type->tp_basicsize));
    if (mem == nullptr) {
      PyErr_NoMemory();
      return nullptr;
    }
  }
  PyObject* self = PyObject_Init(static_cast<PyObject*>(mem), type);
  auto* o = reinterpret_cast<BufferObject*>(self);
  o->home = home;  // given with its owner, or neither
  o->home_owner = home != nullptr ? Py_NewRef(home_owner) : nullptr;
  return self;
}

// The object's memory back to its home's free list (or pymalloc), then its references: the
// type's, and last the home's (which may free the home and its list).
void free_buffer_object(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  auto* o = reinterpret_cast<BufferObject*>(self);
  ModuleState* home = o->home;
  PyObject* owner = o->home_owner;
  if (home != nullptr && home->buffer_free_count < ModuleState::kBufferFreeMax) {
    home->buffer_free[static_cast<size_t>(home->buffer_free_count++)] = self;
  } else {
    type->tp_free(self);
  }
  Py_DECREF(type);
  Py_XDECREF(owner);
}
}  // namespace

py::object new_buffer(PyTypeObject* type, std::shared_ptr<Arena> arena, BlockHandle block, const BlockView& v,
                      ModuleState* home, PyObject* home_owner) {
  PyObject* self = alloc_buffer_object(type, home, home_owner);
  if (self == nullptr) {
    arena->release(block);
    throw py::error_already_set();
  }
  try {
    new (&reinterpret_cast<BufferObject*>(self)->buf) Buffer(std::move(arena), block, v);
  } catch (...) {
    free_buffer_object(self);  // the memory is not a Buffer: freed without running buffer_dealloc
    throw;
  }
  return py::reinterpret_steal<py::object>(self);
}

py::object new_small_buffer(PyTypeObject* type, std::shared_ptr<Arena> arena, const SmallMessage& m,
                            ModuleState* home, PyObject* home_owner) {
  PyObject* self = alloc_buffer_object(type, home, home_owner);
  if (self == nullptr) throw py::error_already_set();
  new (&reinterpret_cast<BufferObject*>(self)->buf) Buffer(std::move(arena), m);  // does not throw
  return py::reinterpret_steal<py::object>(self);
}

void ensure_block(Buffer* b, const char* what) {
  if (b->holds_block()) return;
  auto got = b->arena->allocate(b->nbytes, PayloadLayout{});
  if (!got.ok()) raise_status(got.status, std::string(what) + ": no room for the message's block");
  uint8_t* dst = b->arena->payload(got.value);
  if (dst == nullptr) {
    b->arena->release(got.value);
    raise_status(Status::kCorruptedOffset, std::string(what) + ": a freshly allocated block failed its checks");
  }
  std::memcpy(dst, b->small, b->nbytes);
  b->block = got.value;
  b->data = dst;
}

namespace {

extern "C" void buffer_releasebuffer(PyObject* obj, Py_buffer*) {
  Buffer* b = as_buffer(obj);
  if (b->exports > 0) --b->exports;
}

extern "C" void buffer_dealloc(PyObject* self) {
  as_buffer(self)->~Buffer();  // a live block goes back to the arena
  free_buffer_object(self);
}

template <typename T>
PyObject* to_python(const T& value) {
  if constexpr (std::is_base_of_v<py::handle, T>) {
    return py::handle(value).inc_ref().ptr();
  } else {
    return py::cast(value).release().ptr();
  }
}

// Getters: every attribute but `released` and `exports` needs a live Buffer.
template <auto Field>
PyObject* buffer_get(PyObject* self, void* name) {
  return guarded([&]() -> PyObject* {
    Buffer* b = as_buffer(self);
    b->check_live(static_cast<const char*>(name));
    return to_python(Field(*b));
  }, nullptr);
}

extern "C" PyObject* buffer_get_released(PyObject* self, void*) {
  return PyBool_FromLong(as_buffer(self)->state != Buffer::State::kLive);
}
extern "C" PyObject* buffer_get_exports(PyObject* self, void*) {
  return PyLong_FromLong(as_buffer(self)->exports);
}

extern "C" PyObject* buffer_release(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    as_buffer(self)->release();
    Py_RETURN_NONE;
  }, nullptr);
}

extern "C" PyObject* buffer_exit(PyObject* self, PyObject* const*, Py_ssize_t) {
  return guarded([&]() -> PyObject* {
    as_buffer(self)->release();
    Py_RETURN_FALSE;
  }, nullptr);
}

extern "C" PyObject* buffer_enter(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    as_buffer(self)->check_live("__enter__");
    return Py_NewRef(self);
  }, nullptr);
}

extern "C" PyObject* buffer_tobytes(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    Buffer* b = as_buffer(self);
    b->check_live("tobytes()");
    return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(b->data), static_cast<Py_ssize_t>(b->nbytes));
  }, nullptr);
}


extern "C" PyObject* buffer_write(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"data", "offset", nullptr};
  PyObject* data = nullptr;
  PyObject* offset_obj = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:write", const_cast<char**>(kwlist), &data, &offset_obj)) {
    return nullptr;
  }
  return guarded([&]() -> PyObject* {
    Buffer* b = as_buffer(self);
    b->check_live("write()");
    if (b->readonly) {
      throw py::type_error("write(): this Buffer is a read-only share (memchannel.share); copy it to write");
    }
    const uint64_t offset =
        offset_obj == nullptr ? 0 : to_size(py::reinterpret_borrow<py::object>(offset_obj), "offset");
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      throw py::type_error(std::string("write() needs a C-contiguous bytes-like object, got ") +
                           Py_TYPE(data)->tp_name);
    }
    const uint64_t n = static_cast<uint64_t>(view.len);
    if (offset > b->nbytes || n > b->nbytes - offset) {
      PyBuffer_Release(&view);
      throw py::value_error("write() of " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                            " overruns the Buffer's " + std::to_string(b->nbytes) + " bytes");
    }
    // memmove: `data` may be a view of this very Buffer. Without the GIL, the pin keeps
    // release() and send() of other threads from freeing the block under the copy.
    if (n >= kCopyWithoutGil) {
      ++b->pins;
      without_gil([&] { std::memmove(b->data + offset, view.buf, n); });
      --b->pins;
    } else {
      std::memmove(b->data + offset, view.buf, n);
    }
    PyBuffer_Release(&view);
    b->arena->add_bytes_copied(n);  // a copy into channel memory: counted like send(bytes)
    return PyLong_FromUnsignedLongLong(n);
  }, nullptr);
}

extern "C" Py_ssize_t buffer_len(PyObject* self) {
  return guarded([&]() -> Py_ssize_t {
    Buffer* b = as_buffer(self);
    b->check_live("len()");
    return b->ndim == 0 ? 1 : b->shape[0];
  }, -1);
}

extern "C" PyObject* buffer_repr(PyObject* self) {
  return guarded([&]() -> PyObject* {
    Buffer* b = as_buffer(self);
    std::string r;
    if (b->state != Buffer::State::kLive) {
      r = std::string("<memchannel.Buffer ") + (b->state == Buffer::State::kSent ? "sent" : "released") + ">";
    } else {
      r = "<memchannel.Buffer nbytes=" + std::to_string(b->nbytes) + " format='" + b->format +
          "' shape=" + std::string(py::repr(b->shape_tuple())) + ">";
    }
    return PyUnicode_FromStringAndSize(r.data(), static_cast<Py_ssize_t>(r.size()));
  }, nullptr);
}

// numpy.asarray(buf) of a live Buffer takes the buffer protocol and never calls this. Once the
// Buffer is released or sent, the buffer protocol fails and numpy falls back to __array__;
// without it numpy would silently make a 0-d object array holding the Buffer. So: ValueError,
// like memoryview(buf). A direct call on a live Buffer returns the zero-copy array.
extern "C" PyObject* buffer_array(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"dtype", "copy", nullptr};
  PyObject* dtype = Py_None;
  PyObject* copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:__array__", const_cast<char**>(kwlist), &dtype, &copy)) {
    return nullptr;
  }
  return guarded([&]() -> PyObject* {
    as_buffer(self)->check_live("numpy.asarray()");
    py::module_ np = py::module_::import("numpy");
    py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(self));
    if (!view) throw py::error_already_set();
    py::object arr = copy == Py_None ? np.attr("asarray")(view, py::arg("dtype") = py::handle(dtype))
                                     : np.attr("array")(view, py::arg("dtype") = py::handle(dtype),
                                                        py::arg("copy") = py::handle(copy));
    return arr.release().ptr();
  }, nullptr);
}

PyMethodDef buffer_methods[] = {
    {"release", buffer_release, METH_NOARGS, "release($self, /)\n--\n\nReturn the block to the arena now (no-op if already released)."},
    {"write", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_write)), METH_VARARGS | METH_KEYWORDS,
     "write($self, /, data, offset=0)\n--\n\nCopy `data` into this Buffer at `offset` (counted in stats()['bytes_copied'])."},
    {"tobytes", buffer_tobytes, METH_NOARGS, "tobytes($self, /)\n--\n\nA bytes copy of the payload."},
    {"__array__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_array)),
     METH_VARARGS | METH_KEYWORDS, "__array__($self, /, dtype=None, copy=None)\n--\n\nThe payload as a numpy array (no copy "
     "unless asked); ValueError once released or sent."},
    {"__enter__", buffer_enter, METH_NOARGS, "__enter__($self, /)\n--\n\nThe Buffer itself."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_exit)), METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\nRelease the Buffer (see release())."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef buffer_getset[] = {
    {"nbytes", buffer_get<[](Buffer& b) { return b.nbytes; }>, nullptr, "Payload bytes.", const_cast<char*>("nbytes")},
    {"format", buffer_get<[](Buffer& b) { return b.format; }>, nullptr, "PEP 3118 format.", const_cast<char*>("format")},
    {"itemsize", buffer_get<[](Buffer& b) { return b.itemsize; }>, nullptr, nullptr, const_cast<char*>("itemsize")},
    {"ndim", buffer_get<[](Buffer& b) { return b.ndim; }>, nullptr, nullptr, const_cast<char*>("ndim")},
    {"shape", buffer_get<[](Buffer& b) { return b.shape_tuple(); }>, nullptr, nullptr, const_cast<char*>("shape")},
    {"readonly", buffer_get<[](Buffer& b) { return b.readonly; }>, nullptr,
     "True for a received share (memchannel.share): read-only memory other holders see too.",
     const_cast<char*>("readonly")},
    {"address", buffer_get<[](Buffer& b) { return reinterpret_cast<uintptr_t>(b.data); }>, nullptr,
     "Address of the payload in this process (to check zero-copy).", const_cast<char*>("address")},
    {"released", buffer_get_released, nullptr, "True once sent or released.", nullptr},
    {"exports", buffer_get_exports, nullptr, "Live memoryviews / arrays over this Buffer.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

constexpr const char* kBufferDoc =
    "A block of channel memory held by this interpreter. Exports the PEP 3118 buffer protocol with\n"
    "the sender's format and shape: memoryview(buf) and numpy.asarray(buf) are zero-copy. After\n"
    "send(buf) or buf.release(), any use raises ValueError. A received message of up to 64 bytes\n"
    "came inline in its queue node: its Buffer holds a copy in the object, not a block.";

PyType_Slot buffer_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(buffer_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(buffer_repr)},
    {Py_tp_methods, buffer_methods},
    {Py_tp_getset, buffer_getset},
    {Py_tp_doc, const_cast<char*>(kBufferDoc)},
    {Py_bf_getbuffer, reinterpret_cast<void*>(buffer_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(buffer_releasebuffer)},
    {Py_sq_length, reinterpret_cast<void*>(buffer_len)},
    {0, nullptr}};

PyType_Spec buffer_spec = {"memchannel.Buffer", sizeof(BufferObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                           buffer_slots};

}  // namespace

PyObject* make_buffer_type() {
  PyObject* type = PyType_FromSpec(&buffer_spec);
  if (type == nullptr) throw py::error_already_set();
  return type;
}

}  // namespace memchannel::py_glue
