// Object messages and batches as METH_FASTCALL methods of Channel:
//   send_object / recv_object      one Python object per message (the MCO1 frame below)
//   send_many / recv_many          many bytes-like messages (or Buffers) in one call
//   send_objects / recv_objects    many objects in one call
//
// The frame is the one python/memchannel/_objects.py documents (little-endian):
//   offset 0   magic "MCO1"                                4 bytes
//          4   nbuffers                                    u32
//          8   pickle_len                                  u64
//         16   table: nbuffers x (offset u64, length u64)
//    16+16*n   pickle bytes, then each out-of-band buffer, 64-byte aligned
//
// The common case, an object without out-of-band buffers (tuples, dicts, strings), runs here
// entirely: pickle.dumps (protocol 5) -> one block of 16 + len bytes, the header and the pickle
// copied in, linked; on receipt the frame is checked, the pickle copied out (at most
// kCopyOutMax bytes), the block freed and pickle.loads run. Frames with out-of-band buffers
// (numpy arrays), and large in-band pickles, go to _objects.py, which lays the buffers out in
// the block and hands them to pickle.loads as views of it.
#include "pybind/objects.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "pybind/args.h"
#include "pybind/buffer.h"
#include "pybind/channel.h"
#include "pybind/errors.h"
#include "pybind/fastcall.h"
#include "pybind/gil.h"
#include "pybind/state.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

namespace py = pybind11;

namespace {

constexpr char kMagic[4] = {'M', 'C', 'O', '1'};
constexpr uint64_t kHeaderBytes = 16;
constexpr uint64_t kEntryBytes = 16;
// In-band pickles up to this size are copied out of the block before pickle.loads, so the block
// is freed at once; larger ones are unpickled from a view of the block (_objects.decode).
constexpr uint64_t kCopyOutMax = 64 * 1024;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the MCO1 frame is little-endian");

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

py::object import_objects_attr(PyObject*& slot, const char* name) {
  if (slot == nullptr) {
    py::object f = py::module_::import("memchannel._objects").attr(name);
    slot = f.release().ptr();
  }
  return py::reinterpret_borrow<py::object>(slot);
}

// pickle.dumps(obj, 5, buffer_callback=...); `buffers` gets the out-of-band buffers (left
// empty for the usual object that has none). The interpreter's reusable list is used unless
// another send_object is pickling right now (a __reduce__ that sends, or another thread while
// pickling runs Python code): then a list of this call's own.
py::object pickle_object(ModuleState& st, PyObject* obj, py::list& buffers) {
  py::int_ protocol(5);
  if (st.buffers_list_busy) {
    py::object append = buffers.attr("append");
    PyObject* argv[3] = {obj, protocol.ptr(), append.ptr()};
    PyObject* data = PyObject_Vectorcall(st.pickle_dumps, argv, 2, st.buffer_callback_kwnames);
    if (data == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(data);
  }
  st.buffers_list_busy = true;
  PyObject* argv[3] = {obj, protocol.ptr(), st.buffers_append};
  PyObject* data = PyObject_Vectorcall(st.pickle_dumps, argv, 2, st.buffer_callback_kwnames);
  st.buffers_list_busy = false;
  const Py_ssize_t n = PyList_GET_SIZE(st.buffers_list);
  if (n != 0) {  // hand them over, and leave the shared list empty
    for (Py_ssize_t i = 0; i < n; ++i) buffers.append(py::handle(PyList_GET_ITEM(st.buffers_list, i)));
    if (PyList_SetSlice(st.buffers_list, 0, n, nullptr) != 0) {
      Py_XDECREF(data);
      throw py::error_already_set();
    }
  }
  if (data == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(data);
}

// Sends the frame of a pickle without out-of-band buffers: one block, one copy.
void send_inband_frame(PyChannel& c, const py::object& data, const WaitSpec& spec) {
  char* pickled = nullptr;
  Py_ssize_t pickle_len = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &pickled, &pickle_len) != 0) throw py::error_already_set();
  const uint64_t nbytes = kHeaderBytes + static_cast<uint64_t>(pickle_len);
  const uint32_t nbuffers = 0;
  const uint64_t len = static_cast<uint64_t>(pickle_len);
  if (nbytes <= kInlineBytes) {
    // A small object's frame travels inline in its queue node (core/node.h): built here, copied
    // into the node, no block.
    uint8_t frame[kInlineBytes];
    std::memcpy(frame, kMagic, 4);
    std::memcpy(frame + 4, &nbuffers, 4);
    std::memcpy(frame + 8, &len, 8);
    std::memcpy(frame + kHeaderBytes, pickled, len);
    const Status s = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().send_inline(frame, nbytes, w); });
    if (s != Status::kOk) raise_status(s, "");
    c.arena->arena->add_bytes_copied(nbytes);
    return;
  }
  PayloadLayout layout;  // 'B', one dimension of nbytes
  auto got = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().allocate(nbytes, layout, w); });
  if (!got.ok()) {
    raise_status(got.status, got.status == Status::kTooLarge ? capacity_message(*c.arena->arena, nbytes)
                                                             : "no room for the message");
  }
  uint8_t* dst = c.arena->arena->payload(got.value);
  if (dst == nullptr) {
    c.arena->arena->release(got.value);
    raise_status(Status::kCorruptedLength, "a freshly allocated block failed its checks");
  }
  std::memcpy(dst, kMagic, 4);
  std::memcpy(dst + 4, &nbuffers, 4);
  std::memcpy(dst + 8, &len, 8);
  // `data` is an immutable bytes object we hold a reference to: safe to copy without the GIL.
  if (len >= kCopyWithoutGil) {
    without_gil([&] { std::memcpy(dst + kHeaderBytes, pickled, len); });
  } else {
    std::memcpy(dst + kHeaderBytes, pickled, len);
  }
  c.arena->arena->add_bytes_copied(nbytes);
  const Status s = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().send(got.value, w); });
  if (s != Status::kOk) {
    c.arena->arena->release(got.value);
    raise_status(s, "");
  }
}

