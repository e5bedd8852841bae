#include "pybind/channel.h"

#include <array>
#include <cstring>
#include <mutex>
#include <unistd.h>

#include "core/heap_backend.h"
#include "pybind/args.h"
#include "pybind/errors.h"
#include "pybind/formats.h"
#include "pybind/handle.h"
#include "pybind/holder.h"
#include "pybind/registry.h"
#include "shm/cleanup.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

namespace memchannel::py_glue {

std::shared_ptr<Arena> open_shm_arena(const std::string& name) {
  if (auto found = find_arena(name)) return found;
  if (!shm::is_memchannel_name(name)) throw py::value_error("not a memchannel segment name: '" + name + "'");
  auto probe = shm::ShmBackend::probe(name);
  if (!probe.ok()) raise_status(probe.status, probe.sys_errno, name);
  auto backend = shm::ShmBackend::for_existing(name);
  shm::take_last_failure_in_thread();
  auto attached = Arena::attach(std::move(backend), probe.value);
  if (!attached.ok()) raise_status(attached.status, name, Origin::kShmAttach);
  register_arena(name, attached.value);
  return attached.value;
}

namespace {

template <typename T>
T& self_of(py::handle self, const char* type_name) {
  const Held<T> held = held_object<T>(self.ptr());
  if (!held.is_instance) {
    throw py::type_error(std::string("this method needs a memchannel.") + type_name + ", got " +
                         Py_TYPE(self.ptr())->tp_name);
  }
  if (held.object == nullptr) {
    throw py::type_error(std::string("memchannel.") + type_name +
                         " object is not initialised (made by __new__ without __init__, or its __init__ "
                         "failed); create it by calling memchannel." + type_name + "(...)");
  }
  return *held.object;
}

}  // namespace

PyArena& arena_self(py::handle self) { return self_of<PyArena>(self, "Arena"); }
PyChannel& channel_self(py::handle self) { return self_of<PyChannel>(self, "Channel"); }

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
      raise_status(created.status, "arena capacity of " + std::to_string(capacity) +
                                       " bytes is too small (needs at least 16 KiB)");
    }
    if (shm_backend != nullptr) raise_status(created.status, name, Origin::kShmCreate);
    raise_status(created.status, "creating a " + backend + " arena");
  }
  if (!name.empty()) register_arena(name, created.value);
  return std::make_shared<PyArena>(PyArena{std::move(created.value), backend, std::move(name)});
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

py::object PyChannel::reserve(const py::object& nbytes, const std::string& format, const py::object& shape,
                              const py::object& timeout) {
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

py::bytes PyChannel::handle() {
  pin_channel(channel);  // a handle may be in flight: keep the channel until it is closed
  HandleFields h;
  h.shared = arena->shared();
  h.pid = static_cast<uint64_t>(getpid());
  h.arena_id = ch().arena()->arena_id();
  h.channel_id = ch().channel_id();
  h.offset = ch().offset();
  h.mapped_bytes = arena->shared() ? arena->arena->stats().mapped_bytes : 0;
  h.name = arena->name;
  return py::bytes(encode_handle(h));
}

std::shared_ptr<PyChannel> PyChannel::attach(const py::bytes& handle_bytes) {
  const HandleFields h = decode_handle(handle_bytes);
  auto out = std::make_shared<PyChannel>();
  std::shared_ptr<Channel> ch = find_channel(h.arena_id, h.channel_id);
  // A channel found by its ids must also be of the handle's kind and, for shm, of its arena.
  if (ch && (h.shared ? find_arena(h.name) != ch->arena() : ch->arena()->backend().tracks_holders())) {
    ch = nullptr;
  }
  if (!ch && h.shared) {
    auto arena = open_shm_arena(h.name);
    auto opened = Channel::open(arena, h.offset);
    // A header a peer forged (e.g. its limits disagree with their digest): say so, not "gone".
    if (opened.status == Status::kCorruptedLength) {
      raise_status(opened.status, "the header of this handle's channel in arena '" + h.name +
                                      "' is forged (its limits disagree with their digest)");
    }
    if (!opened.ok() || opened.value->channel_id() != h.channel_id) {
      raise_error(ErrorClass::kChannelNotFound,
                  "the channel of this handle no longer exists in arena '" + h.name + "'");
    }
    ch = std::move(opened.value);
    register_channel(ch);
  }
  if (!ch) {
    raise_error(ErrorClass::kChannelNotFound,
                "the channel of this handle no longer exists (it was closed and every object "
                "using it is gone)");
  }
  out->arena = std::make_shared<PyArena>(PyArena{ch->arena(), h.shared ? "shm" : "heap", h.name});
  out->channel = std::move(ch);
  return out;
}

py::dict PyChannel::stats() {
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
  d["messages_lost"] = c.messages_lost;  // cut off by repairs of forged links (docs/shm.md)
  add_arena_stats(d, a);
  return d;
}

bool PyChannel::full() {
  const ChannelStats c = ch().stats();
  return (c.maxsize != 0 && c.queued >= c.maxsize) || (c.maxbytes != 0 && c.bytes_queued >= c.maxbytes);
}

void PyChannel::close() {
  ch().close();
  unpin_channel(ch());
}

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

}  // namespace memchannel::py_glue
