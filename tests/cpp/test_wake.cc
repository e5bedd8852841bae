// Receivers' wake-one waiting (core/waiter.h, "Wake-one waiting"; docs/design.md, "Waiting"):
// one sleeper woken per message and taken off the count by its waker, no futex call while a
// spinner is announced, no lost wake-up when spinners take a message and leave (the 1 -> N
// case of a sender's last messages), close wakes every sleeper, and a receiver killed while
// spinning or sleeping, or a forged announcement, does not stall the others.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/futex.h"
#include "core/status.h"
#include "core/waiter.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr int64_t kMs = 1000000;
// A receive that took this long with its message sent at once slept through its wake-up (the
// deadlines below are 3 s or more; no honest wake-up takes a second, even on a busy machine).
constexpr int64_t kLostNs = 1000 * kMs;

WaitSpec waiting(int64_t ms, int64_t spin_ns) {
  WaitSpec w;
  w.deadline_ns = monotonic_ns() + ms * kMs;
  w.spin_ns = spin_ns;
  return w;
}

Status send_value(Channel& ch, uint64_t value) {
  auto h = ch.allocate(8, PayloadLayout{}, WaitSpec::nonblocking());
  if (!h.ok()) return h.status;
  std::memcpy(ch.arena()->payload(h.value), &value, sizeof(value));
  const Status s = ch.send(h.value, WaitSpec::nonblocking());
  if (s != Status::kOk) ch.arena()->release(h.value);
  return s;
}

Result<uint64_t> recv_value(Channel& ch, const WaitSpec& wait) {
  auto h = ch.recv(wait);
  if (!h.ok()) return {h.status, 0};
  uint64_t value = 0;
  uint64_t length = 0;
  const uint8_t* data = ch.arena()->payload(h.value, &length);
  if (data == nullptr || length < sizeof(value)) return {Status::kCorruptedLength, 0};
  std::memcpy(&value, data, sizeof(value));
  const Status s = ch.arena()->release(h.value);
  return {s, value};
}