// What is left of a call's deadline, as a timeout argument (None: no deadline).
py::object seconds_left(const WaitSpec& spec) {
  if (spec.deadline_ns == WaitSpec::kForever) return py::none();
  const int64_t left_ns = spec.deadline_ns - monotonic_ns();
  return py::float_(left_ns > 0 ? static_cast<double>(left_ns) / 1e9 : 0.0);
}

// Sends a pickled object: its in-band frame here, or with its out-of-band buffers through
// _objects.send_frame_with_buffers. Waits for room (GIL released): callers hold `data` and
// `buffers` through keeping().
void send_frame(PyObject* self, PyChannel& c, ModuleState& st, const py::object& data, py::list& buffers,
                bool block, const WaitSpec& spec) {
  if (buffers.empty()) {
    send_inband_frame(c, data, spec);
    return;
  }
  import_objects_attr(st.objects_send_with_buffers, "send_frame_with_buffers")(
      py::handle(self), data, buffers, py::bool_(block), seconds_left(spec));
}

void send_object(PyObject* self, PyChannel& c, PyObject* obj, bool block, PyObject* timeout) {
  const WaitSpec spec = c.wait_spec(block, timeout_arg(timeout));  // checks timeout first
  ModuleState& st = *c.state;
  py::list buffers;
  py::object data = pickle_object(st, obj, buffers);
  keeping([&] { send_frame(self, c, st, data, buffers, block, spec); }, data, buffers);
}

[[noreturn]] void frame_error(PyChannel& c, BlockHandle block, const std::string& message) {
  if (block.ref != 0) c.arena->arena->release(block);
  raise_error(ErrorClass::kCorruptionError, "recv_object(): " + message);
}

