// memchannel._memchannel._Sync: the C++ object behind memchannel.Lock, RLock, Semaphore,
// BoundedSemaphore, Event, Condition and Barrier (python/memchannel/sync.py; the primitives
// themselves are core/sync.h). acquire, release, __enter__, __exit__, set and is_set are METH_FASTCALL
// methods (like Channel.send/recv, pybind/fastcall.cc): an uncontended acquire + release is
// two atomic operations, less than pybind11's dispatcher. The rest is pybind11.
//
// Errors: LockAbandoned (an acquire that got the lock from a dead owner; the lock is held) and
// the wrong-release error are classes of memchannel.sync, which sets them as the type
// attributes _abandoned and _release_error of this class in each interpreter.
#include <pybind11/pybind11.h>

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "core/heap_backend.h"
#include "core/sync.h"
#include "pybind/args.h"
#include "pybind/channel.h"
#include "pybind/errors.h"
#include "pybind/handle.h"
#include "pybind/holder.h"
#include "pybind/registry.h"
#include "pybind/sync.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

namespace py = pybind11;

struct PySync {
  std::shared_ptr<PyArena> arena;
  std::shared_ptr<Sync> sync;
  // What the fast paths dispatch on (set once the primitive is made or attached).
  bool is_lock = false;  // Lock, RLock
  bool is_sem = false;   // Semaphore, BoundedSemaphore
  void set_kind() {
    const SyncKind k = sync->kind();
    is_lock = k == SyncKind::kLock || k == SyncKind::kRLock;
    is_sem = k == SyncKind::kSemaphore || k == SyncKind::kBoundedSemaphore;
  }

  Sync& s() {
    if (!sync->held_here()) sync->reattach_after_fork();  // a forked child's first use
    return *sync;
  }
  WaitSpec wait_spec(bool block, PyObject* timeout) {
    // threading's spelling of "no timeout" (-1) is accepted beside None.
    if (timeout != nullptr && PyLong_CheckExact(timeout) && PyLong_AsLong(timeout) == -1) timeout = Py_None;
    WaitSpec spec = make_wait(block, py::reinterpret_borrow<py::object>(timeout == nullptr ? Py_None : timeout), arena->shared());
    // Events, conditions and barriers wait for another party's action, not for a critical
    // section to end: no spin. A waiter that spins while that party needs the same CPU delays
    // it: on a loaded 2-core machine, Event.set() to a woken waiter in another process took
    // 15.0 us (p50) with a 3 us spin and 7.9 us without (bench/harness/sync_bench.py's
    // event_wake, where the setter's own wait for the reply is the spinning one). Locks spin
    // 2 us, which lets a contended hand-off skip the futex round trip (~10 us) when the owner
    // runs on another CPU, and gives the CPU up soon when it does not (a preempted owner): two
    // processes on one CPU each, on a loaded machine, made 1.52 (2.22) million pairs/s with a
    // 2 us spin and 1.23 (1.80) with the core's 20 us, multiprocessing 1.50 (1.80) (medians of
    // 11 alternating reps, two runs; unpinned: no difference). Semaphores keep the core's spin.
    const SyncKind k = sync->kind();
    if (k == SyncKind::kEvent || k == SyncKind::kCondition || k == SyncKind::kBarrier) {
      spec.spin_ns = std::min<int64_t>(spec.spin_ns, kSyncSpinNs);
    } else if (k == SyncKind::kLock || k == SyncKind::kRLock) {
      spec.spin_ns = std::min<int64_t>(spec.spin_ns, kLockSpinNs);
    }
    return spec;
  }
  static constexpr int64_t kSyncSpinNs = 0;
  static constexpr int64_t kLockSpinNs = 2000;
};

