#include "pybind/fastcall.h"

#include <array>
#include <cstring>
#include <string>

#include "pybind/args.h"
#include "pybind/buffer.h"
#include "pybind/channel.h"
#include "pybind/errors.h"
#include "pybind/formats.h"
#include "pybind/gil.h"
#include "pybind/holder.h"
#include "pybind/tracker.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

namespace py = pybind11;

// ---------------------------------------------------------------------------------------------
// PyChannel's per-message operations, beside the methods that call them.

namespace {
// Releases a Py_buffer the send holds across its copy (and its wait: the view pins the exporter).
struct ViewGuard {
  Py_buffer* v;
  ~ViewGuard() { PyBuffer_Release(v); }
};
}  // namespace

BlockHandle PyChannel::copy_in(const py::handle& data, const WaitSpec& spec) {
  Py_buffer view;
  if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_FULL_RO) != 0) {
    PyErr_Clear();
    throw py::type_error(
        std::string("send() needs a bytes-like object (bytes, bytearray, memoryview, "
                    "array.array, numpy array, memchannel.Buffer); got ") +
        Py_TYPE(data.ptr())->tp_name + ". Use send_object() for arbitrary Python objects.");
  }
  const ViewGuard guard{&view};
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
  // The block is ours and fresh: its payload address comes from allocate's own values, not
  // from a second validated read of the header (Arena::payload, ~290 instructions per send).
  uint8_t* dst = nullptr;
  auto got = waiting(spec, [&](const WaitSpec& w) { return ch().allocate(nbytes, layout, w, &dst); });
  if (!got.ok()) {
    raise_status(got.status, got.status == Status::kTooLarge ? capacity_message(*arena->arena, nbytes)
                                                             : "no room for the message");
  }
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

void PyChannel::send(const py::handle& data, bool block, const py::object& timeout) {
  send(data, wait_spec(block, timeout));
}

// A message of up to kInlineBytes of plain bytes travels inline in its queue node (core/node.h):
// no block to allocate, fill and free. A bytes object directly; other exporters through a view
// held across the send (it pins them: a bytearray cannot be resized meanwhile).
bool PyChannel::send_small(const py::handle& data, const WaitSpec& spec) {
  PyObject* obj = data.ptr();
  if (PyBytes_CheckExact(obj)) {
    const uint64_t n = static_cast<uint64_t>(PyBytes_GET_SIZE(obj));
    if (n > kInlineBytes) return false;
    const char* src = PyBytes_AS_STRING(obj);  // immutable, and referenced by the caller
    const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send_inline(src, n, w); });
    if (s != Status::kOk) raise_status(s, "");
    arena->arena->add_bytes_copied(n);
    return true;
  }
  if (!PyObject_CheckBuffer(obj)) return false;
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) != 0) {
    PyErr_Clear();
    return false;  // copy_in raises the specific error
  }
  const ViewGuard guard{&view};
  const bool plain = view.itemsize == 1 && view.ndim == 1 && view.suboffsets == nullptr &&
                     (view.format == nullptr || std::strcmp(view.format, "B") == 0) &&
                     PyBuffer_IsContiguous(&view, 'C') != 0;
  const uint64_t n = static_cast<uint64_t>(view.len);
  if (!plain || n > kInlineBytes) return false;
  const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send_inline(view.buf, n, w); });
  if (s != Status::kOk) raise_status(s, "");
  arena->arena->add_bytes_copied(n);
  return true;
}

void PyChannel::send(const py::handle& data, const WaitSpec& spec, py::object* tracker) {
  if (is_buffer(data.ptr())) {
    Buffer* b = as_buffer(data.ptr());
    b->check_live("send()");
    if (b->arena == arena->arena && !b->holds_block() && tracker == nullptr) {
      // A message received inline, forwarded: inline again (a copy of at most kInlineBytes).
      b->check_no_exports("send()");
      const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send_inline(b->data, b->nbytes, w); });
      if (s != Status::kOk) raise_status(s, "");
      b->state = Buffer::State::kSent;  // as a forwarded block: the Buffer is used up
      return;
    }
    if (b->arena == arena->arena && b->holds_block()) {  // same arena: ownership moves, no copy
      b->check_no_exports("send()");
      if (tracker != nullptr) *tracker = start_tracking(arena, b->block);
      b->state = Buffer::State::kSent;  // claimed while the GIL is released below
      const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send(b->block, w); });
      if (s != Status::kOk) {
        b->state = Buffer::State::kLive;  // not sent: the caller still owns it
        raise_status(s, "");
      }
      return;
    }
  }
  if (tracker == nullptr && send_small(data, spec)) return;
  const BlockHandle fresh = copy_in(data, spec);
  if (tracker != nullptr) {
    try {
      *tracker = start_tracking(arena, fresh);
    } catch (...) {
      arena->arena->release(fresh);
      throw;
    }
  }
  const Status s = waiting(spec, [&](const WaitSpec& w) { return ch().send(fresh, w); });
  if (s != Status::kOk) {
    arena->arena->release(fresh);
    raise_status(s, "");
  }
}

