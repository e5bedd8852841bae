// memchannel._memchannel: thin glue between the MemChannel core and Python.
//
// Objects: Arena, Channel, Buffer. Policy lives in core/ (and shm/); this file is the module's
// init: its state, and the pybind11 class and function registrations. What each other file of
// pybind/ holds is in pybind/README.md. Core statuses become exceptions in one function,
// raise_status (pybind/errors.cc). No Python object is stored in any C++ static: the module
// supports isolated subinterpreters with their own GIL (pybind/state.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "core/arena.h"
#include "core/channel.h"
#include "pybind/args.h"
#include "pybind/buffer.h"
#include "pybind/channel.h"
#include "pybind/select.h"
#include "pybind/shares.h"
#include "pybind/tracker.h"
#include "pybind/errors.h"
#include "pybind/fastcall.h"
#include "pybind/objects.h"
#include "pybind/gil.h"
#include "pybind/pep3118.h"
#include "pybind/registry.h"
#include "pybind/state.h"
#include "pybind/sync.h"
#include "pybind/wait.h"
#include "shm/cleanup.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

namespace py = pybind11;

using namespace memchannel;
using namespace memchannel::py_glue;

PYBIND11_MODULE(_memchannel, m, py::mod_gil_not_used(), py::multiple_interpreters::per_interpreter_gil()) {
  m.doc() = "memchannel core bindings; use the `memchannel` package.";
  // Each docstring below starts with the signature CPython parses ("name(self, /, ...)\n--\n\n"),
  // so inspect.signature() and help() show the real parameters; pybind11's own signature
  // line, which CPython cannot parse, is turned off.
  py::options options;
  options.disable_function_signatures();

  // This interpreter's Buffer type and module state (pybind/state.h): before anything that
  // makes a Channel or raises.
  py::object buffer_type = py::reinterpret_steal<py::object>(make_buffer_type());
  init_module_state(buffer_type.ptr());
  m.add_object("Buffer", buffer_type);

  py::class_<PyArena, std::shared_ptr<PyArena>>(m, "Arena", "Memory shared by the channels made from it.")
      .def(py::init([](const py::object& capacity, const std::string& backend) {
             return make_arena(capacity.is_none() ? kDefaultHeapCapacity : to_size(capacity, "capacity"), backend);
           }),
           py::arg("capacity") = py::none(), py::arg("backend") = "shm",
           "__init__(self, /, capacity=None, backend='shm')\n--\n\nAn arena of `capacity` bytes.")
      // object.__reduce__ (pickle protocols 0 and 1, copy) would call pybind11's base type,
      // which aborts the process ("no pybind11-registered base types"): refuse it here.
      .def("__reduce__", [](py::handle) -> py::object {
        throw py::type_error("memchannel.Arena objects cannot be pickled; send a channel's handle "
                             "(or pickle the memchannel.Channel) instead");
      }, "__reduce__(self, /)\n--\n\nRefused: arenas are not picklable.")
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
      }, "stats(self, /)\n--\n\nThe arena's counters as a dict.")
      .def("reap", [](py::handle s) {
        PyArena& a = arena_self(s);
        return without_gil([&] { return a.arena->reap_dead_holders(); });
      }, "reap(self, /)\n--\n\nReclaim now the blocks held by processes that died; returns how many.")
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
      }, "census(self, /)\n--\n\nWalk all arena memory and count blocks by state (a consistency check for tests).");

  m.def("_detach_all", [] {
    // Process exit only: a subinterpreter's atexit runs when that interpreter ends, and the
    // arenas are the process's (the main interpreter and other interpreters still use them).
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) return;
    without_gil([] { detach_all(); });
  }, "_detach_all()\n--\n\nProcess exit: detach from every shared-memory arena (the last process removes segments).");
  m.def("_cleanup", [](const std::string& prefix) {
    return without_gil([&] { return shm::cleanup_dead_arenas(prefix); });
  }, py::arg("prefix") = "", "_cleanup(prefix='')\n--\n\nRemove segments of arenas whose every process is dead; returns their names.");
  m.def("_cancel_waits", [](int64_t interpreter_id) { cancel_waits(interpreter_id); }, py::arg("interpreter_id"),
        "_cancel_waits(interpreter_id)\n--\n\nMake every blocking memchannel call of that interpreter raise WaitCancelled (within 0.1 s).");
  m.def("_exit_by_sigint_at_exit", [] { exit_by_sigint_at_exit(); },
        "_exit_by_sigint_at_exit()\n--\n\nAfter finalization, end the process by SIGINT (a Ctrl-C exit, see pybind/gil.h).");
  m.def("_uncancel_waits", [](int64_t interpreter_id) { uncancel_waits(interpreter_id); },
        py::arg("interpreter_id"), "_uncancel_waits(interpreter_id)\n--\n\nUndo _cancel_waits.");
  m.def("_timeout_seconds", [](const py::object& timeout) -> py::object {
    const double seconds = timeout_seconds(timeout.ptr());
    return seconds < 0 ? py::object(py::none()) : py::object(py::float_(seconds));
  }, py::arg("timeout"), "_timeout_seconds(timeout)\n--\n\nThe rule every timeout argument follows: seconds as a float, None for None; "
                         "TypeError / ValueError otherwise.");
  m.def("_parse_format", [](const std::string& format) {
    const FormatInfo info = parse_format(format);
    const char* verdict = info.verdict == FormatVerdict::kOk ? "ok" : info.verdict == FormatVerdict::kPointer ? "pointer" : "invalid";
    return py::make_tuple(verdict, info.itemsize, info.aligned_itemsize, info.why);
  }, py::arg("format"), "_parse_format(format)\n--\n\nThe PEP 3118 format check of pybind/pep3118.h: (verdict, itemsize, aligned itemsize, why).");
  m.def("_format_fits", [](const std::string& format, uint64_t itemsize) { return format_fits(format, itemsize); },
        py::arg("format"), py::arg("itemsize"),
        "_format_fits(format, itemsize)\n--\n\nWhether `format` describes items of `itemsize` bytes.");
  m.def("_list_segments", [](const std::string& prefix) {
    return shm::list_segments(prefix.empty() ? shm::default_prefix() : std::string_view(prefix));
  }, py::arg("prefix") = "", "_list_segments(prefix='')\n--\n\nThe memchannel segments in /dev/shm.");

  register_sync(m);  // memchannel.Lock, Semaphore, ...: pybind/sync.cc
  auto channel_cls = py::class_<PyChannel, std::shared_ptr<PyChannel>>(m, "Channel", "A buffer channel (see memchannel.Channel).");
  add_fast_methods(channel_cls);    // send, recv: pybind/fastcall.cc
  add_object_methods(channel_cls);  // send_object, recv_object and the batches: pybind/objects.cc
  add_wait_methods(channel_cls);    // fileno: pybind/select.cc
  register_tracker(m);              // Tracker: pybind/tracker.cc
  register_shares(m);               // share(), Pool: pybind/shares.cc
  register_select(m);               // _select, _wait, _Listener: pybind/select.cc
  channel_cls
      .def(py::init(&make_channel), py::arg("maxsize") = 0, py::kw_only(), py::arg("maxbytes") = 0,
           py::arg("backend") = "shm", py::arg("arena") = py::none(), py::arg("_handle") = py::none(),
           "__init__(self, /, maxsize=0, *, maxbytes=0, backend='shm', arena=None, _handle=None)\n--\n\n"
           "A channel holding at most `maxsize` messages and `maxbytes` payload bytes (0: unbounded).")
      .def("__reduce__", [](py::handle) -> py::object {  // see Arena.__reduce__
        throw py::type_error("pickle memchannel.Channel objects (they pickle as their handle), "
                             "not memchannel._memchannel.Channel");
      }, "__reduce__(self, /)\n--\n\nRefused: pickle memchannel.Channel instead.")
      .def("send_nowait", [](py::handle s, const py::handle& data) { channel_self(s).send(data, false, py::none()); },
           py::arg("data"), "send_nowait(self, /, data)\n--\n\nsend(data, block=False).")
      .def("recv_nowait", [](py::handle s) { return channel_self(s).recv(false, py::none()); },
           "recv_nowait(self, /)\n--\n\nrecv(block=False).")
      .def("reserve", [](py::handle s, const py::object& nbytes, const std::string& format, const py::object& shape,
                          const py::object& timeout) { return channel_self(s).reserve(nbytes, format, shape, timeout); }, py::arg("nbytes") = py::none(), py::kw_only(),
           py::arg("format") = "B", py::arg("shape") = py::none(), py::arg("timeout") = py::none(),
           "reserve(self, /, nbytes=None, *, format='B', shape=None, timeout=None)\n--\n\n"
           "A writable Buffer in channel memory, to fill and send() without a copy.")
      .def("close", [](py::handle s) { channel_self(s).close(); },
           "close(self, /)\n--\n\nRefuse new sends; receivers drain what is queued, then get ChannelClosed.")
      .def("qsize", [](py::handle s) { return channel_self(s).ch().queued(); },
           "qsize(self, /)\n--\n\nMessages queued now.")
      .def("empty", [](py::handle s) { return channel_self(s).ch().queued() == 0; },
           "empty(self, /)\n--\n\nWhether no message is queued now.")
      .def("full", [](py::handle s) { return channel_self(s).full(); },
           "full(self, /)\n--\n\nWhether a send would wait now (maxsize or maxbytes reached).")
      .def("stats", [](py::handle s) { return channel_self(s).stats(); },
           "stats(self, /)\n--\n\nThe channel's and its arena's counters as a dict.")
      .def_property_readonly("handle", [](py::handle s) { return channel_self(s).handle(); })
      .def_property_readonly("backend", [](py::handle s) { return channel_self(s).arena->backend; })
      .def_property_readonly("_arena", [](py::handle s) { return channel_self(s).arena; })
      .def("__iter__", [](py::object self) { channel_self(self); return self; },
           "__iter__(self, /)\n--\n\nIterate over received Buffers until closed and drained.")
      .def("__next__", [](py::handle s) {
        PyChannel& c = channel_self(s);
        const WaitSpec spec = c.wait_spec(true, py::none());
        SmallMessage small;
        auto got = c.waiting(spec, [&](const WaitSpec& w) { return c.ch().recv(w, &small); });
        if (got.status == Status::kClosed) throw py::stop_iteration();
        if (!got.ok()) raise_status(got.status, "");
        return c.wrap(got.value, &small);
      }, "__next__(self, /)\n--\n\nrecv(), or StopIteration once closed and drained.");
}