namespace {

// Primitives whose handle was taken (pickled, sent), by (arena id, sync id): kept for the
// life of the process, so an attach in another interpreter of this process (heap) or a pickle
// in flight never finds them gone. Leaked on purpose, like the channel registry.
struct Pinned {
  std::mutex mutex;
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<Sync>> syncs;
};
Pinned& pinned() {
  // Held across fork() (as the channel registry's lock is) so a child never inherits it locked.
  static Pinned* p = [] {
    auto* made = new Pinned();
    pthread_atfork([] { pinned().mutex.lock(); }, [] { pinned().mutex.unlock(); },
                   [] { pinned().mutex.unlock(); });
    return made;
  }();
  return *p;
}

// The default arena of primitives made without arena=: one per backend and process.
std::shared_ptr<PyArena> default_arena(const std::string& backend) {
  static std::mutex mutex;
  static auto* arenas = new std::map<std::string, std::shared_ptr<PyArena>>();
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = (*arenas)[backend];
  if (!slot) slot = make_arena(64ull << 20, backend);
  return slot;
}

PySync& sync_self(py::handle self) {
  const Held<PySync> held = held_object<PySync>(self.ptr());
  if (held.object == nullptr) {
    throw py::type_error("memchannel synchronization primitive is not initialised (create it by calling "
                         "memchannel.Lock(), Semaphore(), ...)");
  }
  return *held.object;
}

PySync& sync_of(PyObject* self) {
  PySync* p = held_object_of_checked_type<PySync>(self);
  return p != nullptr ? *p : sync_self(self);
}

[[noreturn]] void raise_class_attr(PyObject* self, const char* attr, const std::string& message) {
  py::object cls = py::getattr(py::handle(reinterpret_cast<PyObject*>(Py_TYPE(self))), attr, py::none());
  if (cls.is_none()) throw py::value_error(message);
  PyErr_SetString(cls.ptr(), message.c_str());
  throw py::error_already_set();
}

[[noreturn]] void raise_abandoned(PyObject* self) {
  raise_class_attr(self, "_abandoned",
                   "the previous owner of this lock died holding it; the lock is now held by the caller "
                   "(the state it protected may be inconsistent)");
}

// Runs a waiting core call: one attempt with the GIL held, then (if it must wait) the
// GIL-released wait loop of pybind/wait.h.
template <typename Attempt>
Status run_wait(const WaitSpec& spec, Attempt&& attempt) {
  const Status first = attempt(WaitSpec::nonblocking());
  if (first != Status::kTimedOut || spec.deadline_ns == 0) return first;
  return wait_with_gil_released(spec, std::forward<Attempt>(attempt));
}

bool is_lock(SyncKind k) { return k == SyncKind::kLock || k == SyncKind::kRLock; }
bool is_sem(SyncKind k) { return k == SyncKind::kSemaphore || k == SyncKind::kBoundedSemaphore; }

// acquire(block=True, timeout=None) -> bool, for locks and semaphores.
bool do_acquire(PyObject* self, bool block, PyObject* timeout) {
  PySync& p = sync_of(self);
  Sync& s = p.s();
  // The uncontended case: one CAS, no clock, no argument conversion beyond `block`.
  if (timeout == nullptr || timeout == Py_None) {
    if (is_lock(s.kind())) {
      const Status first = s.lock_try();  // an RLock held elsewhere may be taken over here
      if (first == Status::kOk) return true;
      if (first == Status::kPeerDied) raise_abandoned(self);
    } else if (is_sem(s.kind()) && s.sem_try() == Status::kOk) {
      return true;
    }
  }
  // multiprocessing ignores the timeout of a non-blocking acquire; it is still checked.
  const WaitSpec spec = p.wait_spec(block, timeout);
  Status st;
  if (is_lock(s.kind())) {
    st = run_wait(spec, [&](const WaitSpec& w) { return s.lock_acquire(w); });
  } else if (is_sem(s.kind())) {
    st = run_wait(spec, [&](const WaitSpec& w) { return s.sem_acquire(w); });
  } else {
    throw py::type_error("acquire() is for locks and semaphores");
  }
  if (st == Status::kOk) return true;
  if (st == Status::kPeerDied) raise_abandoned(self);
  if (st == Status::kTimedOut) return false;
  if (st == Status::kInvalidArgument) throw py::value_error("RLock recursion depth exceeded");
  raise_status(st, "acquire()");
}

void do_release(PyObject* self, PyObject* n_obj) {
  Sync& s = sync_of(self).s();
  if (is_lock(s.kind())) {
    if (n_obj != nullptr) throw py::type_error("release() of a lock takes no arguments");
    if (s.lock_release() == Status::kOk) return;
    raise_class_attr(self, "_release_error",
                     s.kind() == SyncKind::kRLock ? "cannot release un-acquired lock" : "release unlocked lock");
  }
  if (!is_sem(s.kind())) throw py::type_error("release() is for locks and semaphores");
  uint64_t n = 1;
  if (n_obj != nullptr) {
    n = to_size(py::reinterpret_borrow<py::object>(n_obj), "n");
    if (n < 1) throw py::value_error("n must be one or more");
    if (n > 0x7fffffff) throw py::value_error("n is too large");
  }
  if (s.sem_release(static_cast<uint32_t>(n)) == Status::kFull) {
    throw py::value_error(s.kind() == SyncKind::kBoundedSemaphore ? "Semaphore released too many times"
                                                                  : "Semaphore value would overflow");
  }
}

// The uncontended calls' fast path, with no pybind11 layer and no C++ exception frame: the
// instance's PySync read directly (held_object_fast), in this process image (not a forked
// child's first use), and one attempt. Anything else (contended, errors, arguments) takes
// the general path below, which starts over.
PySync* fast_sync(PyObject* self) {
  PySync* p = held_object_fast<PySync>(self);
  return p != nullptr && p->sync->held_here() ? p : nullptr;
}

// acquire(): kOk taken; kPeerDied taken over (an RLock); else not taken.
Status fast_acquire(PySync& p) {
  if (p.is_lock) return p.sync->lock_try_fast() ? Status::kOk : p.sync->lock_try();
  if (p.is_sem) return p.sync->sem_try();
  return Status::kInvalidArgument;
}

bool fast_release(PySync& p) {
  if (p.is_lock) return p.sync->lock_release_fast() || p.sync->lock_release() == Status::kOk;
  if (p.is_sem) return p.sync->sem_release_one() == Status::kOk;
  return false;
}

PyObject* abandoned_error(PyObject* self) {
  return guarded([&]() -> PyObject* { raise_abandoned(self); }, nullptr);
}

extern "C" PyObject* sync_acquire(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  if (nargs == 0 && kwnames == nullptr) {
    if (PySync* p = fast_sync(self)) {
      const Status st = fast_acquire(*p);
      if (st == Status::kOk) Py_RETURN_TRUE;
      if (st == Status::kPeerDied) return abandoned_error(self);
    }
  }
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 2> a{nullptr, nullptr};
    if (nargs != 0 || kwnames != nullptr) {
      parse_fastcall("acquire", args, nargs, kwnames, std::array<const char*, 2>{"block", "timeout"}, 0, a, "blocking");
    }
    if (do_acquire(self, block_flag(a[0]), a[1])) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
  }, nullptr);
}

