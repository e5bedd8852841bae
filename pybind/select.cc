#include "pybind/select.h"

#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "pybind/channel.h"
#include "pybind/errors.h"
#include "pybind/gil.h"
#include "pybind/holder.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {
namespace {

// The longest spin _spin_recv accepts: the asyncio layer holds its loop this long at most.
constexpr int64_t kMaxAsyncSpinNs = 1'000'000;

FdEvent event_of(const Channel& c) { return FdEvent{c.arena()->arena_id(), c.offset()}; }

std::unique_ptr<WaitSocket> open_socket() {
  auto s = WaitSocket::open();
  if (!s.ok()) raise_error(ErrorClass::kMemChannelError, "could not open a Unix datagram socket for waiting");
  return std::move(s.value);
}

int register_in(Channel& c, uint32_t key) {
  auto slot = c.fd_register(key);
  if (!slot.ok()) {
    raise_error(ErrorClass::kMemChannelError, "the channel's fd wait-list is full (" + std::to_string(kFdSlots) +
                                                  " listeners wait on it at once)");
  }
  return slot.value;
}

// This thread's listener for select()/wait() (a forked child opens its own).
struct ThreadSocket {
  std::unique_ptr<WaitSocket> sock;
  long pid = 0;
};
thread_local ThreadSocket t_socket;

WaitSocket* thread_socket() {
  if (!t_socket.sock || t_socket.pid != static_cast<long>(::getpid())) {
    if (t_socket.sock && t_socket.pid != static_cast<long>(::getpid())) (void)t_socket.sock.release();  // the parent's
    auto s = WaitSocket::open();
    if (!s.ok()) return nullptr;
    t_socket.sock = std::move(s.value);
    t_socket.pid = static_cast<long>(::getpid());
  }
  return t_socket.sock.get();
}

// A per-call array of n entries: in place for the usual few channels (select() runs once per
// message; three heap allocations per call were a tenth of its cost), on the heap beyond.
template <typename T, size_t N = 16>
class CallArray {
 public:
  CallArray(size_t n, T value) : n_(n) {
    if (n > N) {
      heap_.assign(n, value);
      p_ = heap_.data();
    } else {
      std::fill_n(local_, n, value);
      p_ = local_;
    }
  }
  CallArray(const CallArray&) = delete;
  CallArray& operator=(const CallArray&) = delete;
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }

 private:
  size_t n_;
  T local_[N];
  std::vector<T> heap_;
  T* p_;
};

// One sleep of select()/wait() without the GIL: spin on the channels' readiness, then register
// and arm this thread's socket in every channel's wait-list and poll it until a sender fires it,
// the deadline, or the slice. kOk: something may be ready (look again); kTimedOut: deadline;
// kInterrupted: slice over or a signal. `active[i]` false: skip channel i (closed and drained).
Status sleep_on(const CallArray<Channel*>& chans, const CallArray<char>& active, const WaitSpec& spec) {
  const int64_t start = monotonic_ns();
  if (spec.deadline_ns <= start) return Status::kTimedOut;
  auto any_ready = [&] {
    for (size_t i = 0; i < chans.size(); ++i) {
      if (active[i] && chans[i]->readable()) return true;
    }
    return false;
  };
  if (spec.spin_ns > 0) {
    const int64_t spin_end = start + spec.spin_ns;
    for (uint32_t i = 1;; ++i) {
      for (int k = 0; k < 32; ++k) cpu_relax();
      if (any_ready()) return Status::kOk;
      if ((i & 7) == 0 && monotonic_ns() >= spin_end) break;
    }
  }
  const int64_t slice_end = spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  const int64_t until = std::min(spec.deadline_ns, slice_end);
  WaitSocket* sock = thread_socket();
  std::vector<int> slots(chans.size(), -1);
  FdEvent evs[16];
  bool more = false;
  bool ready = false;
  Status st = Status::kOk;
  if (sock != nullptr) {
    sock->drain(evs, 16, &more);  // stale datagrams of an earlier wait
    for (size_t i = 0; i < chans.size() && !ready; ++i) {
      if (!active[i]) continue;
      auto slot = chans[i]->fd_register(sock->key());
      if (!slot.ok()) continue;  // a full wait-list: this channel is looked at every slice
      slots[i] = slot.value;
      ready = chans[i]->fd_arm(slots[i], FdKind::kReadable);
    }
  }
  if (!ready) {
    const int64_t now = monotonic_ns();
    int64_t timeout = until == WaitSpec::kForever ? -1 : std::max<int64_t>(0, until - now);
    const bool fallback = sock == nullptr || std::find(slots.begin(), slots.end(), -1) != slots.end();
    if (fallback) timeout = timeout < 0 ? 1'000'000 : std::min<int64_t>(timeout, 1'000'000);  // 1 ms looks
    if (sock != nullptr) {
      st = sock->wait(timeout);
    } else {
      usleep(static_cast<useconds_t>(timeout / 1000));
      st = Status::kTimedOut;
    }
  }
  for (size_t i = 0; i < chans.size(); ++i) {
    if (slots[i] >= 0) chans[i]->fd_unregister(slots[i], sock->key());
  }
  if (sock != nullptr) sock->drain(evs, 16, &more);
  if (st == Status::kOk) return Status::kOk;
  if (st == Status::kTimedOut) {
    if (monotonic_ns() >= spec.deadline_ns) return Status::kTimedOut;
    return Status::kInterrupted;
  }
  return Status::kInterrupted;
}

