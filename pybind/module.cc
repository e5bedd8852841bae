// memchannel._memchannel: thin glue between the MemChannel core and Python.
//
// Objects: Arena, Channel, Buffer. Policy lives in core/ (and shm/); this file converts
// arguments, releases the GIL around waits, checks signals between wait slices, and turns
// core Status codes into the exception hierarchy of memchannel.errors (one function:
// raise_status). No Python object is stored in any C++ static: the module supports isolated
// subinterpreters with their own GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cxxabi.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unistd.h>

#include "core/arena.h"
#include "core/channel.h"
#include "core/heap_backend.h"
#include "pybind/gil.h"
#include "pybind/pep3118.h"
#include "pybind/registry.h"
#include "shm/cleanup.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

namespace py = pybind11;

namespace memchannel::py_glue {
namespace {

constexpr uint64_t kDefaultHeapCapacity = 1ull << 30;  // 1 GiB of address space, mapped lazily
constexpr int64_t kSignalSliceNs = 100'000'000;        // main interpreter: check signals at 10 Hz
constexpr int64_t kLivenessSliceNs = 200'000'000;      // shm: look for dead peers at 5 Hz
constexpr uint64_t kCopyWithoutGil = 256 * 1024;       // copies this large run without the GIL
constexpr char kHandleMagic[4] = {'M', 'C', 'H', '1'};
constexpr size_t kHandleFields = 5;

// ---------------------------------------------------------------------------------------------
// Errors: the one place where core statuses become Python exceptions.

[[noreturn]] void raise_error(const char* class_name, const std::string& message) {
  py::object cls = py::module_::import("memchannel.errors").attr(class_name);
  PyErr_SetString(cls.ptr(), message.c_str());
  throw py::error_already_set();
}

[[noreturn]] void raise_status(Status s, const std::string& context) {
  switch (s) {
    case Status::kEmpty: raise_error("Empty", context.empty() ? "channel is empty" : context);
    case Status::kFull: raise_error("Full", context.empty() ? "channel is full" : context);
    case Status::kClosed: raise_error("ChannelClosed", context.empty() ? "channel is closed" : context);
    case Status::kTooLarge: raise_error("CapacityError", context);
    case Status::kOutOfCapacity: raise_error("Full", "arena out of capacity: " + context);
    case Status::kInvalidArgument: throw py::value_error(context);
    case Status::kNotFound: raise_error("ChannelNotFound", context);
    case Status::kSystemError: raise_error("MemChannelError", "system error: " + context);
    default:
      if (is_corruption(s) || s == Status::kDoubleRelease) {
        raise_error("CorruptionError", std::string(to_string(s)) + ": " + context);
      }
      raise_error("MemChannelError", std::string(to_string(s)) + (context.empty() ? "" : ": " + context));
  }
}

// The reason a shm arena could not be created or attached, from what its backend (already
// destroyed by the failed Arena::create / attach) recorded for this thread.
std::string shm_reason(Status s) {
  if (s == Status::kNoHolderSlot) return to_string(s);
  const shm::Outcome o = shm::take_last_failure_in_thread();
  if (o.ok()) return to_string(s);
  std::string why = shm::to_string(o.status);
  if (o.sys_errno != 0) why += std::string(" (errno ") + std::to_string(o.sys_errno) + ": " + std::strerror(o.sys_errno) + ")";
  return why;
}

// ---------------------------------------------------------------------------------------------
// Waiting: GIL released, float timeouts on the monotonic clock, Ctrl-C in the main interpreter.

// A timeout argument in seconds, or -1 for None. One rule for every call that takes a timeout
// (send, recv, reserve, send_object, ...), checked even with block=False: None or any real
// number (int, float, numpy integers and floats, anything with __index__ or __float__) that is
// not negative and not NaN; bools (Python's and numpy's) are refused, they are not durations.
double timeout_seconds(PyObject* t) {
  if (t == Py_None) return -1;
  double seconds = 0;
  if (PyFloat_Check(t)) {
    seconds = PyFloat_AS_DOUBLE(t);
  } else {
    const char* type_name = Py_TYPE(t)->tp_name;
    const bool numpy_bool = std::strcmp(type_name, "numpy.bool") == 0 || std::strcmp(type_name, "numpy.bool_") == 0;
    const bool index = !PyBool_Check(t) && !numpy_bool && PyIndex_Check(t);
    const bool real = !PyBool_Check(t) && !numpy_bool && !index && Py_TYPE(t)->tp_as_number != nullptr &&
                      Py_TYPE(t)->tp_as_number->nb_float != nullptr;
    if (!index && !real) {
      throw py::type_error("timeout must be None or a number of seconds (int or float), got " +
                           std::string(type_name));
    }
    py::object number = py::reinterpret_steal<py::object>(index ? PyNumber_Index(t) : PyNumber_Float(t));
    if (!number) throw py::error_already_set();
    if (index) {
      seconds = PyLong_AsDouble(number.ptr());
      if (seconds == -1.0 && PyErr_Occurred()) {  // beyond a double: as good as infinite, or negative
        PyErr_Clear();
        seconds = PyObject_RichCompareBool(number.ptr(), py::int_(0).ptr(), Py_LT) == 1 ? -1.0 : HUGE_VAL;
      }
    } else {
      seconds = PyFloat_AS_DOUBLE(number.ptr());
    }
  }
  if (std::isnan(seconds) || seconds < 0) {
    throw py::value_error("timeout must be a non-negative number of seconds or None, got " +
                          std::string(py::repr(t)));
  }
  return seconds;
}

WaitSpec make_wait(bool block, const py::object& timeout, bool shared = false) {
  WaitSpec spec;
  const double seconds = timeout_seconds(timeout.ptr());
  if (!block) return WaitSpec::nonblocking();
  if (seconds >= 0) {
    if (seconds < 1e9) {
      spec.deadline_ns = monotonic_ns() + static_cast<int64_t>(seconds * 1e9);
      if (seconds == 0) spec.spin_ns = 0;
    }
  }
  // Every blocking wait wakes at least every kCancelSliceNs, so it can be cancelled
  // (Interpreter.close(), interpreter exit); on shared memory it also reclaims dead peers.
  spec.slice_ns = kCancelSliceNs;
  if (shared) spec.slice_ns = kLivenessSliceNs;
  if (PyInterpreterState_Get() == PyInterpreterState_Main()) spec.slice_ns = kSignalSliceNs;
  return spec;
}

template <typename R>
Status status_of(const R& r) {
  if constexpr (std::is_same_v<R, Status>) return r; else return r.status;
}

[[noreturn]] void raise_error(const char* class_name, const std::string& message);

// Runs `attempt(spec)` without the GIL until it returns something other than kInterrupted,
// checking between slices for signals (KeyboardInterrupt), for a cancellation of this
// interpreter's waits (WaitCancelled). Dead peers are reclaimed by the core's own waits
// (Channel's sweeping waits), so a wait never depends on a dead process. The GIL is re-taken by reacquire_gil(), never by
// a destructor: see pybind/gil.h for why that matters at interpreter exit.
template <typename Attempt>
auto wait_with_gil_released(WaitSpec spec, Attempt&& attempt) {
  const int64_t interp_id = PyInterpreterState_GetID(PyInterpreterState_Get());
  for (;;) {
    auto result = without_gil([&] { return attempt(spec); });
    if (status_of(result) != Status::kInterrupted) return result;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (waits_cancelled(interp_id)) {
      raise_error("WaitCancelled", "the wait was cancelled: this interpreter is being closed");
    }
  }
}

// The channel operations are lock-free and take well under a microsecond, less than dropping
// and re-taking the GIL (two mutex round trips). So a call first tries once with the GIL held
// and drops the GIL only when it has to wait (channel full or empty, arena out of space).
template <typename Attempt>
auto attempt_then_wait(const WaitSpec& spec, Attempt&& attempt) {
  auto first = attempt(WaitSpec::nonblocking());
  const Status s = status_of(first);
  if ((s != Status::kFull && s != Status::kEmpty) || spec.deadline_ns == 0) return first;
  return wait_with_gil_released(spec, std::forward<Attempt>(attempt));
}

// ---------------------------------------------------------------------------------------------
// Buffer: one block held by this interpreter, exported through the buffer protocol.

struct Buffer {
  enum class State { kLive, kReleased, kSent };