extern "C" PyObject* sync_release(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  if (nargs == 0 && kwnames == nullptr) {
    if (PySync* p = fast_sync(self); p != nullptr && fast_release(*p)) Py_RETURN_NONE;
  }
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 1> a{nullptr};
    if (nargs != 0 || kwnames != nullptr) parse_fastcall("release", args, nargs, kwnames, std::array<const char*, 1>{"n"}, 0, a);
    do_release(self, a[0]);
    Py_RETURN_NONE;
  }, nullptr);
}

// `with lock:` -- an abandoned lock is released before LockAbandoned leaves __enter__ (the
// block never runs, so no __exit__ would release it): the next user finds it free.
extern "C" PyObject* sync_enter(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject*) {
  if (nargs == 0) {
    if (PySync* p = fast_sync(self)) {
      const Status st = fast_acquire(*p);
      if (st == Status::kOk) Py_RETURN_TRUE;
      if (st == Status::kPeerDied) {  // an RLock taken over: released again, as below
        p->sync->lock_release();
        return abandoned_error(self);
      }
    }
  }
  return guarded([&]() -> PyObject* {
    if (nargs != 0) throw py::type_error("__enter__() takes no arguments");
    try {
      do_acquire(self, true, nullptr);
    } catch (py::error_already_set& e) {
      py::object cls = py::getattr(py::handle(reinterpret_cast<PyObject*>(Py_TYPE(self))), "_abandoned", py::none());
      if (!cls.is_none() && e.matches(cls)) sync_of(self).s().lock_release();
      throw;
    }
    Py_RETURN_TRUE;
  }, nullptr);
}

extern "C" PyObject* sync_exit(PyObject* self, PyObject* const*, Py_ssize_t, PyObject*) {
  if (PySync* p = fast_sync(self); p != nullptr && fast_release(*p)) Py_RETURN_NONE;
  return guarded([&]() -> PyObject* {
    do_release(self, nullptr);
    Py_RETURN_NONE;
  }, nullptr);
}

extern "C" PyObject* sync_set(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    if (nargs != 0 || kwnames != nullptr) throw py::type_error("set() takes no arguments");
    sync_of(self).s().event_set();
    Py_RETURN_NONE;
  }, nullptr);
}

extern "C" PyObject* sync_is_set(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    if (nargs != 0 || kwnames != nullptr) throw py::type_error("is_set() takes no arguments");
    if (sync_of(self).s().event_is_set()) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
  }, nullptr);
}