thread_local uint32_t t_rotor = 0;

// select() (claim = true: take one message, return (channel, Buffer)) and wait() (claim =
// false: return the ready channels). See python/memchannel/_select.py for the contract.
py::object select_impl(const py::handle& items, const py::object& timeout, bool claim) {
  // A list or tuple is read in place (the common case: no copy, no per-item conversion).
  py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(items.ptr(), "select() needs a sequence of channels"));
  if (!seq) throw py::error_already_set();
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(seq.ptr()));
  if (n == 0) throw py::value_error(std::string(claim ? "select" : "wait") + "() needs at least one channel");
  PyObject** objs = PySequence_Fast_ITEMS(seq.ptr());  // kept alive by `seq` (a list copy or the caller's tuple/list ref)
  CallArray<PyChannel*> pys(n, nullptr);
  CallArray<Channel*> chans(n, nullptr);
  PyTypeObject* checked = nullptr;  // a type channel_self() accepted: its instances need no lookup
  for (size_t i = 0; i < n; ++i) {
    PyChannel* c = Py_TYPE(objs[i]) == checked ? held_object_of_checked_type<PyChannel>(objs[i]) : nullptr;
    if (c == nullptr) {
      c = &channel_self(objs[i]);  // raises for a non-Channel or an uninitialised one
      checked = Py_TYPE(objs[i]);
    }
    pys[i] = c;
    chans[i] = &c->ch();
  }
  (void)timeout_seconds(timeout.ptr());  // the timeout rule holds even when a message is there at once
  CallArray<char> active(n, 1);
  CallArray<char> ready_flags(claim ? 0 : n, 0);
  WaitSpec w;
  bool have_spec = false;
  int64_t interp_id = 0;
  for (;;) {
    // One pass, starting one channel further on each call: always-ready channels take turns.
    const size_t start = t_rotor++ % n;
    size_t drained = 0;
    size_t nready = 0;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (start + k) % n;
      if (!active[i]) {
        ++drained;
        continue;
      }
      if (claim) {
        SmallMessage small;
        auto got = chans[i]->recv(WaitSpec::nonblocking(), &small);
        if (got.ok()) {
          py::object buf = pys[i]->wrap(got.value, &small);
          return py::make_tuple(py::reinterpret_borrow<py::object>(objs[i]), buf);
        }
        if (got.status == Status::kClosed) {
          active[i] = 0;
          ++drained;
        } else if (got.status != Status::kEmpty) {
          raise_status(got.status, "");
        }
      } else {
        chans[i]->arena()->maybe_reap();
        if (chans[i]->readable()) {
          ready_flags[i] = 1;
          ++nready;
        }
      }
    }
    if (claim && drained == n) raise_error(ErrorClass::kChannelClosed, "select(): every channel is closed and drained");
    if (!claim && nready != 0) {
      // In the order given, as multiprocessing.connection.wait returns them.
      py::list ordered;
      for (size_t i = 0; i < n; ++i) {
        if (ready_flags[i]) ordered.append(py::reinterpret_borrow<py::object>(objs[i]));
      }
      return ordered;
    }
    if (!have_spec) {
      bool shared = false;
      for (PyChannel* c : pys) shared = shared || c->arena->shared();
      w = make_wait(true, timeout, shared);
      interp_id = PyInterpreterState_GetID(PyInterpreterState_Get());
      have_spec = true;
    }
    // `seq` may be this call's own list (the argument was not a list or tuple): a forced
    // unwind out of the wait must not free it without the GIL (keeping(), pybind/wait.h).
    const Status s = keeping([&] { return without_gil([&] { return sleep_on(chans, active, w); }); }, seq);
    w.spin_ns = 0;  // spun once
    if (s == Status::kTimedOut) {
      if (!claim) return py::list();
      raise_error(ErrorClass::kEmpty, "select(): no message before the timeout");
    }
    if (s == Status::kInterrupted) {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (waits_cancelled(interp_id)) {
        raise_error(ErrorClass::kWaitCancelled, "the wait was cancelled: this interpreter is being closed");
      }
    }
  }
}