// The object in a received frame of `nbytes` at `p`: a block's payload (small == nullptr),
// or an inline message's copy. Takes over the block: it is freed here, or (out-of-band
// buffers, large pickles) by the Buffer that _objects.decode keeps while arrays view it.
py::object decode_frame(PyChannel& c, BlockHandle block, const SmallMessage* small, const uint8_t* p,
                        uint64_t nbytes) {
  const bool in_node = small != nullptr;
  if (nbytes < kHeaderBytes) {
    frame_error(c, block, "a " + std::to_string(nbytes) +
                              "-byte message is not an object message (was it sent with send() rather "
                              "than send_object()?)");
  }
  if (std::memcmp(p, kMagic, 4) != 0) {
    frame_error(c, block, "message is not an object message (bad magic; was it sent with send() rather "
                          "than send_object()?)");
  }
  const uint32_t nbuffers = load_u32(p + 4);
  const uint64_t pickle_len = load_u64(p + 8);
  const uint64_t table_end = kHeaderBytes + kEntryBytes * nbuffers;
  if (table_end > nbytes || pickle_len > nbytes - table_end) {
    frame_error(c, block, "object header out of bounds (" + std::to_string(nbuffers) + " buffers, " +
                              std::to_string(pickle_len) + " pickle bytes in a " + std::to_string(nbytes) +
                              "-byte message)");
  }
  ModuleState& st = *c.state;
  if (nbuffers == 0 && pickle_len <= kCopyOutMax) {
    py::object pickled = py::reinterpret_steal<py::object>(
        PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p + kHeaderBytes), static_cast<Py_ssize_t>(pickle_len)));
    if (!in_node) c.arena->arena->release(block);  // the pickle is ours now
    if (!pickled) throw py::error_already_set();
    PyObject* obj = PyObject_CallOneArg(st.pickle_loads, pickled.ptr());
    if (obj == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(obj);
  }
  py::object buf = c.wrap(block, small);  // the Buffer owns the block (or the copy) from here
  return import_objects_attr(st.objects_decode, "decode")(buf);
}

// The object in a received message: an inline one from its copy, a block through its checked
// view (see decode_frame).
py::object decode_block(PyChannel& c, BlockHandle block, const SmallMessage* small) {
  if (block.ref == 0 && small != nullptr) return decode_frame(c, block, small, small->bytes, small->length);
  const Result<BlockView> v = c.checked_view(block);
  return decode_frame(c, block, nullptr, v.value.data, v.value.length);
}

py::object recv_object(PyChannel& c, bool block, PyObject* timeout) {
  const WaitSpec spec = c.wait_spec(block, timeout_arg(timeout));
  SmallMessage small;
  auto got = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().recv(w, &small); });
  if (!got.ok()) raise_status(got.status, "");
  return decode_block(c, got.value, &small);
}

// ---------------------------------------------------------------------------------------------
// Batches. One deadline covers the whole call. A send batch queues what fits, waiting for room
// as one send() would; an error stops it, and the exception's `queued` attribute (and a note)
// says how many of the batch's messages were queued before it. A receive batch waits for the
// first message only, then takes what is there up to max_messages; an error met after the
// first message is kept and raised by the next batch call on this Channel object, so the
// messages already taken are returned, not lost.

[[noreturn]] void rethrow_with_count(py::error_already_set e, const char* fn, Py_ssize_t queued) {
  py::object exc = e.value();
  py::int_ count(queued);
  if (PyObject_SetAttrString(exc.ptr(), "queued", count.ptr()) != 0) PyErr_Clear();
  py::object note = py::str(std::string(fn) + "(): " + std::to_string(queued) +
                            " message(s) of this batch were queued before this error");
  py::object add_note = py::getattr(exc, "add_note", py::none());
  if (!add_note.is_none()) add_note(note);
  throw e;
}