PyMethodDef sync_defs[] = {
    {"set", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_set)), METH_FASTCALL | METH_KEYWORDS,
     "set(self, /)\n--\n\nEvent: set the flag; wake every waiter."},
    {"is_set", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_is_set)), METH_FASTCALL | METH_KEYWORDS,
     "is_set(self, /)\n--\n\nEvent: the flag."},
    {"acquire", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_acquire)), METH_FASTCALL | METH_KEYWORDS,
     "acquire(self, /, block=True, timeout=None)\n--\n\nAcquire the lock or one permit; True when acquired, "
     "False when the timeout passed (or block=False found none). Raises LockAbandoned (holding the lock) "
     "when its previous owner died holding it."},
    {"release", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_release)), METH_FASTCALL | METH_KEYWORDS,
     "release(self, /, n=1)\n--\n\nRelease the lock (no argument) or n permits."},
    {"__enter__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_enter)), METH_FASTCALL | METH_KEYWORDS,
     "__enter__(self, /)\n--\n\nacquire(); an abandoned lock is released again before LockAbandoned propagates."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sync_exit)), METH_FASTCALL | METH_KEYWORDS,
     "__exit__(self, /, *exc_info)\n--\n\nrelease()."},
};

void add_methods(py::handle cls) {
  for (PyMethodDef& def : sync_defs) {
    PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &def);
    if (descr == nullptr || PyObject_SetAttrString(cls.ptr(), def.ml_name, descr) != 0) {
      Py_XDECREF(descr);
      throw py::error_already_set();
    }
    Py_DECREF(descr);
  }
}

uint32_t to_u32(const py::object& v, const char* name, uint32_t max) {
  const uint64_t n = to_size(v, name);
  if (n > max) throw py::value_error(std::string(name) + " is too large (at most " + std::to_string(max) + ")");
  return static_cast<uint32_t>(n);
}

std::shared_ptr<PySync> attach_sync(const py::bytes& handle_bytes) {
  const HandleFields h = decode_handle(handle_bytes);
  if (!h.shared && h.pid != static_cast<uint64_t>(getpid())) {
    raise_error(ErrorClass::kMemChannelError,
                "a backend='heap' primitive cannot be used in another process; create it with backend='shm'");
  }
  std::shared_ptr<Sync> found;
  {
    std::lock_guard<std::mutex> lock(pinned().mutex);
    auto it = pinned().syncs.find({h.arena_id, h.channel_id});
    if (it != pinned().syncs.end() && it->second->offset() == h.offset &&
        (h.shared ? find_arena(h.name) == it->second->arena() : !it->second->arena()->backend().tracks_holders())) {
      found = it->second;
    }
  }
  std::shared_ptr<Arena> arena = found ? found->arena() : nullptr;
  if (!arena && h.shared) arena = open_shm_arena(h.name);
  if (!arena) raise_error(ErrorClass::kChannelNotFound, "the primitive of this handle no longer exists");
  auto opened = Sync::open(arena, h.offset, h.channel_id);
  if (!opened.ok()) {
    raise_error(ErrorClass::kChannelNotFound, "the primitive of this handle no longer exists in its arena");
  }
  auto out = std::make_shared<PySync>();
  out->arena = std::make_shared<PyArena>(PyArena{arena, h.shared ? "shm" : "heap", h.name});
  out->sync = std::move(opened.value);
  out->set_kind();
  return out;
}

std::shared_ptr<PySync> make_sync(const py::object& kind_obj, const py::object& value, const py::object& limit,
                                  const py::object& flags, const std::string& backend, const py::object& arena,
                                  const py::object& handle) {
  if (!handle.is_none()) return attach_sync(handle.cast<py::bytes>());
  const uint32_t kind = to_u32(kind_obj, "kind", 7);
  if (!valid_sync_kind(kind)) throw py::value_error("unknown primitive kind");
  std::shared_ptr<PyArena> a;
  if (arena.is_none()) {
    if (backend != "shm" && backend != "heap") {
      throw py::value_error("backend must be 'shm' (processes and interpreters) or 'heap' "
                            "(threads and interpreters of this process), got '" + backend + "'");
    }
    a = default_arena(backend);
  } else {
    if (!py::isinstance<PyArena>(arena)) {
      throw py::type_error("arena must be a memchannel.Arena, got " + std::string(Py_TYPE(arena.ptr())->tp_name));
    }
    arena_self(arena);
    a = arena.cast<std::shared_ptr<PyArena>>();
  }
  auto created = Sync::create(a->arena, static_cast<SyncKind>(kind), to_u32(value, "value", 0x7fffffff),
                              to_u32(limit, "limit", 0x7fffffff), to_u32(flags, "flags", 0xff), next_id());
  if (!created.ok()) raise_status(created.status, "creating a synchronization primitive");
  auto out = std::make_shared<PySync>();
  out->arena = std::move(a);
  out->sync = std::move(created.value);
  out->set_kind();
  return out;
}

