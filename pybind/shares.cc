// memchannel.share (read-only shares of one block, core/shares.cc) and buffer pools
// (Channel.pool / Arena.pool, core/pools.cc): their bindings.
#include "pybind/shares.h"

#include <memory>
#include <string>
#include <vector>

#include "pybind/buffer.h"
#include "pybind/channel.h"
#include "pybind/errors.h"
#include "pybind/gil.h"
#include "pybind/state.h"
#include "pybind/tracker.h"
#include "pybind/wait.h"

namespace memchannel::py_glue {

namespace {

// memchannel.share(buf, channels, *, track=False): one read-only share of buf's block on each
// channel (core/shares.cc). buf is consumed, as by send(). A channel that refuses its share
// (closed, full past the timeout) gets none; the others keep theirs; the error is raised after
// every channel was tried, with .sent = how many got one.
py::object share_impl(const py::handle& buf_obj, const py::handle& channels_obj, bool track, const py::object& timeout) {
  if (!is_buffer(buf_obj.ptr())) {
    throw py::type_error(std::string("share() needs a memchannel.Buffer (reserved from the arena, or received), got ") +
                         Py_TYPE(buf_obj.ptr())->tp_name + "; send() copies other bytes-like objects");
  }
  Buffer* b = as_buffer(buf_obj.ptr());
  b->check_live("share()");
  py::list channels;
  for (py::handle c : py::iter(channels_obj)) channels.append(c);
  const size_t n = channels.size();
  if (n == 0) throw py::value_error("share() needs at least one channel");
  if (n > kMaxShareTokens) {
    throw py::value_error("share(): at most " + std::to_string(kMaxShareTokens) + " channels at once, got " +
                          std::to_string(n) + " (a block has " + std::to_string(kMaxShareTokens) +
                          " share indices over its shared life)");
  }
  std::vector<PyChannel*> chans;
  for (py::handle c : channels) {
    PyChannel& pc = channel_self(c);
    if (pc.arena->arena != b->arena) {
      throw py::value_error("share(): every channel must be of the Buffer's arena (a share is the same memory); "
                            "send() a copy to a channel of another arena");
    }
    chans.push_back(&pc);
  }
  b->check_no_exports("share()");
  ensure_block(b, "share()");  // a message received inline: shared from a block of its own
  const std::shared_ptr<PyArena>& arena = chans[0]->arena;
  Arena& core = *arena->arena;
  const bool resharing = core.is_share_token(b->block);
  py::object tracker = py::none();
  if (track) {
    if (resharing) {
      throw py::value_error("share(track=True) of a received share: only the first sharer's message can be "
                            "tracked (its Tracker already covers the shares made from it)");
    }
    tracker = start_tracking(arena, b->block);
  }
  auto tokens = core.share(b->block, static_cast<uint32_t>(n));
  if (!tokens.ok()) {
    if (tokens.status == Status::kInvalidArgument) {
      throw py::value_error(resharing ? "share(): this block's " + std::to_string(kMaxShareTokens) +
                                            " share indices are used up; copy it to share it further"
                                      : std::string("share(): the Buffer is also held elsewhere in this process "
                                                    "(another interpreter's Buffer of it); release that first"));
    }
    raise_status(tokens.status, "share()");
  }
  b->state = Buffer::State::kSent;  // the tokens own the block now
  size_t sent = 0;
  std::unique_ptr<py::error_already_set> first_error;
  for (size_t i = 0; i < n; ++i) {
    PyChannel& c = *chans[i];
    const BlockHandle tok = tokens.value[i];
    try {
      const Status s = c.waiting(c.wait_spec(true, timeout), [&](const WaitSpec& w) { return c.ch().send(tok, w); });
      if (s != Status::kOk) raise_status(s, "share()");
      ++sent;
    } catch (py::error_already_set& e) {
      core.release(tok);  // this channel's share is dropped
      if (!first_error) first_error = std::make_unique<py::error_already_set>(std::move(e));
    }
  }
  if (first_error) {
    first_error->value().attr("sent") = py::int_(sent);
    throw std::move(*first_error);
  }
  return tracker;
}

// memchannel Pool: Channel.pool / Arena.pool (core/pools.cc).
struct Pool {
  std::shared_ptr<Arena> arena;
  Offset offset = 0;
  bool shared = false;  // shm: waits check liveness
  bool closed = false;