  std::shared_ptr<Arena> arena;
  BlockHandle block;
  uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  Py_ssize_t itemsize = 1;
  int ndim = 1;
  std::string format = "B";
  std::array<Py_ssize_t, kMaxNdim> shape{};
  std::array<Py_ssize_t, kMaxNdim> strides{};
  int exports = 0;  // live memoryviews / arrays over this buffer
  // Operations of this interpreter running on the payload with the GIL released (a large
  // write()): while one runs, release() and send() refuse (BufferError) instead of freeing or
  // handing on memory still being written. Read and written with the GIL held.
  int pins = 0;
  State state = State::kLive;

  Buffer(std::shared_ptr<Arena> a, BlockHandle b, const BlockView& v)
      : arena(std::move(a)), block(b), data(v.data), nbytes(v.length), itemsize(v.itemsize),
        ndim(static_cast<int>(v.ndim)), format(v.format_view()) {
    Py_ssize_t stride = itemsize;
    for (int i = ndim - 1; i >= 0; --i) {
      shape[i] = static_cast<Py_ssize_t>(v.shape[i]);
      strides[i] = stride;
      stride *= shape[i];
    }
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (state == State::kLive) arena->release(block);  // garbage-collected: the block goes back
  }

  void check_live(const char* what) const {
    if (state == State::kReleased) {
      throw py::value_error(std::string(what) + ": operation forbidden on a released memchannel Buffer");
    }
    if (state == State::kSent) {
      throw py::value_error(std::string(what) +
                            ": this Buffer was sent; ownership moved to the channel, so it can no "
                            "longer be used (receive the message to use its data)");
    }
  }
  void check_no_exports(const char* what) const {
    if (pins > 0) {
      PyErr_Format(PyExc_BufferError,
                   "%s: another thread is copying into this Buffer (a write() in progress); wait for "
                   "it to return first",
                   what);
      throw py::error_already_set();
    }
    if (exports > 0) {
      PyErr_Format(PyExc_BufferError,
                   "%s: %d memoryview(s) or array(s) still export this Buffer; delete them (or call "
                   "memoryview.release()) first",
                   what, exports);
      throw py::error_already_set();
    }
  }
  void release() {
    if (state != State::kLive) return;  // like memoryview.release(): a second call is a no-op
    check_no_exports("release()");
    state = State::kReleased;
    const Status s = arena->release(block);
    // kNotHolder: inherited across fork(), the block is the parent's; this Buffer forgets it.
    if (s != Status::kOk && s != Status::kNotHolder) raise_status(s, "releasing a Buffer");
  }
  py::tuple shape_tuple() const {
    py::tuple t(ndim);
    for (int i = 0; i < ndim; ++i) t[static_cast<size_t>(i)] = py::int_(shape[i]);
    return t;
  }
};

// Buffer objects are a plain CPython type, not a pybind11 class: one is made and freed per
// received message, and pybind11's instance registry (a hash-map insert and erase per object)
// and dispatch cost more than the channel operation itself. Each interpreter makes its own
// type object from buffer_spec (see make_buffer_type); they all share these slot functions.
struct BufferObject {
  PyObject_HEAD
  Buffer buf;  // constructed in place by new_buffer(), destroyed by buffer_dealloc()
};

Buffer* as_buffer(PyObject* obj) { return &reinterpret_cast<BufferObject*>(obj)->buf; }

// Runs a slot body, turning C++ exceptions (pybind11's included) into a set Python error.
// Not noexcept, and abi::__forced_unwind (pthread_exit at interpreter exit) passes through:
// see pybind/gil.h.
template <typename F>
auto guarded(F&& f, decltype(f()) on_error) -> decltype(f()) {
  try {
    return f();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return on_error;
}

extern "C" int buffer_getbuffer(PyObject* obj, Py_buffer* view, int flags);

// A memchannel Buffer of any interpreter (each has its own type object; all share the slot).
bool is_buffer(PyObject* obj) {
  const PyBufferProcs* procs = Py_TYPE(obj)->tp_as_buffer;
  return procs != nullptr && procs->bf_getbuffer == &buffer_getbuffer;
}

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
  view->obj = Py_NewRef(obj);
  view->buf = b->data;
  view->len = static_cast<Py_ssize_t>(b->nbytes);
  view->readonly = 0;
  view->itemsize = b->itemsize;
  view->format = (flags & PyBUF_FORMAT) ? const_cast<char*>(b->format.c_str()) : nullptr;
  view->ndim = b->ndim;
  view->shape = (flags & PyBUF_ND) == PyBUF_ND ? b->shape.data() : nullptr;
  view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? b->strides.data() : nullptr;
  view->suboffsets = nullptr;
  view->internal = nullptr;
  if (view->shape == nullptr) view->ndim = 1;  // unshaped request: plain bytes
  ++b->exports;
  return 0;
}

extern "C" void buffer_releasebuffer(PyObject* obj, Py_buffer*) {
  Buffer* b = as_buffer(obj);
  if (b->exports > 0) --b->exports;
}

extern "C" void buffer_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  as_buffer(self)->~Buffer();  // a live block goes back to the arena
  type->tp_free(self);
  Py_DECREF(type);
}

// A new Buffer object of `type` (this interpreter's Buffer type) owning `block`.
py::object new_buffer(PyTypeObject* type, std::shared_ptr<Arena> arena, BlockHandle block, const BlockView& v) {
  PyObject* self = type->tp_alloc(type, 0);
  if (self == nullptr) {
    arena->release(block);
    throw py::error_already_set();
  }
  try {
    new (&reinterpret_cast<BufferObject*>(self)->buf) Buffer(std::move(arena), block, v);
  } catch (...) {
    // The memory is not a Buffer: free it without running buffer_dealloc.
    PyTypeObject* t = Py_TYPE(self);
    t->tp_free(self);
    Py_DECREF(t);
    throw;
  }
  return py::reinterpret_steal<py::object>(self);
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

uint64_t to_size(const py::object& value, const char* name);

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
    {"release", buffer_release, METH_NOARGS, "Return the block to the arena now (no-op if already released)."},
    {"write", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_write)), METH_VARARGS | METH_KEYWORDS,
     "write(data, offset=0): copy `data` into this Buffer at `offset` (counted in stats()['bytes_copied'])."},
    {"tobytes", buffer_tobytes, METH_NOARGS, "A bytes copy of the payload."},
    {"__array__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_array)),
     METH_VARARGS | METH_KEYWORDS, "__array__(dtype=None, copy=None): the payload as a numpy array (no copy "
     "unless asked); ValueError once released or sent."},
    {"__enter__", buffer_enter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(buffer_exit)), METH_FASTCALL, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef buffer_getset[] = {
    {"nbytes", buffer_get<[](Buffer& b) { return b.nbytes; }>, nullptr, "Payload bytes.", const_cast<char*>("nbytes")},
    {"format", buffer_get<[](Buffer& b) { return b.format; }>, nullptr, "PEP 3118 format.", const_cast<char*>("format")},
    {"itemsize", buffer_get<[](Buffer& b) { return b.itemsize; }>, nullptr, nullptr, const_cast<char*>("itemsize")},
    {"ndim", buffer_get<[](Buffer& b) { return b.ndim; }>, nullptr, nullptr, const_cast<char*>("ndim")},
    {"shape", buffer_get<[](Buffer& b) { return b.shape_tuple(); }>, nullptr, nullptr, const_cast<char*>("shape")},
    {"readonly", buffer_get<[](Buffer&) { return false; }>, nullptr, nullptr, const_cast<char*>("readonly")},
    {"address", buffer_get<[](Buffer& b) { return reinterpret_cast<uintptr_t>(b.data); }>, nullptr,
     "Address of the payload in this process (to check zero-copy).", const_cast<char*>("address")},
    {"released", buffer_get_released, nullptr, "True once sent or released.", nullptr},
    {"exports", buffer_get_exports, nullptr, "Live memoryviews / arrays over this Buffer.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

constexpr const char* kBufferDoc =
    "A block of channel memory held by this interpreter. Exports the PEP 3118 buffer protocol with\n"
    "the sender's format and shape: memoryview(buf) and numpy.asarray(buf) are zero-copy. After\n"
    "send(buf) or buf.release(), any use raises ValueError.";

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

// This interpreter's Buffer type (the module attribute), for the Channel objects it creates.
py::object current_buffer_type() {
  return py::module_::import("memchannel._memchannel").attr("Buffer");
}

// ---------------------------------------------------------------------------------------------
// Arena and Channel objects.

struct PyArena {
  std::shared_ptr<Arena> arena;
  std::string backend;
  std::string name;  // shm: segment-0 name; heap: empty

  bool shared() const { return backend == "shm"; }
};

std::shared_ptr<PyArena> make_arena(uint64_t capacity, const std::string& backend) {
  std::unique_ptr<MemoryBackend> mem;
  shm::ShmBackend* shm_backend = nullptr;
  if (backend == "heap") {
    mem = std::make_unique<HeapBackend>();
  } else if (backend == "shm") {
    // Once per process: remove what dead processes left in /dev/shm.
    static std::once_flag swept;
    std::call_once(swept, [] { shm::cleanup_dead_arenas(); });
    auto b = shm::ShmBackend::for_new_arena();
    shm_backend = b.get();
    mem = std::move(b);
  } else {
    throw py::value_error("backend must be 'shm' (processes and interpreters) or 'heap' "
                          "(threads and interpreters of this process), got '" + backend + "'");
  }
  std::string name = shm_backend != nullptr ? shm_backend->base_name() : "";
  shm::take_last_failure_in_thread();  // only this creation's failure names the reason
  auto created = Arena::create(std::move(mem), capacity, next_id());
  if (!created.ok()) {
    if (created.status == Status::kInvalidArgument) {
      throw py::value_error("arena capacity of " + std::to_string(capacity) +
                            " bytes is too small (needs at least 16 KiB)");
    }
    if (shm_backend != nullptr && created.status != Status::kOutOfCapacity) {
      raise_error("MemChannelError", "creating a shm arena '" + name + "': " + shm_reason(created.status));
    }
    raise_status(created.status, "creating a " + backend + " arena");
  }
  if (!name.empty()) register_arena(name, created.value);
  return std::make_shared<PyArena>(PyArena{std::move(created.value), backend, std::move(name)});
}

// Maps (or finds already mapped in this process) the shm arena whose segment 0 is `name`.
std::shared_ptr<Arena> open_shm_arena(const std::string& name) {
  if (auto found = find_arena(name)) return found;
  if (!shm::is_memchannel_name(name)) throw py::value_error("not a memchannel segment name: '" + name + "'");
  auto probe = shm::ShmBackend::probe(name);
  if (!probe.ok()) {
    const std::string why = std::string(shm::to_string(probe.status)) +
                            (probe.sys_errno != 0 ? std::string(" (") + std::strerror(probe.sys_errno) + ")" : "");
    if (probe.status == shm::Status::kNotFound) {
      raise_error("ChannelNotFound", "the shared-memory arena '" + name +
                                         "' no longer exists (every process using it has detached)");
    }
    raise_error("MemChannelError", "refusing to open shared-memory arena '" + name + "': " + why);
  }
  auto backend = shm::ShmBackend::for_existing(name);
  shm::take_last_failure_in_thread();
  auto attached = Arena::attach(std::move(backend), probe.value);
  if (!attached.ok()) {
    switch (attached.status) {
      case Status::kNotReady:
        raise_error("MemChannelError", "shared-memory arena '" + name +
                                           "' was never fully initialised (its creator died while "
                                           "creating it); `python -m memchannel cleanup` removes it");
      case Status::kBadMagic:
      case Status::kVersionMismatch:
        raise_error("CorruptionError", "shared-memory segment '" + name + "' is not a memchannel arena of this "
                                       "version (" + to_string(attached.status) + ")");
      case Status::kNotFound:
        raise_error("ChannelNotFound", "the shared-memory arena '" + name + "' is being torn down");
      default:
        raise_error("MemChannelError", "cannot attach to shared-memory arena '" + name + "': " + shm_reason(attached.status));
    }
  }
  register_arena(name, attached.value);
  return attached.value;
}

uint64_t to_size(const py::object& value, const char* name) {
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

// Itemsize of a struct-module (PEP 3118) format. A numpy dtype spelling such as "<f8",
// "float32" or "f8,i4" is accepted too and rewritten to its PEP 3118 form (as numpy exports
// it: "T{d:f0:i:f1:}"), when numpy is importable. The caller checks the result.
uint32_t format_itemsize(std::string& format) {
  try {
    return py::module_::import("struct").attr("calcsize")(format).cast<uint32_t>();
  } catch (py::error_already_set&) {
  }
  uint64_t itemsize = 0;
  try {
    py::module_ np = py::module_::import("numpy");
    // Two items: numpy describes a one-item array of a packed struct with a format its own
    // parser reads with padding (np.empty(1, "f8,i4") exports 'T{d:f0:i:f1:}', read back as
    // 16 bytes); two or more get explicit byte-order marks ('T{=d:f0:@i:f1:}').
    py::object arr = np.attr("empty")(2, py::arg("dtype") = format);
    py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(arr.ptr()));
    if (!view) throw py::error_already_set();
    const std::string converted = py::str(view.attr("format"));
    itemsize = view.attr("itemsize").cast<uint64_t>();
    view.attr("release")();
    format = converted;
  } catch (py::error_already_set&) {
    throw py::value_error("format '" + format + "' is not a struct-module / PEP 3118 format "
                          "(e.g. 'B', '<i4', '<d') nor a numpy dtype");
  }
  if (itemsize > UINT32_MAX) throw py::value_error("format '" + format + "': items larger than 4 GiB");
  return static_cast<uint32_t>(itemsize);
}

// A format string for a message: non-printable bytes escaped (it may come from a forged block).
std::string printable_format(std::string_view f) {
  std::string out;
  for (size_t i = 0; i < f.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(f[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char esc[8];
      std::snprintf(esc, sizeof(esc), "\\x%02x", c);
      out += esc;
    }
  }
  if (f.size() > 80) out += "...";
  return out;
}

// Why `format` with `itemsize` cannot describe a Buffer (see pybind/pep3118.h), as the error a
// sender gets: TypeError for pointer items, ValueError for the rest.
[[noreturn]] void refuse_format(const std::string& what, std::string_view format, uint64_t itemsize) {
  const FormatInfo info = parse_format(format);
  const std::string shown = "'" + printable_format(format) + "'";
  if (info.verdict == FormatVerdict::kPointer) {
    throw py::type_error(what + ": buffers whose items are pointers (format " + shown + ": " + info.why +
                         ") cannot cross a channel: the receiver would dereference this process's "
                         "addresses. Use send_object() (pickled), e.g. for numpy object arrays");
  }
  if (info.verdict == FormatVerdict::kInvalid) {
    throw py::value_error(what + ": buffer format " + shown + " is not a valid PEP 3118 format (" + info.why +
                          "); send memoryview(x).cast('B') to send the raw bytes");
  }
  throw py::value_error(what + ": buffer format " + shown + " describes items of " +
                        std::to_string(info.itemsize) + " bytes, but the buffer's itemsize is " +
                        std::to_string(itemsize) + "; send memoryview(x).cast('B') to send the raw bytes");
}

// The sender's side of the format check: what a Buffer will carry must pass the receiver's.
void check_outgoing_format(const char* what, std::string_view format, uint64_t itemsize) {
  if (!format_fits(format, itemsize)) refuse_format(what, format, itemsize);
}

std::string capacity_message(const Arena& arena, uint64_t nbytes) {
  const uint64_t now = arena.reachable_payload();
  std::string largest = std::to_string(now) + " bytes of " + std::to_string(arena.capacity()) + " capacity";
  if (now < arena.max_payload()) {
    largest += "; " + std::to_string(arena.max_payload()) +
               " before its memory was split into segments for smaller messages";
  }
  return "a message of " + std::to_string(nbytes) + " bytes does not fit this arena (largest: " + largest +
         "); create the channel from mc.Arena(capacity=...) with a larger capacity";
}

// The arena's counters, as both Channel.stats() and Arena.stats() report them.
void add_arena_stats(py::dict& d, const ArenaStats& a) {
  d["capacity"] = a.capacity;
  d["mapped_bytes"] = a.mapped_bytes;
  d["carved_bytes"] = a.carved_bytes;
  d["blocks_in_use"] = a.blocks_in_use;
  d["bytes_in_use"] = a.bytes_in_use;
  d["bytes_copied"] = a.bytes_copied;
  d["corruption_count"] = a.corruption_count;
  d["segments"] = a.segments;
  d["attached_processes"] = a.attached_holders;
  d["reclaimed_blocks"] = a.reclaimed_blocks;
}

struct PyChannel {
  std::shared_ptr<PyArena> arena;
  std::shared_ptr<Channel> channel;
  py::object buffer_type = current_buffer_type();  // of the interpreter that made this object

  Channel& ch() {
    // A forked child's first use of a channel it inherited: take an attach of its own.
    if (!channel->held_here()) channel->reattach_after_fork();
    return *channel;
  }
  WaitSpec wait_spec(bool block, const py::object& timeout) { return make_wait(block, timeout, arena->shared()); }
  template <typename Attempt>
  auto waiting(const WaitSpec& spec, Attempt&& attempt) {
    return attempt_then_wait(spec, std::forward<Attempt>(attempt));
  }

  // Copies any buffer-protocol object into a new block (one memcpy) and returns it.
  BlockHandle copy_in(const py::handle& data, const WaitSpec& spec) {
    Py_buffer view;
    if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_FULL_RO) != 0) {
      PyErr_Clear();
      throw py::type_error(
          std::string("send() needs a bytes-like object (bytes, bytearray, memoryview, "
                      "array.array, numpy array, memchannel.Buffer); got ") +
          Py_TYPE(data.ptr())->tp_name + ". Use send_object() for arbitrary Python objects.");
    }
    struct ViewGuard {
      Py_buffer* v;
      ~ViewGuard() { PyBuffer_Release(v); }
    } guard{&view};
    if (view.suboffsets != nullptr) {
      throw py::type_error("send() cannot take buffers with suboffsets (PIL-style arrays)");
    }
    std::array<int64_t, kMaxNdim> shape{};
    if (view.ndim > static_cast<int>(kMaxNdim)) {
      throw py::value_error("send(): arrays with more than " + std::to_string(kMaxNdim) +
                            " dimensions are not supported");
    }
    for (int i = 0; i < view.ndim; ++i) shape[i] = view.shape != nullptr ? view.shape[i] : view.len;
    PayloadLayout layout;
    layout.itemsize = static_cast<uint32_t>(view.itemsize);
    layout.ndim = static_cast<uint32_t>(view.ndim);
    layout.shape = shape.data();
    layout.format = view.format != nullptr ? std::string_view(view.format) : std::string_view("B");
    if (layout.format.size() > kMaxFormatLen) {
      throw py::value_error("send(): buffer format string longer than " + std::to_string(kMaxFormatLen));
    }
    check_outgoing_format("send()", layout.format, static_cast<uint64_t>(view.itemsize));
    const uint64_t nbytes = static_cast<uint64_t>(view.len);
    auto got = waiting(spec, [&](const WaitSpec& w) { return ch().allocate(nbytes, layout, w); });
    if (!got.ok()) {
      raise_status(got.status, got.status == Status::kTooLarge ? capacity_message(*arena->arena, nbytes)
                                                               : "no room for the message");
    }
    uint8_t* dst = arena->arena->payload(got.value);
    const bool contiguous = PyBuffer_IsContiguous(&view, 'C') != 0;
    if (contiguous && nbytes >= kCopyWithoutGil) {
      // The exporter is pinned by `view`; nothing can resize it.
      without_gil([&] { std::memcpy(dst, view.buf, nbytes); });
    } else if (contiguous) {
      std::memcpy(dst, view.buf, nbytes);
    } else if (PyBuffer_ToContiguous(dst, &view, view.len, 'C') != 0) {
      arena->arena->release(got.value);
      throw py::error_already_set();
    }
    arena->arena->add_bytes_copied(nbytes);
    return got.value;
  }

  void send(const py::handle& data, bool block, const py::object& timeout) {
    const WaitSpec spec = wait_spec(block, timeout);
    if (is_buffer(data.ptr())) {
      Buffer* b = as_buffer(data.ptr());
      b->check_live("send()");
      if (b->arena == arena->arena) {  // same arena: ownership moves, no copy
        b->check_no_exports("send()");
        b->state = Buffer::State::kSent;  // claimed while the GIL is released below
        const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send(b->block, w); });
        if (s != Status::kOk) {
          b->state = Buffer::State::kLive;  // not sent: the caller still owns it
          raise_status(s, "");
        }
        return;
      }
    }
    const BlockHandle fresh = copy_in(data, spec);
    const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send(fresh, w); });
    if (s != Status::kOk) {
      arena->arena->release(fresh);
      raise_status(s, "");
    }
  }

  py::object wrap(BlockHandle block) {
    auto v = arena->arena->view(block);
    if (!v.ok()) {
      arena->arena->release(block);
      raise_status(v.status, "received a message with corrupted metadata");
    }
    // view() checked shape x itemsize == length; the format is checked here, before anything
    // exports it: a peer may have written any format into the block (e.g. 'O', which numpy
    // would turn into this process dereferencing the peer's pointers). Plain bytes: one lookup.
    if (!format_fits(v.value.format_view(), v.value.itemsize)) {
      const std::string shown = printable_format(v.value.format_view());
      const FormatInfo info = parse_format(v.value.format_view());
      const std::string why = info.verdict == FormatVerdict::kOk
                                  ? "it describes items of " + std::to_string(info.itemsize) + " bytes"
                                  : std::string(info.why);
      arena->arena->note_corruption();
      arena->arena->release(block);
      raise_error("CorruptionError", "received a message whose format metadata is corrupt (format '" + shown +
                                         "' with itemsize " + std::to_string(v.value.itemsize) + ": " + why +
                                         "); the message was dropped");
    }
    return new_buffer(reinterpret_cast<PyTypeObject*>(buffer_type.ptr()), arena->arena, block, v.value);
  }

  py::object recv(bool block, const py::object& timeout) {
    const WaitSpec spec = wait_spec(block, timeout);
    auto got = waiting(spec, [&](const WaitSpec& w) { return ch().recv(w); });
    if (!got.ok()) raise_status(got.status, "");
    return wrap(got.value);
  }

  py::object reserve(const py::object& nbytes, const std::string& format,
                                  const py::object& shape, const py::object& timeout) {
    uint32_t itemsize = 1;
    std::string fmt = format;
    if (fmt != "B") {
      if (parse_format(fmt).verdict == FormatVerdict::kPointer) refuse_format("reserve()", fmt, 0);
      itemsize = format_itemsize(fmt);
      if (itemsize == 0) throw py::value_error("reserve(): format '" + format + "' has itemsize 0");
      if (fmt.size() > kMaxFormatLen) {
        throw py::value_error("reserve(): format string longer than " + std::to_string(kMaxFormatLen));
      }
      check_outgoing_format("reserve()", fmt, itemsize);  // numpy spellings: as converted ("object" -> 'O')
    }
    std::array<int64_t, kMaxNdim> dims{};
    uint32_t ndim = 1;
    uint64_t total = 0;
    if (!shape.is_none()) {
      py::tuple t = py::tuple(shape);  // accepts any sequence
      if (t.size() > kMaxNdim) throw py::value_error("reserve(): at most 32 dimensions");
      ndim = static_cast<uint32_t>(t.size());
      uint64_t elements = 1;
      for (uint32_t i = 0; i < ndim; ++i) {
        const uint64_t d = to_size(t[i], "reserve() shape entries");
        if (__builtin_mul_overflow(elements, d, &elements)) throw py::value_error("reserve(): shape too large");
        dims[i] = static_cast<int64_t>(d);
      }
      if (__builtin_mul_overflow(elements, uint64_t{itemsize}, &total)) {
        throw py::value_error("reserve(): shape too large");
      }
      if (!nbytes.is_none() && to_size(nbytes, "nbytes") != total) {
        throw py::value_error("reserve(): nbytes=" + std::string(py::str(nbytes)) +
                              " does not match shape x itemsize = " + std::to_string(total));
      }
    } else if (!nbytes.is_none()) {
      total = to_size(nbytes, "nbytes");
      if (total % itemsize != 0) {
        throw py::value_error("reserve(): nbytes must be a multiple of the itemsize of format '" + fmt + "'");
      }
      dims[0] = static_cast<int64_t>(total / itemsize);
    } else {
      throw py::type_error("reserve() needs nbytes or shape");
    }
    PayloadLayout layout{itemsize, ndim, dims.data(), fmt};
    const WaitSpec spec = wait_spec(true, timeout);
    auto got = waiting(spec, [&](const WaitSpec& w) { return ch().allocate(total, layout, w); });
    if (!got.ok()) {
      raise_status(got.status, got.status == Status::kTooLarge ? capacity_message(*arena->arena, total)
                                                               : "no room to reserve " + std::to_string(total) + " bytes");
    }
    return wrap(got.value);
  }

  // Handle layout: "MCH1", kind ('h' heap, 's' shm), five u64 fields, then the shm name.
  py::bytes handle() {
    pin_channel(channel);  // a handle may be in flight: keep the channel until it is closed
    const uint64_t fields[kHandleFields] = {static_cast<uint64_t>(getpid()), ch().arena()->arena_id(),
                                            ch().channel_id(), ch().offset(),
                                            arena->shared() ? arena->arena->stats().mapped_bytes : 0};
    std::string out(kHandleMagic, 4);
    out.push_back(arena->shared() ? 's' : 'h');
    out.append(reinterpret_cast<const char*>(fields), sizeof(fields));
    out += arena->name;
    return py::bytes(out);
  }

  static std::shared_ptr<PyChannel> attach(const py::bytes& handle_bytes) {
    const std::string h = handle_bytes;
    constexpr size_t kFixed = 5 + 8 * kHandleFields;
    if (h.size() < kFixed || std::memcmp(h.data(), kHandleMagic, 4) != 0 || (h[4] != 'h' && h[4] != 's')) {
      throw py::value_error("not a memchannel channel handle (expected the bytes of Channel.handle)");
    }
    uint64_t fields[kHandleFields];
    std::memcpy(fields, h.data() + 5, sizeof(fields));
    const bool shared = h[4] == 's';
    const std::string name = h.substr(kFixed);
    if (!shared && fields[0] != static_cast<uint64_t>(getpid())) {
      raise_error("MemChannelError",
                  "this is a backend='heap' channel of another process (pid " + std::to_string(fields[0]) +
                      "); heap channels only connect threads and subinterpreters of one process. "
                      "Create the channel with backend='shm' to cross processes");
    }
    auto out = std::make_shared<PyChannel>();
    std::shared_ptr<Channel> ch = find_channel(fields[1], fields[2]);
    if (!ch && shared) {
      auto arena = open_shm_arena(name);
      auto opened = Channel::open(arena, fields[3]);
      if (!opened.ok() || opened.value->channel_id() != fields[2]) {
        raise_error("ChannelNotFound", "the channel of this handle no longer exists in arena '" + name + "'");
      }
      ch = std::move(opened.value);
      register_channel(ch);
    }
    if (!ch) {
      raise_error("ChannelNotFound",
                  "the channel of this handle no longer exists (it was closed and every object "
                  "using it is gone)");
    }
    out->arena = std::make_shared<PyArena>(PyArena{ch->arena(), shared ? "shm" : "heap", name});
    out->channel = std::move(ch);
    return out;
  }

  py::dict stats() {
    const ChannelStats c = ch().stats();
    const ArenaStats a = ch().arena()->stats();
    py::dict d;
    d["backend"] = arena->backend;
    d["queued"] = c.queued;
    d["bytes_queued"] = c.bytes_queued;
    d["sent"] = c.sent;
    d["received"] = c.received;
    d["closed"] = c.closed;
    d["maxsize"] = c.maxsize;
    d["maxbytes"] = c.maxbytes;
    add_arena_stats(d, a);
    return d;
  }

  bool full() {
    const ChannelStats c = ch().stats();
    return (c.maxsize != 0 && c.queued >= c.maxsize) || (c.maxbytes != 0 && c.bytes_queued >= c.maxbytes);
  }

  void close() {
    ch().close();
    unpin_channel(ch());
  }
};

