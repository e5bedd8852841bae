// The C++ objects behind memchannel._memchannel.Arena and .Channel (pybind11 classes held by
// std::shared_ptr, registered in pybind/module.cc). Arena and channel creation, attach by
// handle, reserve and stats are here (pybind/channel.cc); the per-message send and recv are
// in pybind/fastcall.cc.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "core/arena.h"
#include "core/channel.h"
#include "pybind/state.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

namespace py = pybind11;

inline constexpr uint64_t kDefaultHeapCapacity = 1ull << 30;  // 1 GiB of address space, mapped lazily

struct PyArena {
  std::shared_ptr<Arena> arena;
  std::string backend;
  std::string name;  // shm: segment-0 name; heap: empty

  bool shared() const { return backend == "shm"; }
};

struct FdWatch;  // pybind/select.h

struct PyChannel {
  std::shared_ptr<PyArena> arena;
  std::shared_ptr<Channel> channel;
  // Channel.fileno()'s socket, made on the first call (pybind/select.cc).
  std::shared_ptr<FdWatch> fd_watch;
  // A receive found the channel empty: let fileno() go unreadable (pybind/select.cc).
  void fd_refresh();
  // This interpreter's Buffer type: received messages are made of the type of the interpreter
  // that made this object.
  py::object buffer_type = py::reinterpret_borrow<py::object>(module_state().buffer_type);
  // That interpreter's module state, kept alive by `state_owner`: the object path reads it
  // per message without module_state()'s lookup (an interpreter-dict lookup by a C string).
  py::object state_owner = py::reinterpret_steal<py::object>(module_state_ref());
  ModuleState* state = &module_state();
  // An error a receive batch met after its first message (pybind/objects.cc): raised by the
  // next batch call on this object, so the batch's messages were returned, not lost.
  std::shared_ptr<py::error_already_set> pending_batch_error;

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

  // The per-message path (pybind/fastcall.cc).
  // Copies any buffer-protocol object into a new block (one memcpy) and returns it.
  BlockHandle copy_in(const py::handle& data, const WaitSpec& spec);
  // Sends `data` inline when it is at most kInlineBytes of plain bytes; false if it is not.
  bool send_small(const py::handle& data, const WaitSpec& spec);
  void send(const py::handle& data, bool block, const py::object& timeout);
  // With `tracker`, the message is tracked (core/tracking.cc) and *tracker gets its Tracker.
  void send(const py::handle& data, const WaitSpec& spec, py::object* tracker = nullptr);
  // A received block's validated description, its format checked too; a corrupt block is
  // counted, dropped, and raises CorruptionError.
  Result<BlockView> checked_view(BlockHandle block);
  // A received block as a Buffer, after checked_view; ref 0 with `small`: an inline message.
  py::object wrap(BlockHandle block, const SmallMessage* small = nullptr);
  py::object recv(bool block, const py::object& timeout);

  // The rest (pybind/channel.cc).
  py::object reserve(const py::object& nbytes, const std::string& format, const py::object& shape,
                     const py::object& timeout);
  py::bytes handle();
  static std::shared_ptr<PyChannel> attach(const py::bytes& handle_bytes);
  py::dict stats();
  bool full();
  void close();
};

std::shared_ptr<PyArena> make_arena(uint64_t capacity, const std::string& backend);
// Maps (or finds already mapped in this process) the shm arena whose segment 0 is `name`.
std::shared_ptr<Arena> open_shm_arena(const std::string& name);
std::shared_ptr<PyChannel> make_channel(const py::object& maxsize, const py::object& maxbytes,
                                        const std::string& backend, const py::object& arena,
                                        const py::object& handle);

// The CapacityError message of a message of `nbytes` that can never fit `arena`.
std::string capacity_message(const Arena& arena, uint64_t nbytes);
// The arena's counters, as both Channel.stats() and Arena.stats() report them.
void add_arena_stats(py::dict& d, const ArenaStats& a);

// The C++ object behind `self`. Every method and property of Arena and Channel goes through
// this: an object made by T.__new__(T) without __init__, or whose __init__ failed, has no C++
// object, so it gets a TypeError.
PyArena& arena_self(py::handle self);
PyChannel& channel_self(py::handle self);

}  // namespace memchannel::py_glue