  Arena& core() {
    if (closed) throw py::value_error("the pool is closed");
    return *arena;
  }
  void close() {
    if (closed) return;
    arena->pool_close(offset);
    closed = true;
  }
};

std::shared_ptr<Pool> make_pool(const py::handle& prototype, uint32_t count) {
  if (!is_buffer(prototype.ptr())) throw py::type_error("_make_pool() needs a reserved Buffer");
  Buffer* b = as_buffer(prototype.ptr());
  b->check_live("pool()");
  b->check_no_exports("pool()");
  if (count == 0) throw py::value_error("pool(): count must be >= 1");
  ensure_block(b, "pool()");
  auto made = b->arena->create_pool(b->block, count);
  if (!made.ok()) raise_status(made.status, "pool(): no room for " + std::to_string(count) + " blocks");
  b->state = Buffer::State::kSent;  // the prototype is one of the pool's blocks now
  auto pool = std::make_shared<Pool>();
  pool->arena = b->arena;
  pool->offset = made.value;
  pool->shared = b->arena->backend().tracks_holders();
  return pool;
}

py::object pool_reserve(Pool& p, const py::object& timeout) {
  Arena& core = p.core();
  const WaitSpec spec = make_wait(true, timeout, p.shared);
  auto got = core.pool_reserve(p.offset, WaitSpec::nonblocking());
  if (got.status == Status::kEmpty && spec.deadline_ns != 0) {
    got = wait_with_gil_released(spec, [&](const WaitSpec& w) { return core.pool_reserve(p.offset, w); });
  }
  if (got.status == Status::kEmpty) {
    raise_error(ErrorClass::kEmpty, "pool.reserve(): every block of the pool is out");
  }
  if (got.status == Status::kClosed) throw py::value_error("pool.reserve(): the pool is closed");
  if (!got.ok()) raise_status(got.status, "pool.reserve()");
  auto v = core.view(got.value);
  if (!v.ok()) {
    core.release(got.value);
    raise_status(v.status, "pool.reserve()");
  }
  return new_buffer(reinterpret_cast<PyTypeObject*>(module_state().buffer_type), p.arena, got.value, v.value);
}

}  // namespace

void register_shares(py::module_& m) {
  py::class_<Pool, std::shared_ptr<Pool>>(
      m, "Pool",
      "Preallocated blocks that come back to the pool wherever they are released (Channel.pool, "
      "Arena.pool): reserve() hands one out, as the arena's reserve() does.")
      .def("reserve", &pool_reserve, py::arg("timeout") = py::none(),
           "reserve(self, /, timeout=None)\n--\n\nA writable Buffer of the pool, to fill and send; waits while "
           "all are out (Empty after `timeout` seconds).")
      .def("close", &Pool::close,
           "close(self, /)\n--\n\nReturn the idle blocks to the arena, and the others as they come back.")
      .def_property_readonly("closed", [](const Pool& p) { return p.closed; })
      .def_property_readonly("count", [](Pool& p) { return p.arena->pool_count(p.offset); },
                             "Blocks the pool has (idle or out).")
      .def_property_readonly("idle", [](Pool& p) { return p.arena->pool_idle(p.offset); },
                             "Blocks in the pool now, ready for reserve() (a snapshot).")
      .def("__enter__", [](py::object self) { return self; }, "__enter__(self, /)\n--\n\nThe pool.")
      .def("__exit__", [](Pool& p, const py::args&) { p.close(); }, "__exit__(self, /, *exc_info)\n--\n\nclose().")
      .def("__reduce__", [](const Pool&) -> py::object {
        throw py::type_error("a memchannel Pool belongs to the process that made it: it does not pickle "
                             "(its blocks come back to it from any process)");
      }, "__reduce__(self, /)\n--\n\nRefused.");
  m.def("_make_pool", &make_pool, py::arg("prototype"), py::arg("count"),
        "_make_pool(prototype, count)\n--\n\nSee Channel.pool.");
  m.def("_share", &share_impl, py::arg("buf"), py::arg("channels"), py::arg("track") = false,
        py::arg("timeout") = py::none(),
        "_share(buf, channels, track=False, timeout=None)\n--\n\nSee memchannel.share.");
}

}  // namespace memchannel::py_glue
