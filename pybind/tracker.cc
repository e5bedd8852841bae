#include "pybind/tracker.h"

#include <string>

#include "pybind/buffer.h"
#include "pybind/errors.h"
#include "pybind/state.h"
#include "pybind/gil.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

py::object start_tracking(const std::shared_ptr<PyArena>& arena, BlockHandle block) {
  auto t = arena->arena->track_block(block);
  if (!t.ok()) raise_status(t.status, "send(track=True): the message's block is not this process's to track");
  auto tracker = std::make_shared<Tracker>();
  tracker->arena = arena;
  tracker->ref = block.ref;
  tracker->ticket = t.value;
  return py::cast(std::move(tracker));
}

void register_tracker(py::module_& m) {
  py::class_<Tracker, std::shared_ptr<Tracker>>(
      m, "Tracker",
      "Release notification of one sent message (Channel.send(..., track=True)): done once every "
      "holder of the message let it go, in any process: released by its receiver, dropped with a "
      "closed channel, or reclaimed from a receiver that died. A forwarded message is not done "
      "until its last receiver releases it.")
      .def_property_readonly("done", [](const Tracker& t) { return t.done(); },
                             "Whether the message has been released (a snapshot).")
      .def("wait", [](const Tracker& t, const py::object& timeout) {
             if (t.done()) return true;
             const WaitSpec spec = make_wait(true, timeout, t.arena->shared());
             const Status s = wait_with_gil_released(spec, [&](const WaitSpec& w) {
               return t.arena->arena->wait_tracking(t.ref, t.ticket, w);
             });
             return s == Status::kOk;
           }, py::arg("timeout") = py::none(),
           "wait(self, /, timeout=None)\n--\n\n"
           "Block until the message is released: True, or False after `timeout` seconds.")
      .def_property_readonly("_key", [](const Tracker& t) {
             return py::make_tuple(t.arena->arena->arena_id(), ref_to_offset(t.ref));
           }, "(arena id, block offset): what a listener socket receives when the tracking ends.")
      .def("_arm", [](const Tracker& t, uint32_t key) { return t.arena->arena->arm_tracking(t.ref, t.ticket, key); },
           py::arg("key"),
           "_arm(self, /, key)\n--\n\nAsk for a datagram to listener `key` when released; True if it is already.")
      .def("__repr__", [](const Tracker& t) {
        return std::string("<memchannel.Tracker ") + (t.done() ? "done" : "pending") + ">";
      })
      .def("__reduce__", [](const Tracker&) -> py::object {
        throw py::type_error("a memchannel.Tracker belongs to the process that sent the message: it does not pickle");
      }, "__reduce__(self, /)\n--\n\nRefused.");
}

}  // namespace memchannel::py_glue