// The listener of an asyncio event loop (python/memchannel/_aio.py): one socket for every
// channel the loop's awaits wait on.
struct Listener {
  std::unique_ptr<WaitSocket> sock = open_socket();
};

Channel& core_of(const py::handle& ch) { return channel_self(ch).ch(); }
FdKind kind_of(bool writable) { return writable ? FdKind::kWritable : FdKind::kReadable; }

}  // namespace

FdWatch::~FdWatch() {
  if (slot >= 0 && sock && pid == static_cast<long>(::getpid())) channel->fd_unregister(slot, sock->key());
  if (sock && pid != static_cast<long>(::getpid())) (void)sock.release();  // a forked child: the parent's socket
}

void FdWatch::refresh() {
  std::lock_guard<std::mutex> lock(mu);
  FdEvent evs[16];
  bool more = false;
  sock->drain(evs, 16, &more);
  if (channel->fd_arm(slot, FdKind::kReadable)) {
    channel->fd_disarm(slot, FdKind::kReadable);
    sock->signal(event_of(*channel));
  }
}

void PyChannel::fd_refresh() {
  std::shared_ptr<FdWatch> w = fd_watch;
  if (w && w->pid == static_cast<long>(::getpid())) without_gil([&] { w->refresh(); });
}

void add_wait_methods(py::class_<PyChannel, std::shared_ptr<PyChannel>>& cls) {
  cls.def("fileno", [](py::handle s) {
        PyChannel& c = channel_self(s);
        Channel& core = c.ch();
        if (!c.fd_watch || c.fd_watch->pid != static_cast<long>(::getpid())) {
          auto w = std::make_shared<FdWatch>();
          w->channel = c.channel;
          w->sock = open_socket();
          w->pid = static_cast<long>(::getpid());
          w->slot = register_in(core, w->sock->key());
          c.fd_watch = std::move(w);
        }
        c.fd_refresh();
        return c.fd_watch->sock->fd();
      },
      "fileno(self, /)\n--\n\n"
      "A file descriptor that is readable while the channel may have a message or is closed, for "
      "selectors, select.poll/epoll, multiprocessing.connection.wait and loop.add_reader; also when "
      "the sender is another process. It stays readable until fileno() is called again or a receive "
      "of this object finds the channel empty. Owned by the channel object: do not close it.");
  cls.def("_try_recv", [](py::handle s) -> py::object {
        PyChannel& c = channel_self(s);
        SmallMessage small;
        auto got = c.ch().recv(WaitSpec::nonblocking(), &small);
        if (got.ok()) return c.wrap(got.value, &small);
        if (got.status != Status::kEmpty) raise_status(got.status, "");
        if (c.fd_watch) c.fd_refresh();
        return py::none();
      },
      "_try_recv(self, /)\n--\n\n"
      "recv(block=False), but None instead of raising Empty (the asyncio layer's first look: an "
      "exception costs more than the receive).");
  cls.def("_spin_recv", [](py::handle s, int64_t ns) -> py::object {
        if (ns <= 0 || ns > kMaxAsyncSpinNs) {
          throw py::value_error("_spin_recv(): ns must be in 1.." + std::to_string(kMaxAsyncSpinNs) + ", got " +
                                std::to_string(ns));
        }
        PyChannel& c = channel_self(s);
        Channel& core = c.ch();
        // Spin only: the deadline is the end of the spin, so the wait never reaches the futex.
        WaitSpec w;
        w.spin_ns = ns;
        w.deadline_ns = monotonic_ns() + ns;
        SmallMessage small;
        auto got = without_gil([&] { return core.recv(w, &small); });
        if (got.ok()) return c.wrap(got.value, &small);
        if (got.status != Status::kEmpty && got.status != Status::kTimedOut) raise_status(got.status, "");
        if (c.fd_watch) c.fd_refresh();
        return py::none();
      },
      py::arg("ns"),
      "_spin_recv(self, /, ns)\n--\n\n"
      "_try_recv, but first spin up to ns nanoseconds (GIL released, no sleep) for a message: the "
      "asyncio layer's look before it arms the loop's listener, while its loop has nothing else to run.");
  cls.def("writable_hint", [](py::handle s) { return channel_self(s).ch().writable(); },
      "writable_hint(self, /)\n--\n\n"
      "Whether the channel's own bounds (maxsize, maxbytes) leave room now, or it is closed: a "
      "snapshot; the arena's capacity is not looked at.");
  cls.def_property_readonly("_wait_key", [](py::handle s) {
        Channel& c = channel_self(s).ch();
        return py::make_tuple(c.arena()->arena_id(), c.offset());
      }, "(arena id, channel offset): what a fired listener socket receives for this channel.");
}