template <typename SendOne>
Py_ssize_t send_batch(const char* fn, PyObject* iterable, SendOne&& send_one) {
  py::object it = py::reinterpret_steal<py::object>(PyObject_GetIter(iterable));
  if (!it) throw py::error_already_set();
  Py_ssize_t queued = 0;
  for (;;) {
    PyObject* raw = PyIter_Next(it.ptr());
    if (raw == nullptr) {
      if (PyErr_Occurred()) {
        py::error_already_set e;
        rethrow_with_count(e, fn, queued);
      }
      return queued;
    }
    py::object item = py::reinterpret_steal<py::object>(raw);
    try {
      send_one(item);
    } catch (abi::__forced_unwind&) {  // see keeping() (pybind/wait.h)
      static_cast<void>(item.release());
      static_cast<void>(it.release());
      throw;
    } catch (py::error_already_set& e) {
      rethrow_with_count(e, fn, queued);
    } catch (py::builtin_exception& e) {
      e.set_error();
      py::error_already_set err;
      rethrow_with_count(err, fn, queued);
    }
    ++queued;
  }
}

Py_ssize_t max_messages_arg(PyObject* value, const char* fn) {
  if (value == nullptr) throw py::type_error(std::string(fn) + "() missing required argument 'max_messages'");
  const uint64_t n = to_size(py::reinterpret_borrow<py::object>(value), "max_messages");
  if (n == 0) throw py::value_error(std::string(fn) + "(): max_messages must be at least 1");
  return static_cast<Py_ssize_t>(n > (1u << 30) ? (1u << 30) : n);
}

// send_many: the messages go in chunks of up to Channel::kMaxChain, each queued by one
// Channel::send_many (one link, one wake per chunk). A chunk holds blocks this call copied the
// messages into, and Buffers of this arena whose blocks move without a copy (marked sent while
// queued, live again if they were not). Before a copy would have to wait for arena space, and
// before an error is raised, the chunk so far is queued: the batch behaves as that many send()s.
class ManySender {
 public:
  ManySender(PyChannel& c, const WaitSpec& spec) : c_(c), spec_(spec) {}
  ManySender(const ManySender&) = delete;
  ManySender& operator=(const ManySender&) = delete;
  ~ManySender() { settle(0); }  // an exception left the chunk unqueued: give everything back

  Py_ssize_t queued() const { return queued_; }

  void add(PyObject* item) {
    try {
      add_item(item);
    } catch (abi::__forced_unwind&) {  // see keeping() (pybind/wait.h): leak, never decref
      count_ = 0;
      throw;
    }
  }

  // Queues the chunk (waiting for room as send() does); raises the first error, after giving
  // back what was not queued.
  void flush() {
    if (count_ == 0) return;
    size_t done = 0;
    Status s = Status::kOk;
    try {
      s = c_.waiting(spec_, [&](const WaitSpec& w) {
        size_t q = 0;
        const Status st = c_.ch().send_many(out_.data() + done, count_ - done, w, &q);
        done += q;
        return st;
      });
    } catch (abi::__forced_unwind&) {
      count_ = 0;
      throw;
    } catch (...) {
      settle(done);
      throw;
    }
    settle(done);
    if (s != Status::kOk) raise_status(s, "");
  }

 private:
  void add_item(PyObject* item) {
    if (is_buffer(item)) {
      Buffer* b = as_buffer(item);
      b->check_live("send_many()");
      if (b->arena == c_.arena->arena) {  // same arena: ownership moves, no copy
        b->check_no_exports("send_many()");
        b->state = Buffer::State::kSent;  // claimed while the GIL is released
        // A Buffer received inline is forwarded inline: its bytes live in the Buffer (held).
        out_[count_] = Channel::Outgoing{b->block, b->holds_block() ? nullptr : b->data, b->nbytes};
        moved_[count_] = Py_NewRef(item);
        kept_[count_++] = nullptr;
        if (count_ == Channel::kMaxChain) flush();
        return;
      }
    }
    if (PyBytes_CheckExact(item) && static_cast<uint64_t>(PyBytes_GET_SIZE(item)) <= kInlineBytes) {
      // Inline (core/node.h): copied into its node at the link; the bytes object is held till then.
      const uint64_t n = static_cast<uint64_t>(PyBytes_GET_SIZE(item));
      out_[count_] = Channel::Outgoing{BlockHandle{0, 0}, PyBytes_AS_STRING(item), n};
      moved_[count_] = nullptr;
      kept_[count_++] = Py_NewRef(item);
      copied_ += n;
      if (count_ == Channel::kMaxChain) flush();
      return;
    }
    const BlockHandle fresh = copy(item);
    out_[count_] = Channel::Outgoing{fresh, nullptr, 0};
    moved_[count_] = nullptr;
    kept_[count_++] = nullptr;
    if (count_ == Channel::kMaxChain) flush();
  }

