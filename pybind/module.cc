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
#include "pybind/errors.h"
#include "pybind/fastcall.h"
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

  // This interpreter's Buffer type and module state (pybind/state.h): before anything that
  // makes a Channel or raises.
  py::object buffer_type = py::reinterpret_steal<py::object>(make_buffer_type());
  init_module_state(buffer_type.ptr());
  m.add_object("Buffer", buffer_type);

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

  m.def("_detach_all", [] {
    // Process exit only: a subinterpreter's atexit runs when that interpreter ends, and the
    // arenas are the process's (the main interpreter and other interpreters still use them).
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) return;
    without_gil([] { detach_all(); });
  }, "Process exit: detach from every shared-memory arena (the last process removes segments).");
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

  register_sync(m);  // memchannel.Lock, Semaphore, ...: pybind/sync.cc
  auto channel_cls = py::class_<PyChannel, std::shared_ptr<PyChannel>>(m, "Channel", "A buffer channel (see memchannel.Channel).");
  add_fast_methods(channel_cls);  // send, recv: pybind/fastcall.cc
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