void register_select(py::module_& m) {
  m.attr("_FD_SLOTS") = kFdSlots;  // listeners per channel at once (tests)
  m.def("_select", [](const py::handle& channels, const py::object& timeout) {
        return select_impl(channels, timeout, true);
      }, py::arg("channels"), py::arg("timeout") = py::none(),
      "_select(channels, timeout=None)\n--\n\nSee memchannel.select.");
  m.def("_wait", [](const py::handle& channels, const py::object& timeout) {
        return select_impl(channels, timeout, false);
      }, py::arg("channels"), py::arg("timeout") = py::none(),
      "_wait(channels, timeout=None)\n--\n\nSee memchannel.wait.");
  py::class_<Listener>(m, "_Listener", "One listener socket for many channels (memchannel._aio).")
      .def(py::init<>())
      .def("fileno", [](Listener& l) { return l.sock->fd(); }, "fileno(self, /)\n--\n\nThe socket's fd.")
      .def_property_readonly("key", [](Listener& l) { return l.sock->key(); },
                             "The socket's key (the name a sender or a Tracker's freer signals).")
      .def("register", [](Listener& l, const py::handle& ch) { return register_in(core_of(ch), l.sock->key()); },
           py::arg("channel"), "register(self, /, channel)\n--\n\nTake a slot of the channel's wait-list; returns it.")
      .def("unregister", [](Listener& l, const py::handle& ch, int slot) { core_of(ch).fd_unregister(slot, l.sock->key()); },
           py::arg("channel"), py::arg("slot"), "unregister(self, /, channel, slot)\n--\n\nGive the slot back.")
      .def("arm", [](Listener&, const py::handle& ch, int slot, bool writable) {
             return core_of(ch).fd_arm(slot, kind_of(writable));
           }, py::arg("channel"), py::arg("slot"), py::arg("writable") = false,
           "arm(self, /, channel, slot, writable=False)\n--\n\nArm the slot; True if the channel is ready now.")
      .def("disarm", [](Listener&, const py::handle& ch, int slot, bool writable) {
             core_of(ch).fd_disarm(slot, kind_of(writable));
           }, py::arg("channel"), py::arg("slot"), py::arg("writable") = false,
           "disarm(self, /, channel, slot, writable=False)\n--\n\nDisarm the slot.")
      .def("drain", [](Listener& l) -> py::object {
             FdEvent evs[256];
             bool more = false;
             const int got = l.sock->drain(evs, 256, &more);
             if (more) return py::none();
             py::list out;
             for (int i = 0; i < got; ++i) out.append(py::make_tuple(evs[i].arena_id, evs[i].offset));
             return out;
           }, "drain(self, /)\n--\n\nThe (arena id, offset) of every fired channel, or None when too many "
              "fired to list (look at all).");
}

}  // namespace memchannel::py_glue