  // The first `done` messages of the chunk were queued; the rest go back to the caller.
  void settle(size_t done) {
    for (size_t i = 0; i < count_; ++i) {
      if (moved_[i] != nullptr) {
        if (i >= done) as_buffer(moved_[i])->state = Buffer::State::kLive;  // not sent: still the caller's
        Py_DECREF(moved_[i]);
      } else if (kept_[i] != nullptr) {
        Py_DECREF(kept_[i]);  // an inline copy: nothing else to give back
      } else if (i >= done) {
        c_.arena->arena->release(out_[i].block);
      }
    }
    queued_ += static_cast<Py_ssize_t>(done);
    count_ = 0;
    if (copied_ != 0) c_.arena->arena->add_bytes_copied(copied_);  // stats()["bytes_copied"]
    copied_ = 0;
  }

  // A copy of a bytes-like message in a new block. A bytes object (the usual message) is copied
  // here; anything else through PyChannel::copy_in (formats, shapes, non-contiguous views).
  BlockHandle copy(PyObject* item) {
    if (PyBytes_CheckExact(item)) {
      const uint64_t nbytes = static_cast<uint64_t>(PyBytes_GET_SIZE(item));
      const PayloadLayout plain;
      auto got = c_.ch().allocate(nbytes, plain, WaitSpec::nonblocking());
      if (got.status == Status::kFull && spec_.deadline_ns != 0) {
        flush();  // the chunk first: the wait for space may be for the blocks it holds
        got = c_.waiting(spec_, [&](const WaitSpec& w) { return c_.ch().allocate(nbytes, plain, w); });
      }
      if (!got.ok()) {
        raise_status(got.status, got.status == Status::kTooLarge ? capacity_message(*c_.arena->arena, nbytes)
                                                                 : "no room for the message");
      }
      if (nbytes != 0) {
        // A block this call just allocated, plain bytes (no metadata): the payload follows its
        // header, inside the mapping (translate checks the bounds this process holds).
        uint8_t* dst = c_.arena->arena->translate(ref_to_offset(got.value.ref) + sizeof(BlockHeader), nbytes);
        if (dst == nullptr) {
          c_.arena->arena->release(got.value);
          raise_status(Status::kCorruptedOffset, "a freshly allocated block failed its checks");
        }
        const char* src = PyBytes_AS_STRING(item);  // immutable, and referenced by the caller
        if (nbytes >= kCopyWithoutGil) {
          without_gil([&] { std::memcpy(dst, src, nbytes); });
        } else {
          std::memcpy(dst, src, nbytes);
        }
        copied_ += nbytes;  // counted once per chunk (settle)
      }
      return got.value;
    }
    if (count_ == 0) return c_.copy_in(py::handle(item), spec_);
    try {
      return c_.copy_in(py::handle(item), WaitSpec::nonblocking());
    } catch (py::error_already_set& e) {
      if (spec_.deadline_ns == 0 || !e.matches(py::module_::import("memchannel.errors").attr("Full"))) throw;
    }
    flush();  // out of arena space with the chunk held: queue it, then wait as send() would
    return c_.copy_in(py::handle(item), spec_);
  }

  PyChannel& c_;
  const WaitSpec& spec_;
  std::array<Channel::Outgoing, Channel::kMaxChain> out_;
  std::array<PyObject*, Channel::kMaxChain> moved_;  // the Buffer whose block moved, or nullptr: a copy
  std::array<PyObject*, Channel::kMaxChain> kept_;   // the bytes an inline message copies, or nullptr
  size_t count_ = 0;
  Py_ssize_t queued_ = 0;
  uint64_t copied_ = 0;  // bytes this call copied since the last settle
};