// ---------------------------------------------------------------------------------------------
// The C++ object behind `self`. Every method and property of Arena and Channel goes through
// this: an object made by T.__new__(T) without __init__, or whose __init__ failed, has no C++
// object (pybind11 would hand the method uninitialised memory), so it gets a TypeError.

template <typename T>
T& self_of(py::handle self, const char* type_name) {
  const py::detail::type_info* tinfo = py::detail::get_type_info(typeid(T));
  if (tinfo == nullptr || !PyObject_TypeCheck(self.ptr(), tinfo->type)) {
    throw py::type_error(std::string("this method needs a memchannel.") + type_name + ", got " +
                         Py_TYPE(self.ptr())->tp_name);
  }
  auto vh = reinterpret_cast<py::detail::instance*>(self.ptr())->get_value_and_holder(tinfo, false);
  if (!vh || !vh.holder_constructed() || !vh.template holder<std::shared_ptr<T>>()) {
    throw py::type_error(std::string("memchannel.") + type_name +
                         " object is not initialised (made by __new__ without __init__, or its __init__ "
                         "failed); create it by calling memchannel." + type_name + "(...)");
  }
  return *vh.template holder<std::shared_ptr<T>>();
}
PyArena& arena_self(py::handle self) { return self_of<PyArena>(self, "Arena"); }
PyChannel& channel_self(py::handle self) { return self_of<PyChannel>(self, "Channel"); }