py::bytes sync_handle(PySync& p) {
  Sync& s = p.s();
  {
    std::lock_guard<std::mutex> lock(pinned().mutex);
    pinned().syncs.emplace(std::make_pair(s.arena()->arena_id(), s.sync_id()), p.sync);
  }
  HandleFields h;
  h.shared = p.arena->shared();
  h.pid = static_cast<uint64_t>(getpid());
  h.arena_id = s.arena()->arena_id();
  h.channel_id = s.sync_id();
  h.offset = s.offset();
  h.name = p.arena->name;
  return py::bytes(encode_handle(h));
}

// A wait of the condition or barrier kind: the status after the GIL-released loop.
// No first attempt with the GIL held: these waits change state when they time out (a condition
// waiter unregisters, a barrier breaks), so each call must be the real wait.
template <typename Attempt>
Status waited(PySync& p, const py::object& timeout, Attempt&& attempt) {
  return wait_with_gil_released(p.wait_spec(true, timeout.ptr()), std::forward<Attempt>(attempt));
}

}  // namespace

void register_sync(py::module_& m) {
  auto cls = py::class_<PySync, std::shared_ptr<PySync>>(m, "_Sync", "A synchronization primitive in arena memory (see memchannel.sync).");
  add_methods(cls);
  cls.def(py::init(&make_sync), py::arg("kind"), py::arg("value") = 0, py::arg("limit") = 0, py::arg("flags") = 0,
          py::kw_only(), py::arg("backend") = "shm", py::arg("arena") = py::none(), py::arg("_handle") = py::none(),
          "__init__(self, /, kind, value=0, limit=0, flags=0, *, backend='shm', arena=None, _handle=None)\n--\n\n"
          "A new primitive of `kind` (memchannel.sync), or the one named by `_handle`.")
      .def("__reduce__", [](py::handle) -> py::object {
        throw py::type_error("pickle memchannel.Lock, Semaphore, ... objects, not memchannel._memchannel._Sync");
      }, "__reduce__(self, /)\n--\n\nRefused: the memchannel.sync classes pickle as their handle.")
      .def_property_readonly("handle", [](py::handle s) { return sync_handle(sync_self(s)); },
                             "Bytes naming this primitive, for _Sync(_handle=...) in another interpreter or process.")
      .def_property_readonly("backend", [](py::handle s) { return sync_self(s).arena->backend; })
      .def_property_readonly("_kind", [](py::handle s) { return static_cast<uint32_t>(sync_self(s).sync->kind()); })
      .def_property_readonly("_limit", [](py::handle s) { return sync_self(s).sync->limit(); })
      .def("locked", [](py::handle s) { return sync_self(s).s().locked(); },
           "locked(self, /)\n--\n\nWhether the lock is held (by anyone).")
      .def("_is_owned", [](py::handle s) { return sync_self(s).s().owned_here(); },
           "_is_owned(self, /)\n--\n\nRLock: held by this thread; Lock: held at all.")
      .def("_release_save", [](py::handle s) {
        uint32_t depth = 0;
        if (sync_self(s).s().rlock_release_all(&depth) != Status::kOk) {
          raise_class_attr(s.ptr(), "_release_error", "cannot release un-acquired lock");
        }
        return depth;
      }, "_release_save(self, /)\n--\n\nRelease the lock completely; returns the RLock depth to restore.")
      .def("_acquire_restore", [](py::handle s, uint32_t depth) {
        PySync& p = sync_self(s);
        const Status st = waited(p, py::none(), [&](const WaitSpec& w) { return p.s().rlock_restore(depth, w); });
        if (st == Status::kPeerDied) raise_abandoned(s.ptr());
        if (st != Status::kOk) raise_status(st, "re-acquiring the lock");
      }, py::arg("depth"), "_acquire_restore(self, /, depth)\n--\n\nTake the lock back at the saved depth.")
      .def("_value", [](py::handle s) { return sync_self(s).s().sem_value(); },
           "_value(self, /)\n--\n\nSemaphore: the permits available now.")
      .def("clear", [](py::handle s) { sync_self(s).s().event_clear(); }, "clear(self, /)\n--\n\nReset the flag.")
      .def("wait", [](py::handle s, const py::object& timeout) {
        PySync& p = sync_self(s);
        const Status st = waited(p, timeout, [&](const WaitSpec& w) { return p.s().event_wait(w); });
        if (st != Status::kOk && st != Status::kTimedOut) raise_status(st, "Event.wait()");
        return st == Status::kOk;
      }, py::arg("timeout") = py::none(),
           "wait(self, /, timeout=None)\n--\n\nBlock until the flag is set; returns the flag (False on timeout).")
      .def("_cond_register", [](py::handle s) { sync_self(s).s().cond_register(); },
           "_cond_register(self, /)\n--\n\nCondition: count a waiter (before it releases the lock).")
      .def("_cond_wait", [](py::handle s, const py::object& timeout) {
        PySync& p = sync_self(s);
        const Status st = waited(p, timeout, [&](const WaitSpec& w) { return p.s().cond_wait(w); });
        if (st != Status::kOk && st != Status::kTimedOut) raise_status(st, "Condition.wait()");
        return st == Status::kOk;
      }, py::arg("timeout") = py::none(),
           "_cond_wait(self, /, timeout=None)\n--\n\nCondition: wait for a notify; False on timeout (unregistered).")
      .def("_cond_notify", [](py::handle s, uint32_t n) { return sync_self(s).s().cond_notify(n); }, py::arg("n"),
           "_cond_notify(self, /, n)\n--\n\nCondition: grant up to n waiters a wake-up; returns how many.")
      .def("_cond_waiting", [](py::handle s) { return sync_self(s).s().cond_waiting(); },
           "_cond_waiting(self, /)\n--\n\nCondition: waiters not yet granted a wake-up.")
      .def("_barrier_arrive", [](py::handle s, const py::object& timeout) -> py::object {
        PySync& p = sync_self(s);
        Result<BarrierTicket> got;
        const Status st = waited(p, timeout, [&](const WaitSpec& w) {
          got = p.s().barrier_arrive(w);
          return got.status;
        });
        if (st != Status::kOk) return py::none();  // broken (or timed out waiting for the round before)
        return py::make_tuple(got.value.generation, got.value.index, got.value.last);
      }, py::arg("timeout") = py::none(),
           "_barrier_arrive(self, /, timeout=None)\n--\n\nBarrier: (generation, index, last), or None if broken.")
      .def("_barrier_wait", [](py::handle s, uint64_t generation, uint32_t index, const py::object& timeout) {
        PySync& p = sync_self(s);
        BarrierTicket t;
        t.generation = generation;
        t.index = index;
        const Status st = waited(p, timeout, [&](const WaitSpec& w) { return p.s().barrier_wait(t, w); });
        return st == Status::kOk ? 0 : st == Status::kTimedOut ? 2 : 1;
      }, py::arg("generation"), py::arg("index"), py::arg("timeout") = py::none(),
           "_barrier_wait(self, /, generation, index, timeout=None)\n--\n\n0 released, 1 broken, 2 timed out (now broken).")
      .def("_barrier_release", [](py::handle s, uint64_t generation) {
        BarrierTicket t;
        t.generation = generation;
        sync_self(s).s().barrier_release(t);
      }, py::arg("generation"), "_barrier_release(self, /, generation)\n--\n\nBarrier: the last arrival releases the others.")
      .def("abort", [](py::handle s) { sync_self(s).s().barrier_abort(); },
           "abort(self, /)\n--\n\nPut the barrier into the broken state.")
      .def("reset", [](py::handle s) { sync_self(s).s().barrier_reset(); },
           "reset(self, /)\n--\n\nReturn the barrier to empty; parties waiting get BrokenBarrierError.")
      .def_property_readonly("n_waiting", [](py::handle s) { return sync_self(s).s().barrier_waiting(); })
      .def_property_readonly("broken", [](py::handle s) { return sync_self(s).s().barrier_is_broken(); })
      .def("_recover", [](py::handle s) {
        PySync& p = sync_self(s);
        return without_gil([&] { return p.s().recover(); });
      }, "_recover(self, /)\n--\n\nApply now what dead holders left (permits, waiters, a barrier party).")
      .def_property_readonly("_reclaimed", [](py::handle s) { return sync_self(s).sync->reclaimed(); });
}

}  // namespace memchannel::py_glue
