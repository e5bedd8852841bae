// Waiting on several channels: memchannel.select()/wait() (one rotating pass, a spin, then a
// sleep on this thread's listener socket registered in every channel's fd wait-list),
// Channel.fileno() (a listener socket of the channel object's own), and _memchannel._Listener,
// the one socket an asyncio event loop watches for all its pending awaits
// (python/memchannel/_aio.py). Design: core/fd_wait.h; docs/design.md, "Waiting on several
// channels: fd readiness".
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <mutex>

#include "core/channel.h"
#include "core/fd_wait.h"

namespace memchannel::py_glue {

namespace py = pybind11;

// The state behind Channel.fileno(): a socket of this channel object's own, registered in the
// channel's wait-list. The fd is readable while the channel may have a message or is closed:
// armed for "readable", it gets a datagram from the sender that makes the channel readable,
// and refresh() (called by fileno() and by a receive that found the channel empty) drains it
// and re-arms, or makes it readable at once when the channel is ready.
struct FdWatch {
  std::shared_ptr<Channel> channel;
  std::unique_ptr<WaitSocket> sock;
  int slot = -1;
  long pid = 0;
  std::mutex mu;

  ~FdWatch();
  void refresh();
};

// Adds fileno() and _wait_key to the Channel class; select/wait/_Listener to the module.
void add_wait_methods(py::class_<struct PyChannel, std::shared_ptr<struct PyChannel>>& cls);
void register_select(py::module_& m);

}  // namespace memchannel::py_glue