std::shared_ptr<PyChannel> make_channel(const py::object& maxsize, const py::object& maxbytes,
                                        const std::string& backend, const py::object& arena,
                                        const py::object& handle) {
  if (!handle.is_none()) return PyChannel::attach(handle.cast<py::bytes>());
  std::shared_ptr<PyArena> a;
  if (arena.is_none()) {
    a = make_arena(kDefaultHeapCapacity, backend);
  } else {
    if (!py::isinstance<PyArena>(arena)) {
      throw py::type_error("arena must be a memchannel.Arena, got " + std::string(Py_TYPE(arena.ptr())->tp_name));
    }
    arena_self(arena);  // an Arena whose __init__ never ran has no C++ arena: TypeError
    a = arena.cast<std::shared_ptr<PyArena>>();
  }
  const uint64_t max_messages = to_size(maxsize, "maxsize");
  if (max_messages > kMaxChannelSize) {
    throw py::value_error("maxsize=" + std::to_string(max_messages) + " is too large: at most " +
                          std::to_string(kMaxChannelSize) + " messages (2**63 - 1); 0 means unbounded");
  }
  auto created = Channel::create(a->arena, max_messages, to_size(maxbytes, "maxbytes"), next_id());
  if (!created.ok()) raise_status(created.status, "creating a channel");
  register_channel(created.value);
  auto out = std::make_shared<PyChannel>();
  out->arena = std::move(a);
  out->channel = std::move(created.value);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Channel.send and Channel.recv as METH_FASTCALL methods: the per-message path skips pybind11's
// generic dispatcher (argument-vector building, overload loop, type-caster lookups), which
// costs more than the channel operation. Everything else on Channel stays a pybind11 method.

// The PyChannel of a Channel object (the method descriptor has already checked the type).
PyChannel& channel_of(PyObject* self) {
  auto* inst = reinterpret_cast<py::detail::instance*>(self);
  auto vh = inst->get_value_and_holder();
  // The value pointer alone is not enough: pybind11 allocates it (uninitialised) on the first
  // cast of an object whose __init__ never ran.
  if (!vh.holder_constructed() || vh.value_ptr() == nullptr) return channel_self(self);  // raises
  return *static_cast<PyChannel*>(vh.value_ptr());
}

// Positional-or-keyword arguments of a fastcall method: `out` gets at most names.size() values
// (nullptr where not given); the first `required` must be given.
template <size_t N>
void parse_fastcall(const char* fn, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                    const std::array<const char*, N>& names, size_t required, std::array<PyObject*, N>& out) {
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

bool block_flag(PyObject* block) {
  if (block == nullptr) return true;
  const int truth = PyObject_IsTrue(block);
  if (truth < 0) throw py::error_already_set();
  return truth != 0;
}

py::object timeout_arg(PyObject* timeout) {
  return timeout == nullptr ? py::none() : py::reinterpret_borrow<py::object>(timeout);
}

extern "C" PyObject* channel_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("send", args, nargs, kwnames, std::array<const char*, 3>{"data", "block", "timeout"}, 1, a);
    channel_of(self).send(a[0], block_flag(a[1]), timeout_arg(a[2]));
    Py_RETURN_NONE;
  }, nullptr);
}