// Yields until `n` sleepers are registered (bounded: false after `ms`).
bool await_waiters(const WakeOneCount& ec, uint32_t n, int64_t ms = 5000) {
  const int64_t end = monotonic_ns() + ms * kMs;
  while (ec.waiters.load() < n) {
    if (monotonic_ns() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

// ---- The primitive -------------------------------------------------------------------------

// Tokens a consuming ready() takes one at a time.
struct Tokens {
  std::atomic<int> n{0};
  bool take() {
    int v = n.load();
    while (v > 0) {
      if (n.compare_exchange_weak(v, v - 1)) return true;
    }
    return false;
  }
};

// One token, one notify_one: exactly one of the sleepers returns, and the waker has taken it
// off the count before notify_one returns (so the next message makes no futex call for it).
TEST(WakeOne, NotifyOneWakesOneSleeperAndCountsItOff) {
  WakeOneCount ec{};
  std::atomic<int64_t> spin_until{0};
  Tokens tokens;
  constexpr int kSleepers = 4;
  std::atomic<int> returned{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < kSleepers; ++i) {
    pool.emplace_back([&] {
      WaitSpec w = waiting(20000, 0);
      if (wait_until(ec, spin_until, w, [&] { return tokens.take(); }, [&] { return static_cast<uint64_t>(tokens.n.load()); }) ==
          Status::kOk) {
        returned.fetch_add(1);
      }
    });
  }
  ASSERT_TRUE(await_waiters(ec, kSleepers));
  // Let each of them reach the kernel (registered sleepers are counted a little before that).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (int round = 1; round <= kSleepers; ++round) {
    tokens.n.fetch_add(1);
    notify_one(ec, spin_until);
    EXPECT_EQ(ec.waiters.load(), static_cast<uint32_t>(kSleepers - round)) << "round " << round;
    const int64_t end = monotonic_ns() + 5000 * kMs;
    while (returned.load() < round && monotonic_ns() < end) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(returned.load(), round) << "one token woke " << returned.load() - round + 1 << " sleepers";
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// An announced spinner makes notify_one skip the futex call; an announcement that has
// expired, or one further ahead than any spinner writes (forged), does not.
TEST(WakeOne, AnnouncedSpinnerSkipsTheWakeButExpiredOrForgedOnesDoNot) {
  WakeOneCount ec{};
  ec.waiters.store(1);  // a registered sleeper, as far as notify_one can tell
  std::atomic<int64_t> spin_until{monotonic_ns() + kMaxSpinLease / 2};
  notify_one(ec, spin_until);
  EXPECT_EQ(ec.seq.load(), 0u) << "woke although a spinner was announced";
  spin_until.store(monotonic_ns() - 1);
  notify_one(ec, spin_until);
  EXPECT_EQ(ec.seq.load(), 1u) << "an expired announcement skipped the wake-up";
  for (int64_t forged : {monotonic_ns() + 1000 * kMs, std::numeric_limits<int64_t>::max(), int64_t{-5}}) {
    const uint32_t before = ec.seq.load();
    spin_until.store(forged);
    notify_one(ec, spin_until);
    EXPECT_EQ(ec.seq.load(), before + 1) << "forged announcement " << forged << " skipped the wake-up";
  }
}

// A spinner that took its message and leaves while another message waits and a sleeper
// sleeps wakes that sleeper (the sender skipped it because of the spinner). A spinner
// descheduled for longer than its announcement lasts is not believed and the sender wakes the
// sleeper itself; such an attempt is repeated until one saw the skip.
TEST(WakeOne, LeavingSpinnerPassesTheWakeUpOn) {
  int skipped = 0;
  for (int attempt = 0; attempt < 50 && skipped == 0; ++attempt) {
    WakeOneCount ec{};
    std::atomic<int64_t> spin_until{0};
    Tokens tokens;
    Status sleeper = Status::kInterrupted;
    std::thread t([&] {
      sleeper = wait_until(ec, spin_until, waiting(5000, 0), [&] { return tokens.take(); },
                           [&] { return static_cast<uint64_t>(tokens.n.load()); });
    });
    ASSERT_TRUE(await_waiters(ec, 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::atomic<bool> spinning{false};
    Status spinner = Status::kInterrupted;
    std::thread s([&] {
      spinner = wait_until(ec, spin_until, waiting(5000, 2000 * kMs), [&] {
        spinning.store(true);
        return tokens.take();
      }, [&] { return static_cast<uint64_t>(tokens.n.load()); });
    });
    while (!spinning.load() || spin_until.load() == 0) std::this_thread::yield();
    const uint32_t seq = ec.seq.load();
    tokens.n.fetch_add(2);  // two messages: the sender skips both wake-ups if it sees the spinner
    notify_one(ec, spin_until);
    notify_one(ec, spin_until);
    if (ec.seq.load() == seq) ++skipped;
    const int64_t t0 = monotonic_ns();
    s.join();
    t.join();
    EXPECT_EQ(spinner, Status::kOk);
    EXPECT_EQ(sleeper, Status::kOk);
    EXPECT_LT(monotonic_ns() - t0, kLostNs) << "the second message's wake-up was lost (the sleeper ran to its deadline)";
    EXPECT_EQ(spin_until.load(), 0) << "the spinner left its announcement";
    EXPECT_EQ(ec.waiters.load(), 0u);
  }
  EXPECT_GT(skipped, 0) << "no attempt saw the sender skip a wake-up for the spinner";
}

// ---- Channels ------------------------------------------------------------------------------

template <typename Factory>
class WakeTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(WakeTest, BackendTypes, BackendNames);

// Many rounds of 1 -> N where each receiver makes exactly one receive per round and the
// sender sends exactly N messages: every receive must succeed. Receivers spin for different
// times (none, short, long), so spinners that take one message and leave meet sleepers, as at
// the end of a 1 -> N stream. No sweeps, so a lost wake-up is a receive that runs to its
// deadline, not one a slice rescues. Afterwards the counts are back to zero.
TYPED_TEST(WakeTest, OneToManyRoundsLoseNoWakeUp) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  arena->set_sweep_interval(-1);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);
  constexpr int kReceivers = 4;
  constexpr int kRounds = 3000;
  const int64_t spins[kReceivers] = {0, 3000, 20000, 200000};
  std::atomic<int> round{0};
  std::atomic<int> done_in_round{0};
  std::atomic<int> failures{0};
  std::atomic<uint64_t> sum{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < kReceivers; ++i) {
    pool.emplace_back([&, i] {
      for (int r = 1; r <= kRounds; ++r) {
        while (round.load(std::memory_order_acquire) < r) std::this_thread::yield();
        const int64_t t0 = monotonic_ns();
        auto got = recv_value(*ch, waiting(3000, spins[i]));
        const int64_t took = monotonic_ns() - t0;
        if (got.status != Status::kOk || took >= kLostNs) {
          // A receive that waited this long slept through its message: it got it only from
          // the look after its deadline ran out (or not at all).
          failures.fetch_add(1);
          ADD_FAILURE() << "round " << r << " receiver " << i << ": " << to_string(got.status) << " after "
                        << took / kMs << " ms";
        } else {
          sum.fetch_add(got.value);
        }
        done_in_round.fetch_add(1, std::memory_order_acq_rel);
      }
    });
  }
  std::mt19937 rng(13);
  uint64_t expected = 0;
  uint64_t value = 0;
  for (int r = 1; r <= kRounds && failures.load() == 0; ++r) {
    done_in_round.store(0);
    round.store(r, std::memory_order_release);
    const uint32_t mode = rng() % 4;
    if (mode == 1) {
      // Every sleeper that is going to sleep asleep first (the spinners are still spinning
      // or asleep too).
      const int64_t end = monotonic_ns() + 2 * kMs;
      while (hdr->not_empty.waiters.load() < 1 && monotonic_ns() < end) std::this_thread::yield();
    } else if (mode == 2) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
    }
    for (int k = 0; k < kReceivers; ++k) {
      ASSERT_EQ(send_value(*ch, ++value), Status::kOk);
      expected += value;
      if (mode == 3 && (rng() & 1)) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
    }
    while (done_in_round.load(std::memory_order_acquire) < kReceivers) std::this_thread::yield();
  }
  if (failures.load() != 0) {
    // Let the others finish their rounds with whatever is left.
    ch->close();
    round.store(kRounds);
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(failures.load(), 0);
  if (failures.load() == 0) {
    EXPECT_EQ(sum.load(), expected);
  }
  EXPECT_EQ(hdr->not_empty.waiters.load(), 0u) << "sleepers' count not back to zero";
  EXPECT_EQ(hdr->receivers_spin_until.load(), 0) << "a spinner's announcement left behind";
  EXPECT_EQ(ch->queued(), 0u);
}

// close() wakes every sleeping and spinning receiver at once, and the count goes to zero.
TYPED_TEST(WakeTest, CloseWakesEverySleeperAndSpinner) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  arena->set_sweep_interval(-1);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);
  constexpr int kSleepers = 8;
  std::vector<Status> results(kSleepers + 1, Status::kOk);
  std::vector<std::thread> pool;
  for (int i = 0; i < kSleepers; ++i) {
    pool.emplace_back([&, i] { results[static_cast<size_t>(i)] = ch->recv(waiting(10000, 0)).status; });
  }
  ASSERT_TRUE(await_waiters(hdr->not_empty, kSleepers));
  pool.emplace_back([&] { results[kSleepers] = ch->recv(waiting(10000, 5000 * kMs)).status; });
  while (hdr->receivers_spin_until.load() == 0) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int64_t t0 = monotonic_ns();
  ch->close();
  for (auto& t : pool) t.join();
  EXPECT_LT(monotonic_ns() - t0, kLostNs);
  for (Status s : results) EXPECT_EQ(s, Status::kClosed);
  EXPECT_EQ(hdr->not_empty.waiters.load(), 0u);
}

// ---- Senders on a full channel: the low water -------------------------------------------------

// notify_all_if wakes only when asked and wanted; a sleeper whose notifier declined sees its
// plain condition by its own re-check, within about as long as it had slept already.
TEST(LowWater, DeclinedWakeUpIsTakenByTheSleepersRecheck) {
  EventCount ec{};
  ec.waiters.store(1);
  notify_all_if(ec, [] { return false; });
  EXPECT_EQ(ec.seq.load(), 0u) << "woke although the notifier declined";
  notify_all_if(ec, [] { return true; });
  EXPECT_EQ(ec.seq.load(), 1u);
  ec.waiters.store(0);
  bool asked = false;
  notify_all_if(ec, [&] { return asked = true; });
  EXPECT_FALSE(asked) << "asked with nobody asleep";

  std::atomic<bool> ready{false};
  Status got = Status::kInterrupted;
  int64_t returned_at = 0;
  std::thread t([&] {
    // The mark never comes; the plain condition does, with no notify: the re-check takes it.
    got = wait_until_low_water(ec, waiting(10000, 0), [] { return false; }, [&] { return ready.load(); }, 1 * kMs);
    returned_at = monotonic_ns();
  });
  const int64_t begun = monotonic_ns();
  while (ec.waiters.load() == 0) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  const int64_t set_at = monotonic_ns();
  ready.store(true);  // and no notify at all
  t.join();
  EXPECT_EQ(got, Status::kOk);
  // Re-checks at 1, 3, 7, ... ms of sleep: the next after 40 ms is at 63 ms.
  EXPECT_LT(returned_at - set_at, (set_at - begun) + 100 * kMs) << "late by more than it had slept";
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// A fast sender into a bounded channel, a slow receiver: the sender sleeps at once when full
// (no spin), and the receivers' claims wake it at the low water (a quarter free), not one
// wake-up per message taken. Every message arrives, in order.
TYPED_TEST(WakeTest, FullChannelSenderIsWokenAtTheLowWaterNotPerMessage) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  arena->set_sweep_interval(-1);
  constexpr uint64_t kMaxsize = 64;
  auto ch = this->make_channel(arena, kMaxsize);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);
  constexpr uint64_t kMessages = 3200;
  std::atomic<int> failures{0};
  std::thread sender([&] {
    for (uint64_t v = 1; v <= kMessages; ++v) {
      auto h = ch->allocate(8, PayloadLayout{}, waiting(10000, 0));
      if (!h.ok()) {
        failures.fetch_add(1);
        return;
      }
      std::memcpy(ch->arena()->payload(h.value), &v, sizeof(v));
      const Status s = ch->send(h.value, waiting(10000, 0));
      if (s != Status::kOk) {
        ch->arena()->release(h.value);
        failures.fetch_add(1);
        return;
      }
    }
  });
  const uint32_t seq0 = hdr->not_full.seq.load();
  uint64_t sleeps_seen = 0;
  for (uint64_t v = 1; v <= kMessages && failures.load() == 0; ++v) {
    if (hdr->not_full.waiters.load() != 0) ++sleeps_seen;
    auto got = recv_value(*ch, waiting(10000, 0));
    ASSERT_EQ(got.status, Status::kOk);
    ASSERT_EQ(got.value, v);
    const int64_t busy_until = monotonic_ns() + 40000;  // 40 us of work per message: slower than any sender build
    while (monotonic_ns() < busy_until) {
    }
  }
  sender.join();
  EXPECT_EQ(failures.load(), 0);
  const uint32_t wakes = hdr->not_full.seq.load() - seq0;
  // The sender sleeps through most claims; one wake-up per 16 messages taken (plus a few).
  EXPECT_GT(sleeps_seen, kMessages / 4) << "the sender did not sleep on the full channel: nothing tested";
  EXPECT_LT(wakes, kMessages / 8) << wakes << " wake-ups for " << kMessages << " messages";
  EXPECT_EQ(hdr->not_full.waiters.load(), 0u);
  EXPECT_EQ(ch->queued(), 0u);
}

// Receivers that stop short of the low water: the sleeping sender finds the room by its own
// re-check, well before its deadline.
TYPED_TEST(WakeTest, FullChannelSenderFindsRoomLeftShortOfTheLowWater) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  arena->set_sweep_interval(-1);
  auto ch = this->make_channel(arena, 16);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);
  for (uint64_t v = 1; v <= 16; ++v) ASSERT_EQ(send_value(*ch, v), Status::kOk);
  Status sent = Status::kInterrupted;
  int64_t sent_at = 0;
  std::thread sender([&] {
    auto h = ch->allocate(8, PayloadLayout{}, WaitSpec::nonblocking());
    if (!h.ok()) return;
    uint64_t v = 17;
    std::memcpy(ch->arena()->payload(h.value), &v, sizeof(v));
    sent = ch->send(h.value, waiting(10000, 0));
    sent_at = monotonic_ns();
    if (sent != Status::kOk) ch->arena()->release(h.value);
  });
  const int64_t begun = monotonic_ns();
  while (hdr->not_full.waiters.load() == 0) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const uint32_t seq = hdr->not_full.seq.load();
  const int64_t taken_at = monotonic_ns();
  auto got = recv_value(*ch, WaitSpec::nonblocking());  // one slot, far above the low water (12)
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(hdr->not_full.seq.load(), seq) << "one slot free woke the sender";
  sender.join();
  EXPECT_EQ(sent, Status::kOk);
  EXPECT_LT(sent_at - taken_at, (taken_at - begun) + 200 * kMs) << "the room waited longer than the sender had";
  EXPECT_EQ(ch->queued(), 16u);
}

