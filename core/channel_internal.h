// What core/channel.cc and core/channel_send.cc share and nothing else includes: the waits
// that sweep for dead peers, and the flow-control statuses.
#pragma once

#include <algorithm>
#include <atomic>

#include "core/arena.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel::channel_internal {

// A sender asleep on a full channel looks at its room again after this long at first (ns),
// then ever less often (wait_until's recheck_ns): the bound on how late it can be for room
// that receivers made without reaching the low water (Channel::notify_room).
inline constexpr int64_t kRoomRecheckNs = 1'000'000;

// wait(spec), which waits as wait_until does, and on a backend with holders a wake-up at least
// every sweep interval to reclaim dead peers (a wait in progress counts as a call:
// Arena::maybe_reap). The caller's own slice, or a signal, still ends the wait with
// kInterrupted. The first attempt is inline; the waiting is out of line, so a call that
// succeeds at once costs what it did before.
template <typename Wait>
[[gnu::noinline]] Status wait_sweeping_slow(Arena& arena, const WaitSpec& spec, Wait& wait) {
  if (spec.deadline_ns == 0) return Status::kTimedOut;  // non-blocking: ready() just said no
  const int64_t interval = arena.sweep_interval();
  if (!arena.sweeps() || interval <= 0 || spec.slice_ns <= interval) return wait(spec);
  const int64_t start = monotonic_ns();
  const int64_t caller_slice_end =
      spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  WaitSpec w = spec;
  w.slice_ns = interval;
  for (;;) {
    const int64_t begun = monotonic_ns();
    const Status s = wait(w);
    if (s != Status::kInterrupted) return s;
    const int64_t now = monotonic_ns();
    if (now < begun + w.slice_ns || now >= caller_slice_end) return s;  // a signal, or the caller's slice
    arena.maybe_reap();
    w.spin_ns = 0;  // spun already
    if (caller_slice_end != WaitSpec::kForever) w.slice_ns = std::min(interval, caller_slice_end - now);
  }
}

template <typename Ready>
inline Status wait_sweeping(Arena& arena, EventCount& ec, const WaitSpec& spec, Ready&& ready) {
  if (ready()) return Status::kOk;
  auto wait = [&](const WaitSpec& w) { return wait_until(ec, w, ready); };
  return wait_sweeping_slow(arena, spec, wait);
}

// The same with a low water (wait_until_low_water: a full channel's senders, see
// Channel::notify_room): spins and sleeps for `at_mark`, takes `any` when it looks again.
template <typename AtMark, typename Any>
inline Status wait_sweeping_low_water(Arena& arena, EventCount& ec, const WaitSpec& spec, AtMark&& at_mark,
                                      Any&& any) {
  if (any()) return Status::kOk;
  auto wait = [&](const WaitSpec& w) { return wait_until_low_water(ec, w, at_mark, any, kRoomRecheckNs); };
  return wait_sweeping_slow(arena, spec, wait);
}

// The same for receivers: wake-one waiting; more() counts what is left for the others when a
// spinner stops (core/waiter.h, "Wake-one waiting").
template <typename Ready, typename More>
inline Status wait_sweeping(Arena& arena, WakeOneCount& ec, std::atomic<int64_t>& spin_until,
                            const WaitSpec& spec, Ready&& ready, More&& more) {
  if (ready()) return Status::kOk;
  auto wait = [&](const WaitSpec& w) { return wait_until(ec, spin_until, w, ready, more); };
  return wait_sweeping_slow(arena, spec, wait);
}

// Flow-control statuses as the API reports them: a wait that ran out means full / empty.
inline Status as_flow(Status s, Status when_out_of_time) {
  return s == Status::kTimedOut ? when_out_of_time : s;
}

}  // namespace memchannel::channel_internal
