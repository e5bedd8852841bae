// memchannel.Tracker: release notification of a sent message (core/tracking.cc).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "core/arena.h"
#include "pybind/channel.h"

namespace memchannel::py_glue {

namespace py = pybind11;

// One tracked message. Concurrency: any thread of the process that sent it (it holds the
// arena's mapping); it does not pickle.
struct Tracker {
  std::shared_ptr<PyArena> arena;
  BlockRef ref = 0;
  uint32_t ticket = 0;
  bool done() const { return arena->arena->tracking_ended(ref, ticket); }
};

// Marks `block` (this holder's, about to be sent) as tracked: a Tracker object, or raises.
py::object start_tracking(const std::shared_ptr<PyArena>& arena, BlockHandle block);

// Registers memchannel._memchannel.Tracker.
void register_tracker(py::module_& m);

}  // namespace memchannel::py_glue