// ---- Killed receivers (shared memory, fork) ------------------------------------------------

class WakeCrashTest : public BackendTest<ShmFactory> {
 protected:
  void SetUp() override {
    arena_ = make_arena();
    ASSERT_NE(arena_, nullptr);
    arena_->set_sweep_interval(-1);  // no slices: a stall is a stall, not a 200 ms delay
    ch_ = make_channel(arena_);
    ASSERT_NE(ch_, nullptr);
    hdr_ = channel_header(*ch_);
  }

  // Forks a receiver that waits with `spin_ns` and kills it once `in_wait` says it waits.
  template <typename InWait>
  void kill_a_waiting_receiver(int64_t spin_ns, InWait in_wait) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      arena_->reattach_after_fork();
      WaitSpec w;
      w.spin_ns = spin_ns;
      (void)ch_->recv(w);
      ::_exit(3);
    }
    const int64_t end = monotonic_ns() + 5000 * kMs;
    while (!in_wait() && monotonic_ns() < end) std::this_thread::yield();
    EXPECT_TRUE(in_wait()) << "the child never waited";
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(wstatus)) << "child ended with " << wstatus;
  }

  // A receiver of this process sleeps, a message is sent: it must arrive well before the
  // receive's deadline.
  void a_sleeper_still_gets_a_message(uint32_t waiters_before) {
    Result<uint64_t> got{Status::kInterrupted, 0};
    std::thread t([&] { got = recv_value(*ch_, waiting(3000, 0)); });
    ASSERT_TRUE(await_waiters(hdr_->not_empty, waiters_before + 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int64_t t0 = monotonic_ns();
    ASSERT_EQ(send_value(*ch_, 77), Status::kOk);
    t.join();
    EXPECT_EQ(got.status, Status::kOk) << "the sleeper was never woken";
    EXPECT_EQ(got.value, 77u);
    EXPECT_LT(monotonic_ns() - t0, kLostNs) << "the sleeper slept through its wake-up";
  }

  std::shared_ptr<Arena> arena_;
  std::shared_ptr<Channel> ch_;
  ChannelHeader* hdr_ = nullptr;
};

// Killed while spinning (for seconds): its announcement expires within kMaxSpinLease, so the
// next message wakes a sleeper instead of waiting for a spinner that is gone.
TEST_F(WakeCrashTest, ReceiverKilledWhileSpinningDoesNotStallTheOthers) {
  kill_a_waiting_receiver(60000 * kMs, [&] { return hdr_->receivers_spin_until.load() != 0; });
  EXPECT_NE(hdr_->receivers_spin_until.load(), 0) << "the dead spinner's announcement is the case under test";
  std::this_thread::sleep_for(std::chrono::nanoseconds(2 * kMaxSpinLease));
  a_sleeper_still_gets_a_message(0);
  // And again, with the same dead announcement still in the word, many times over.
  for (int i = 0; i < 20; ++i) a_sleeper_still_gets_a_message(0);
}

// Killed while asleep: it stays counted (the count is one too high: senders make a futex call
// that wakes nobody), but a live sleeper is still woken by the next message.
TEST_F(WakeCrashTest, ReceiverKilledWhileSleepingDoesNotStallTheOthers) {
  kill_a_waiting_receiver(0, [&] { return hdr_->not_empty.waiters.load() == 1; });
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const uint32_t stale = hdr_->not_empty.waiters.load();
  EXPECT_EQ(stale, 1u);
  a_sleeper_still_gets_a_message(stale);
  for (int i = 0; i < 20; ++i) a_sleeper_still_gets_a_message(hdr_->not_empty.waiters.load());
  EXPECT_EQ(hdr_->not_empty.waiters.load(), stale) << "the count drifted";
}

// A peer that forges the announcement (far ahead, or the largest value) does not stop the
// wake-ups; neither does a forged huge sleeper count.
TEST_F(WakeCrashTest, ForgedAnnouncementOrCountDoesNotStallASleeper) {
  for (int64_t forged : {monotonic_ns() + 3600000 * kMs, std::numeric_limits<int64_t>::max()}) {
    hdr_->receivers_spin_until.store(forged);
    a_sleeper_still_gets_a_message(0);
  }
  hdr_->receivers_spin_until.store(0);
  hdr_->not_empty.waiters.store(0xfffffff0u);
  a_sleeper_still_gets_a_message(0xfffffff0u);
}

}  // namespace
}  // namespace memchannel::testing