Py_ssize_t send_many_messages(PyChannel& c, PyObject* iterable, const WaitSpec& spec) {
  py::object it = py::reinterpret_steal<py::object>(PyObject_GetIter(iterable));
  if (!it) throw py::error_already_set();
  ManySender sender(c, spec);
  const auto with_count = [&](auto&& f) {
    try {
      f();
    } catch (abi::__forced_unwind&) {
      static_cast<void>(it.release());
      throw;
    } catch (py::error_already_set& e) {
      rethrow_with_count(e, "send_many", sender.queued());
    } catch (py::builtin_exception& e) {
      e.set_error();
      py::error_already_set err;
      rethrow_with_count(err, "send_many", sender.queued());
    }
  };
  for (;;) {
    PyObject* raw = PyIter_Next(it.ptr());
    if (raw == nullptr) {
      with_count([&] {
        if (PyErr_Occurred()) {
          py::error_already_set e;  // the iterable's own error, after what went before it
          sender.flush();
          throw e;
        }
        sender.flush();
      });
      return sender.queued();
    }
    py::object item = py::reinterpret_steal<py::object>(raw);
    with_count([&] {
      try {
        sender.add(item.ptr());
      } catch (abi::__forced_unwind&) {
        static_cast<void>(item.release());
        throw;
      } catch (py::error_already_set& e) {
        sender.flush();  // a bad item: what went before it is queued, then its error is raised
        throw;
      } catch (py::builtin_exception& e) {
        sender.flush();
        throw;
      }
    });
  }
}

template <typename Decode>
py::list recv_batch(PyChannel& c, Py_ssize_t max_messages, bool block, PyObject* timeout, Decode&& decode) {
  if (c.pending_batch_error) {
    py::error_already_set pending = std::move(*c.pending_batch_error);
    c.pending_batch_error.reset();
    throw pending;
  }
  const WaitSpec spec = c.wait_spec(block, timeout_arg(timeout));
  SmallMessage small;
  auto first = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().recv(w, &small); });
  if (!first.ok()) raise_status(first.status, "");
  py::list out;
  out.append(decode(first.value, &small));  // an error here is raised at once: nothing else was taken
  while (static_cast<Py_ssize_t>(out.size()) < max_messages) {
    auto got = c.ch().recv(WaitSpec::nonblocking(), &small);
    if (!got.ok()) break;  // empty (or closed and drained) now: the batch ends here
    try {
      out.append(decode(got.value, &small));
    } catch (py::error_already_set& e) {
      c.pending_batch_error = std::make_shared<py::error_already_set>(std::move(e));
      break;
    } catch (py::builtin_exception& e) {
      e.set_error();
      c.pending_batch_error = std::make_shared<py::error_already_set>();
      break;
    }
  }
  return out;
}

