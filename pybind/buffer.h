// memchannel.Buffer: one block held by this interpreter, exported through the buffer protocol.
//
// Buffer objects are a plain CPython type, not a pybind11 class: one is made and freed per
// received message, and pybind11's instance registry (a hash-map insert and erase per object)
// and dispatch cost more than the channel operation itself. Each interpreter makes its own
// type object (make_buffer_type, kept in its module state); they all share the slot functions
// of pybind/buffer.cc.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "core/arena.h"
#include "core/status.h"
#include "pybind/errors.h"

namespace memchannel::py_glue {

namespace py = pybind11;

inline constexpr uint64_t kCopyWithoutGil = 256 * 1024;  // copies this large run without the GIL

// A Buffer holds a block (block.ref != 0), or a message received inline (core/node.h), whose
// bytes are copied into `small`: then nothing in the arena is held, and release() only ends
// the Buffer's use. The Python-visible behaviour is the same either way.
struct Buffer {
  enum class State { kLive, kReleased, kSent };

  std::shared_ptr<Arena> arena;
  BlockHandle block;
  uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  Py_ssize_t itemsize = 1;
  int ndim = 1;
  std::string format = "B";
  // shape and strides: in the object for up to kInlineDims dimensions (so a Buffer stays under
  // CPython's 512-byte small-object limit and is allocated by pymalloc, one per message), else
  // on the heap. The object never moves (constructed in place), so the pointers stay valid.
  static constexpr int kInlineDims = 4;
  Py_ssize_t dims_[2 * kInlineDims] = {};
  std::unique_ptr<Py_ssize_t[]> heap_dims_;
  Py_ssize_t* shape = dims_;
  Py_ssize_t* strides = dims_ + kInlineDims;
  int exports = 0;  // live memoryviews / arrays over this buffer
  // Operations of this interpreter running on the payload with the GIL released (a large
  // write()): while one runs, release() and send() refuse (BufferError) instead of freeing or
  // handing on memory still being written. Read and written with the GIL held.
  int pins = 0;
  State state = State::kLive;
  bool readonly = false;  // a received share (memchannel.share): its memory is others' too
  alignas(16) uint8_t small[kInlineBytes];  // an inline message's bytes (block.ref == 0)

  Buffer(std::shared_ptr<Arena> a, const SmallMessage& m) : arena(std::move(a)), data(small), nbytes(m.length) {
    std::memcpy(small, m.bytes, m.length);
    shape[0] = static_cast<Py_ssize_t>(m.length);
    strides[0] = 1;
  }
  Buffer(std::shared_ptr<Arena> a, BlockHandle b, const BlockView& v)
      : arena(std::move(a)), block(b), data(v.data), nbytes(v.length), itemsize(v.itemsize),
        ndim(static_cast<int>(v.ndim)), format(v.format_view()), readonly(v.readonly) {
    if (ndim > kInlineDims) {
      heap_dims_.reset(new Py_ssize_t[2 * static_cast<size_t>(ndim)]());
      shape = heap_dims_.get();
      strides = shape + ndim;
    }
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
    if (state == State::kLive && holds_block()) arena->release(block);  // garbage-collected: the block goes back
  }
  bool holds_block() const { return block.ref != 0; }

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
    if (!holds_block()) return;
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

struct ModuleState;  // pybind/state.h

struct BufferObject {
  PyObject_HEAD
  // The module state whose Buffer free list takes this object's memory back (home_owner, a
  // strong reference to the state's capsule, keeps it alive), or nullptr: back to pymalloc.
  ModuleState* home;
  PyObject* home_owner;
  Buffer buf;  // constructed in place by new_buffer(), destroyed by buffer_dealloc()
};
static_assert(sizeof(BufferObject) <= 512, "a Buffer object is allocated by pymalloc (<= 512 bytes)");

inline Buffer* as_buffer(PyObject* obj) { return &reinterpret_cast<BufferObject*>(obj)->buf; }

extern "C" int buffer_getbuffer(PyObject* obj, Py_buffer* view, int flags);

// A memchannel Buffer of any interpreter (each has its own type object; all share the slot).
inline bool is_buffer(PyObject* obj) {
  const PyBufferProcs* procs = Py_TYPE(obj)->tp_as_buffer;
  return procs != nullptr && procs->bf_getbuffer == &buffer_getbuffer;
}

// A new Buffer object of `type` (this interpreter's Buffer type) owning `block`. On failure
// the block goes back to the arena.
// `home` (with `home_owner`, the capsule that keeps it): the calling interpreter's module state,
// whose free list the object's memory comes from and goes back to; nullptr: pymalloc.
py::object new_buffer(PyTypeObject* type, std::shared_ptr<Arena> arena, BlockHandle block, const BlockView& v,
                      ModuleState* home = nullptr, PyObject* home_owner = nullptr);
// A new Buffer object of `type` holding a copy of an inline message.
py::object new_small_buffer(PyTypeObject* type, std::shared_ptr<Arena> arena, const SmallMessage& m,
                            ModuleState* home = nullptr, PyObject* home_owner = nullptr);

// Gives a Buffer of an inline message a block of its own (its bytes copied in), for what needs
// one (share(), pool()). No-op for a Buffer that holds a block. Call with no exports.
void ensure_block(Buffer* b, const char* what);

// A new Buffer type object for the calling interpreter (a new reference).
PyObject* make_buffer_type();

}  // namespace memchannel::py_glue