Result<BlockView> PyChannel::checked_view(BlockHandle block) {
  auto v = arena->arena->view(block);
  if (!v.ok()) {
    arena->arena->release(block);
    ch().note_message_lost(false);  // stats()["messages_lost"]; this call raises
    raise_status(v.status, "received a message with corrupted metadata");
  }
  // view() checked shape x itemsize == length; the format is checked here, before anything
  // exports it: a peer may have written any format into the block (e.g. 'O', which numpy
  // would turn into this process dereferencing the peer's pointers). Plain bytes: one lookup.
  if (!format_fits(v.value.format_view(), v.value.itemsize)) {
    const std::string shown = printable(v.value.format_view());
    const FormatInfo info = parse_format(v.value.format_view());
    const std::string why = info.verdict == FormatVerdict::kOk
                                ? "it describes items of " + std::to_string(info.itemsize) + " bytes"
                                : std::string(info.why);
    arena->arena->note_corruption();
    arena->arena->release(block);
    ch().note_message_lost(false);
    raise_error(ErrorClass::kCorruptionError,
                "received a message whose format metadata is corrupt (format '" + shown + "' with itemsize " +
                    std::to_string(v.value.itemsize) + ": " + why + "); the message was dropped");
  }
  return v;  // by NRVO: the view is large (shape and format arrays)
}

py::object PyChannel::wrap(BlockHandle block, const SmallMessage* small) {
  if (block.ref == 0 && small != nullptr) {
    return new_small_buffer(reinterpret_cast<PyTypeObject*>(buffer_type.ptr()), arena->arena, *small, state,
                            state_owner.ptr());
  }
  const Result<BlockView> v = checked_view(block);
  return new_buffer(reinterpret_cast<PyTypeObject*>(buffer_type.ptr()), arena->arena, block, v.value, state,
                    state_owner.ptr());
}

py::object PyChannel::recv(bool block, const py::object& timeout) {
  const WaitSpec spec = wait_spec(block, timeout);
  SmallMessage small;
  auto got = waiting(spec, [&](const WaitSpec& w) { return ch().recv(w, &small); });
  if (!got.ok()) {
    if (fd_watch && got.status == Status::kEmpty) fd_refresh();  // Channel.fileno(): pybind/select.h
    raise_status(got.status, "");
  }
  return wrap(got.value, &small);
}

// ---------------------------------------------------------------------------------------------
// The METH_FASTCALL methods.

namespace {

extern "C" PyObject* channel_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 4> a;
    parse_fastcall("send", args, nargs, kwnames, std::array<const char*, 4>{"data", "block", "timeout", "track"}, 1, a);
    PyChannel& c = channel_of(self);
    if (a[3] != nullptr && block_flag(a[3])) {  // track=True: the message's Tracker
      py::object tracker;
      c.send(a[0], c.wait_spec(block_flag(a[1]), timeout_arg(a[2])), &tracker);
      return tracker.release().ptr();
    }
    c.send(a[0], block_flag(a[1]), timeout_arg(a[2]));
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
    "send($self, /, data, block=True, timeout=None, track=False)\n--\n\nQueue a copy of the bytes-like `data` (one "
    "memcpy), or move a Buffer of this channel's arena without a copy. With track=True, returns a "
    "memchannel.Tracker that completes when the message has been released."};
PyMethodDef channel_recv_def = {
    "recv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(channel_recv)), METH_FASTCALL | METH_KEYWORDS,
    "recv($self, /, block=True, timeout=None)\n--\n\nThe next message (a Buffer), viewing channel memory."};

// Channel.closed as a getset descriptor: Queue.get() reads it per item, and a pybind11
// property costs a dispatch (~170 ns) for one load.
extern "C" PyObject* channel_closed_get(PyObject* self, void*) {
  return guarded([&]() -> PyObject* { return PyBool_FromLong(channel_of(self).ch().closed() ? 1 : 0); }, nullptr);
}

PyGetSetDef channel_closed_def = {
    "closed", channel_closed_get, nullptr,
    "Whether the channel was closed (by any party): sends are refused, receivers drain what is queued.", nullptr};

}  // namespace

PyChannel& channel_of(PyObject* self) {
  PyChannel* c = held_object_of_checked_type<PyChannel>(self);
  if (c == nullptr) return channel_self(self);  // raises: not initialised
  return *c;
}

void add_fast_method(py::handle cls, PyMethodDef* def) {
  PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), def);
  if (descr == nullptr || PyObject_SetAttrString(cls.ptr(), def->ml_name, descr) != 0) {
    Py_XDECREF(descr);
    throw py::error_already_set();
  }
  Py_DECREF(descr);
}

void add_fast_methods(py::handle channel_cls) {
  add_fast_method(channel_cls, &channel_send_def);
  add_fast_method(channel_cls, &channel_recv_def);
  PyObject* descr = PyDescr_NewGetSet(reinterpret_cast<PyTypeObject*>(channel_cls.ptr()), &channel_closed_def);
  if (descr == nullptr || PyObject_SetAttrString(channel_cls.ptr(), channel_closed_def.name, descr) != 0) {
    Py_XDECREF(descr);
    throw py::error_already_set();
  }
  Py_DECREF(descr);
}

}  // namespace memchannel::py_glue