// recv_many: up to Channel::kMaxChain messages per Channel::recv_many (one entry, one pass over
// the queue), each made a Buffer. A message whose metadata fails its checks is dropped (counted,
// as recv() does) and the rest of what was taken is still returned; its CorruptionError is
// raised by the next batch call (at once if it was the only message).
py::list recv_many_buffers(PyChannel& c, Py_ssize_t max_messages, bool block, PyObject* timeout) {
  if (c.pending_batch_error) {
    py::error_already_set pending = std::move(*c.pending_batch_error);
    c.pending_batch_error.reset();
    throw pending;
  }
  const WaitSpec spec = c.wait_spec(block, timeout_arg(timeout));
  const size_t max = static_cast<size_t>(max_messages);
  std::array<BlockHandle, Channel::kMaxChain> taken;
  std::array<SmallMessage, Channel::kMaxChain> smalls;  // the inline messages' copies
  size_t want = std::min(max, Channel::kMaxChain);
  auto first = c.waiting(spec, [&](const WaitSpec& w) {
    return c.ch().recv_many(taken.data(), want, w, smalls.data());
  });
  if (!first.ok()) raise_status(first.status, "");
  py::object out;  // the list, made by the first chunk that returns anything
  size_t n = first.value;
  size_t returned = 0;
  std::array<py::object, Channel::kMaxChain> made;  // one chunk's Buffers, then into the list
  for (;;) {
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) {
      try {
        made[k] = c.wrap(taken[i], &smalls[i]);  // takes the block over, or releases it and raises
        ++k;
      } catch (py::error_already_set& e) {
        if (!c.pending_batch_error) c.pending_batch_error = std::make_shared<py::error_already_set>(std::move(e));
      } catch (py::builtin_exception& e) {
        e.set_error();
        if (!c.pending_batch_error) c.pending_batch_error = std::make_shared<py::error_already_set>();
        else PyErr_Clear();
      }
    }
    // The first chunk becomes a list of its exact size; a later one (a batch of over kMaxChain)
    // is appended. On a failure here made's Buffers go with it, their blocks back to the arena.
    if (!out) {
      PyObject* list = PyList_New(static_cast<Py_ssize_t>(k));
      if (list == nullptr) throw py::error_already_set();
      for (size_t j = 0; j < k; ++j) PyList_SET_ITEM(list, static_cast<Py_ssize_t>(j), made[j].release().ptr());
      out = py::reinterpret_steal<py::object>(list);
    } else {
      for (size_t j = 0; j < k; ++j) {
        if (PyList_Append(out.ptr(), made[j].ptr()) != 0) throw py::error_already_set();
        made[j] = py::object();
      }
    }
    returned += k;
    if (n < want || returned >= max) break;  // the queue ran dry, or the batch is full
    want = std::min(max - returned, Channel::kMaxChain);
    auto more = c.ch().recv_many(taken.data(), want, WaitSpec::nonblocking(), smalls.data());
    if (!more.ok()) break;  // empty (or closed and drained) now: the batch ends here
    n = more.value;
  }
  if (returned == 0 && c.pending_batch_error) {  // nothing to return: the error now
    py::error_already_set pending = std::move(*c.pending_batch_error);
    c.pending_batch_error.reset();
    throw pending;
  }
  return py::reinterpret_steal<py::list>(out.release());
}

// ---------------------------------------------------------------------------------------------
// The METH_FASTCALL entry points.

extern "C" PyObject* channel_send_object(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("send_object", args, nargs, kwnames, std::array<const char*, 3>{"obj", "block", "timeout"}, 1, a);
    send_object(self, channel_of(self), a[0], block_flag(a[1]), a[2]);
    Py_RETURN_NONE;
  }, nullptr);
}

extern "C" PyObject* channel_recv_object(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 2> a;
    parse_fastcall("recv_object", args, nargs, kwnames, std::array<const char*, 2>{"block", "timeout"}, 0, a);
    return recv_object(channel_of(self), block_flag(a[0]), a[1]).release().ptr();
  }, nullptr);
}

extern "C" PyObject* channel_send_many(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("send_many", args, nargs, kwnames, std::array<const char*, 3>{"messages", "block", "timeout"}, 1, a);
    PyChannel& c = channel_of(self);
    const WaitSpec spec = c.wait_spec(block_flag(a[1]), timeout_arg(a[2]));
    return PyLong_FromSsize_t(send_many_messages(c, a[0], spec));
  }, nullptr);
}

extern "C" PyObject* channel_recv_many(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("recv_many", args, nargs, kwnames, std::array<const char*, 3>{"max_messages", "block", "timeout"}, 1, a);
    PyChannel& c = channel_of(self);
    const Py_ssize_t max = max_messages_arg(a[0], "recv_many");
    return recv_many_buffers(c, max, block_flag(a[1]), a[2]).release().ptr();
  }, nullptr);
}