extern "C" PyObject* channel_recv(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 2> a;
    parse_fastcall("recv", args, nargs, kwnames, std::array<const char*, 2>{"block", "timeout"}, 0, a);
    return channel_of(self).recv(block_flag(a[0]), timeout_arg(a[1])).release().ptr();
  }, nullptr);
}

PyMethodDef channel_send_def = {
    "send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(channel_send)), METH_FASTCALL | METH_KEYWORDS,
    "send(data, block=True, timeout=None): queue a copy of the bytes-like `data` (one memcpy), or "
    "move a Buffer of this channel's arena without a copy."};
PyMethodDef channel_recv_def = {
    "recv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(channel_recv)), METH_FASTCALL | METH_KEYWORDS,
    "recv(block=True, timeout=None) -> Buffer: the next message, viewing channel memory."};

void add_fast_method(py::handle cls, PyMethodDef* def) {
  PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), def);
  if (descr == nullptr || PyObject_SetAttrString(cls.ptr(), def->ml_name, descr) != 0) {
    Py_XDECREF(descr);
    throw py::error_already_set();
  }
  Py_DECREF(descr);
}

}  // namespace
}  // namespace memchannel::py_glue

using namespace memchannel;
using namespace memchannel::py_glue;

PYBIND11_MODULE(_memchannel, m, py::mod_gil_not_used(), py::multiple_interpreters::per_interpreter_gil()) {
  m.doc() = "memchannel core bindings; use the `memchannel` package.";

  PyObject* buffer_type = PyType_FromSpec(&buffer_spec);
  if (buffer_type == nullptr) throw py::error_already_set();
  m.add_object("Buffer", py::reinterpret_steal<py::object>(buffer_type));

  py::class_<PyArena, std::shared_ptr<PyArena>>(m, "Arena", "Memory shared by the channels made from it.")
      .def(py::init([](const py::object& capacity, const std::string& backend) {
             return make_arena(capacity.is_none() ? kDefaultHeapCapacity : to_size(capacity, "capacity"), backend);
           }),
           py::arg("capacity") = py::none(), py::arg("backend") = "shm")
      // object.__reduce__ (pickle protocols 0 and 1, copy) would call pybind11's base type,
      // which aborts the process ("no pybind11-registered base types"): refuse it here.
      .def("__reduce__", [](py::handle) -> py::object {
        throw py::type_error("memchannel.Arena objects cannot be pickled; send a channel's handle "
                             "(or pickle the memchannel.Channel) instead");
      })
      .def_property_readonly("backend", [](py::handle s) { return arena_self(s).backend; })
      .def_property_readonly("name", [](py::handle s) { return arena_self(s).name; }, "Segment-0 name (shm) or ''.")
      .def_property_readonly("capacity", [](py::handle s) { return arena_self(s).arena->capacity(); })
      .def_property_readonly("max_message_bytes", [](py::handle s) { return arena_self(s).arena->reachable_payload(); },
                             "The largest message the arena can still hold (it shrinks once segments exist "
                             "that are smaller than the room left: they are never merged).")
      .def("stats", [](py::handle s) {
        PyArena& a = arena_self(s);
        py::dict d;
        d["backend"] = a.backend;
        add_arena_stats(d, a.arena->stats());
        return d;
      })
      .def("reap", [](py::handle s) {
        PyArena& a = arena_self(s);
        return without_gil([&] { return a.arena->reap_dead_holders(); });
      }, "Reclaim now the blocks held by processes that died; returns how many.")
      .def("census", [](py::handle s) {
        PyArena& a = arena_self(s);
        const ArenaCensus c = without_gil([&] { return a.arena->census(); });
        py::dict d;
        d["blocks"] = c.blocks;
        d["free"] = c.free_blocks;
        d["reserved"] = c.reserved;
        d["queued"] = c.queued;
        d["received"] = c.received;
        d["nodes"] = c.nodes;
        d["free_listed"] = c.free_listed;
        d["bad_cells"] = c.bad_cells;
        d["arena_cells"] = c.arena_cells;
        d["free_lists_consistent"] = c.free_lists_consistent;
        d["sending"] = c.sending;
        d["transferred"] = c.transferred;
        d["carving_cells"] = c.carving_cells;
        d["nodes_free"] = c.nodes_free;
        d["nodes_held"] = c.nodes_held;
        d["nodes_linked"] = c.nodes_linked;
        d["nodes_claimed"] = c.nodes_claimed;
        d["nodes_free_listed"] = c.nodes_free_listed;
        d["node_list_consistent"] = c.node_list_consistent;
        return d;
      }, "Walk all arena memory and count blocks by state (a consistency check for tests).");

  m.def("_detach_all", [] { without_gil([] { detach_all(); }); }, "Process exit: detach from every shared-memory arena (the last process removes segments).");
  m.def("_cleanup", [](const std::string& prefix) {
    return without_gil([&] { return shm::cleanup_dead_arenas(prefix); });
  }, py::arg("prefix") = "", "Remove segments of arenas whose every process is dead; returns their names.");
  m.def("_cancel_waits", [](int64_t interpreter_id) { cancel_waits(interpreter_id); }, py::arg("interpreter_id"),
        "Make every blocking memchannel call of that interpreter raise WaitCancelled (within 0.1 s).");
  m.def("_exit_by_sigint_at_exit", [] { exit_by_sigint_at_exit(); },
        "After finalization, end the process by SIGINT (a Ctrl-C exit, see pybind/gil.h).");
  m.def("_uncancel_waits", [](int64_t interpreter_id) { uncancel_waits(interpreter_id); },
        py::arg("interpreter_id"));
  m.def("_timeout_seconds", [](const py::object& timeout) -> py::object {
    const double seconds = timeout_seconds(timeout.ptr());
    return seconds < 0 ? py::object(py::none()) : py::object(py::float_(seconds));
  }, py::arg("timeout"), "The rule every timeout argument follows: seconds as a float, None for None; "
                         "TypeError / ValueError otherwise.");
  m.def("_parse_format", [](const std::string& format) {
    const FormatInfo info = parse_format(format);
    const char* verdict = info.verdict == FormatVerdict::kOk ? "ok" : info.verdict == FormatVerdict::kPointer ? "pointer" : "invalid";
    return py::make_tuple(verdict, info.itemsize, info.aligned_itemsize, info.why);
  }, py::arg("format"), "The PEP 3118 format check of pybind/pep3118.h: (verdict, itemsize, aligned itemsize, why).");
  m.def("_format_fits", [](const std::string& format, uint64_t itemsize) { return format_fits(format, itemsize); },
        py::arg("format"), py::arg("itemsize"));
  m.def("_list_segments", [](const std::string& prefix) {
    return shm::list_segments(prefix.empty() ? shm::default_prefix() : std::string_view(prefix));
  }, py::arg("prefix") = "");

  auto channel_cls = py::class_<PyChannel, std::shared_ptr<PyChannel>>(m, "Channel", "A buffer channel (see memchannel.Channel).");
  add_fast_method(channel_cls, &channel_send_def);
  add_fast_method(channel_cls, &channel_recv_def);
  channel_cls
      .def(py::init(&make_channel), py::arg("maxsize") = 0, py::kw_only(), py::arg("maxbytes") = 0,
           py::arg("backend") = "shm", py::arg("arena") = py::none(), py::arg("_handle") = py::none())
      .def("__reduce__", [](py::handle) -> py::object {  // see Arena.__reduce__
        throw py::type_error("pickle memchannel.Channel objects (they pickle as their handle), "
                             "not memchannel._memchannel.Channel");
      })
      .def("send_nowait", [](py::handle s, const py::handle& data) { channel_self(s).send(data, false, py::none()); },
           py::arg("data"))
      .def("recv_nowait", [](py::handle s) { return channel_self(s).recv(false, py::none()); })
      .def("reserve", [](py::handle s, const py::object& nbytes, const std::string& format, const py::object& shape,
                          const py::object& timeout) { return channel_self(s).reserve(nbytes, format, shape, timeout); }, py::arg("nbytes") = py::none(), py::kw_only(),
           py::arg("format") = "B", py::arg("shape") = py::none(), py::arg("timeout") = py::none())
      .def("close", [](py::handle s) { channel_self(s).close(); })
      .def_property_readonly("closed", [](py::handle s) { return channel_self(s).ch().closed(); })
      .def("qsize", [](py::handle s) { return channel_self(s).ch().queued(); })
      .def("empty", [](py::handle s) { return channel_self(s).ch().queued() == 0; })
      .def("full", [](py::handle s) { return channel_self(s).full(); })
      .def("stats", [](py::handle s) { return channel_self(s).stats(); })
      .def_property_readonly("handle", [](py::handle s) { return channel_self(s).handle(); })
      .def_property_readonly("backend", [](py::handle s) { return channel_self(s).arena->backend; })
      .def_property_readonly("_arena", [](py::handle s) { return channel_self(s).arena; })
      .def("__iter__", [](py::object self) { channel_self(self); return self; })
      .def("__next__", [](py::handle s) {
        PyChannel& c = channel_self(s);
        const WaitSpec spec = c.wait_spec(true, py::none());
        auto got = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().recv(w); });
        if (got.status == Status::kClosed) throw py::stop_iteration();
        if (!got.ok()) raise_status(got.status, "");
        return c.wrap(got.value);
      });
}