extern "C" PyObject* channel_send_objects(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("send_objects", args, nargs, kwnames, std::array<const char*, 3>{"objs", "block", "timeout"}, 1, a);
    PyChannel& c = channel_of(self);
    const bool block = block_flag(a[1]);
    const WaitSpec spec = c.wait_spec(block, timeout_arg(a[2]));
    ModuleState& st = *c.state;
    const Py_ssize_t n = send_batch("send_objects", a[0], [&](const py::object& item) {
      py::list buffers;
      py::object data = pickle_object(st, item.ptr(), buffers);
      keeping([&] { send_frame(self, c, st, data, buffers, block, spec); }, data, buffers);
    });
    return PyLong_FromSsize_t(n);
  }, nullptr);
}

extern "C" PyObject* channel_recv_objects(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    parse_fastcall("recv_objects", args, nargs, kwnames, std::array<const char*, 3>{"max_messages", "block", "timeout"}, 1, a);
    PyChannel& c = channel_of(self);
    const Py_ssize_t max = max_messages_arg(a[0], "recv_objects");
    return recv_batch(c, max, block_flag(a[1]), a[2], [&](BlockHandle b, const SmallMessage* m) { return decode_block(c, b, m); }).release().ptr();
  }, nullptr);
}

template <auto F>
constexpr PyCFunction fastcall_fn() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F));
}

PyMethodDef object_defs[] = {
    {"send_object", fastcall_fn<channel_send_object>(), METH_FASTCALL | METH_KEYWORDS,
     "send_object($self, /, obj, block=True, timeout=None)\n--\n\n"
     "Send any picklable object as one message (pickle protocol 5). numpy arrays and other\n"
     "out-of-band buffers are copied once into channel memory and arrive with no copy. Pickling\n"
     "errors raise the original exception and leave nothing queued. Concurrency: any thread,\n"
     "any interpreter, any process."},
    {"recv_object", fastcall_fn<channel_recv_object>(), METH_FASTCALL | METH_KEYWORDS,
     "recv_object($self, /, block=True, timeout=None)\n--\n\n"
     "Receive one object sent with send_object(); its arrays view channel memory. Runs\n"
     "pickle.loads: receive only from trusted peers. A message that is not a well-formed object\n"
     "message raises CorruptionError (the message is consumed)."},
    {"send_many", fastcall_fn<channel_send_many>(), METH_FASTCALL | METH_KEYWORDS,
     "send_many($self, /, messages, block=True, timeout=None)\n--\n\n"
     "send() each bytes-like object or Buffer of the iterable `messages`, in order, under one\n"
     "timeout; returns how many were queued. In a bounded channel it queues what fits, then waits\n"
     "for room. On an error (Full at the timeout, ChannelClosed, a bad item) the messages before\n"
     "it stay queued, and the exception's `queued` attribute says how many."},
    {"recv_many", fastcall_fn<channel_recv_many>(), METH_FASTCALL | METH_KEYWORDS,
     "recv_many($self, /, max_messages, block=True, timeout=None)\n--\n\n"
     "A list of 1 to max_messages Buffers: waits (up to `timeout`) for the first message, then\n"
     "takes what is queued, without waiting. Empty / ChannelClosed as recv(). A message with\n"
     "corrupt metadata is dropped and the others are returned; its CorruptionError is raised by\n"
     "the next batch call (at once if nothing else was taken)."},
    {"send_objects", fastcall_fn<channel_send_objects>(), METH_FASTCALL | METH_KEYWORDS,
     "send_objects($self, /, objs, block=True, timeout=None)\n--\n\n"
     "send_object() each object of the iterable `objs` under one timeout; returns how many were\n"
     "queued (errors: as send_many)."},
    {"recv_objects", fastcall_fn<channel_recv_objects>(), METH_FASTCALL | METH_KEYWORDS,
     "recv_objects($self, /, max_messages, block=True, timeout=None)\n--\n\n"
     "A list of 1 to max_messages objects, as recv_many() takes messages. An object that fails\n"
     "to unpickle after the first ends the batch; its error is raised by the next batch call."},
};

}  // namespace

void add_object_methods(py::handle channel_cls) {
  for (PyMethodDef& def : object_defs) add_fast_method(channel_cls, &def);
}

}  // namespace memchannel::py_glue
