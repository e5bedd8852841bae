// Batches: Channel::send_many (runs of messages linked as one pre-built chain) and
// Channel::recv_many. Order and counts, bounded channels (the prefix that fits, then a wait),
// close, chains linked while single senders link beside them (a chain is never split by another
// sender's message), and a sender killed anywhere in a batch: each chain is then either all
// queued or all reclaimed, and the arena passes check_invariants().
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/invariants.h"
#include "core/status.h"
#include "tests/cpp/backends.h"
#include "tests/cpp/crash_hook.h"

namespace memchannel::testing {
namespace {

constexpr size_t kChain = Channel::kMaxChain;

uint64_t seq(uint64_t sender, uint64_t i) { return (sender << 32) | i; }

// A block of `bytes` (>= 8) holding `value` in its first 8 bytes, held by the caller.
BlockHandle make_message(Channel& ch, uint64_t value, uint64_t bytes = 8) {
  auto h = ch.allocate(bytes, PayloadLayout{}, no_wait());
  EXPECT_EQ(h.status, Status::kOk);
  if (!h.ok()) return {};
  uint8_t* data = ch.arena()->payload(h.value);
  EXPECT_NE(data, nullptr);
  if (data != nullptr) std::memcpy(data, &value, sizeof value);
  return h.value;
}

std::vector<BlockHandle> make_messages(Channel& ch, uint64_t sender, uint64_t first, size_t n, uint64_t bytes = 8) {
  std::vector<BlockHandle> out;
  for (size_t i = 0; i < n; ++i) out.push_back(make_message(ch, seq(sender, first + i), bytes));
  return out;
}

// The value of a received message; releases it.
uint64_t take_value(Channel& ch, BlockHandle h) {
  uint64_t v = 0;
  const uint8_t* data = ch.arena()->payload(h);
  EXPECT_NE(data, nullptr);
  if (data != nullptr) std::memcpy(&v, data, sizeof v);
  EXPECT_EQ(ch.arena()->release(h), Status::kOk);
  return v;
}

// Everything queued now, by recv_many in batches of `batch`.
std::vector<uint64_t> drain(Channel& ch, size_t batch = kChain) {
  std::vector<uint64_t> out;
  std::vector<BlockHandle> got(batch);
  for (;;) {
    auto r = ch.recv_many(got.data(), batch, no_wait());
    if (!r.ok()) {
      EXPECT_TRUE(r.status == Status::kEmpty || r.status == Status::kClosed) << to_string(r.status);
      return out;
    }
    EXPECT_GE(r.value, 1u);
    EXPECT_LE(r.value, batch);
    for (size_t i = 0; i < r.value; ++i) out.push_back(take_value(ch, got[i]));
  }
}

WaitSpec within_ms(int64_t ms) {
  WaitSpec w;
  w.deadline_ns = monotonic_ns() + ms * 1000000;
  w.spin_ns = 0;
  return w;
}

template <typename Factory>
class BatchTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(BatchTest, BackendTypes, BackendNames);

TYPED_TEST(BatchTest, ChainsKeepOrderAndCounts) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_TRUE(arena && ch);
  // 200 messages: three full chains and a short one; then single sends after them.
  auto blocks = make_messages(*ch, 1, 0, 200);
  size_t queued = 0;
  ASSERT_EQ(ch->send_many(blocks.data(), blocks.size(), no_wait(), &queued), Status::kOk);
  EXPECT_EQ(queued, 200u);
  EXPECT_EQ(ch->queued(), 200u);
  EXPECT_EQ(ch->stats().bytes_queued, 200u * 8);
  BlockHandle one = make_message(*ch, seq(1, 200));
  ASSERT_EQ(ch->send(one, no_wait()), Status::kOk);
  EXPECT_EQ(ch->stats().sent, 201u);
  const InvariantReport mid = check_invariants(*arena);
  EXPECT_TRUE(mid.ok()) << mid.describe();
  const auto got = drain(*ch, 7);  // batches that do not line up with the chains
  ASSERT_EQ(got.size(), 201u);
  for (uint64_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], seq(1, i));
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(ch->stats().received, 201u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  const InvariantReport after = check_invariants(*arena);
  EXPECT_TRUE(after.ok()) << after.describe();
}

TYPED_TEST(BatchTest, RecvManyTakesAtMostMaxAndWaitsOnlyForTheFirst) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_TRUE(arena && ch);
  std::vector<BlockHandle> got(kChain);
  EXPECT_EQ(ch->recv_many(got.data(), kChain, no_wait()).status, Status::kEmpty);
  const int64_t start = monotonic_ns();
  EXPECT_EQ(ch->recv_many(got.data(), kChain, within_ms(100)).status, Status::kEmpty);
  EXPECT_GE(monotonic_ns() - start, 90'000'000);
  EXPECT_EQ(ch->recv_many(got.data(), 0, no_wait()).status, Status::kInvalidArgument);
  auto blocks = make_messages(*ch, 1, 0, 5);
  size_t queued = 0;
  ASSERT_EQ(ch->send_many(blocks.data(), blocks.size(), no_wait(), &queued), Status::kOk);
  auto r = ch->recv_many(got.data(), 3, within_ms(1000));
  ASSERT_EQ(r.status, Status::kOk);
  ASSERT_EQ(r.value, 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(take_value(*ch, got[i]), seq(1, i));
  r = ch->recv_many(got.data(), kChain, within_ms(1000));  // what is there, without waiting for more
  ASSERT_EQ(r.status, Status::kOk);
  ASSERT_EQ(r.value, 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(take_value(*ch, got[i]), seq(1, 3 + i));
  // A receiver waiting for the first message is woken by a batch.
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto later = make_messages(*ch, 2, 0, 10);
    size_t q = 0;
    EXPECT_EQ(ch->send_many(later.data(), later.size(), no_wait(), &q), Status::kOk);
  });
  r = ch->recv_many(got.data(), kChain, within_ms(5000));
  sender.join();
  ASSERT_EQ(r.status, Status::kOk);
  ASSERT_GE(r.value, 1u);
  for (size_t i = 0; i < r.value; ++i) EXPECT_EQ(take_value(*ch, got[i]), seq(2, i));
  const auto rest = drain(*ch);
  EXPECT_EQ(r.value + rest.size(), 10u);
}

TYPED_TEST(BatchTest, BoundedChannelTakesThePrefixThatFitsThenWaits) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena, /*maxsize=*/5);
  ASSERT_TRUE(arena && ch);
  BlockHandle first = make_message(*ch, seq(0, 0));
  ASSERT_EQ(ch->send(first, no_wait()), Status::kOk);  // one queued before the batch
  auto blocks = make_messages(*ch, 1, 0, 8);
  size_t queued = 0;
  EXPECT_EQ(ch->send_many(blocks.data(), blocks.size(), no_wait(), &queued), Status::kFull);
  EXPECT_EQ(queued, 4u);  // 1 + 4 = the bound
  EXPECT_EQ(ch->queued(), 5u);
  // The rest are still the caller's: sent later, they follow in order.
  size_t more = 0;
  std::thread receiver([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::vector<BlockHandle> got(2);
    for (int taken = 0; taken < 4;) {
      auto r = ch->recv_many(got.data(), 2, within_ms(5000));
      ASSERT_EQ(r.status, Status::kOk);
      for (size_t i = 0; i < r.value; ++i) take_value(*ch, got[i]);
      taken += static_cast<int>(r.value);
    }
  });
  EXPECT_EQ(ch->send_many(blocks.data() + queued, blocks.size() - queued, within_ms(5000), &more), Status::kOk);
  receiver.join();
  EXPECT_EQ(more, 4u);
  const auto got = drain(*ch);
  ASSERT_EQ(ch->queued(), 0u);
  // 4 were taken by the thread (the first and seq(1, 0..2)); the rest in order.
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], seq(1, 3 + i));
  // A byte bound: 100 bytes of 30-byte messages take 3 (an empty channel takes one of any size).
  auto bytes_ch = this->make_channel(arena, 0, /*maxbytes=*/100);
  auto sized = make_messages(*bytes_ch, 3, 0, 5, 30);
  EXPECT_EQ(bytes_ch->send_many(sized.data(), sized.size(), no_wait(), &queued), Status::kFull);
  EXPECT_EQ(queued, 3u);
  for (size_t i = queued; i < sized.size(); ++i) EXPECT_EQ(arena->release(sized[i]), Status::kOk);
  EXPECT_EQ(drain(*bytes_ch).size(), 3u);
  auto big = make_messages(*bytes_ch, 4, 0, 2, 500);
  EXPECT_EQ(bytes_ch->send_many(big.data(), big.size(), no_wait(), &queued), Status::kFull);
  EXPECT_EQ(queued, 1u);
  EXPECT_EQ(arena->release(big[1]), Status::kOk);
  EXPECT_EQ(drain(*bytes_ch).size(), 1u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  const InvariantReport r = check_invariants(*arena);
  EXPECT_TRUE(r.ok()) << r.describe();
}

TYPED_TEST(BatchTest, TimeoutAndCloseMidBatchLeaveTheRestWithTheCaller) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena, /*maxsize=*/3);
  ASSERT_TRUE(arena && ch);
  auto blocks = make_messages(*ch, 1, 0, 6);
  size_t queued = 0;
  EXPECT_EQ(ch->send_many(blocks.data(), blocks.size(), within_ms(50), &queued), Status::kFull);
  EXPECT_EQ(queued, 3u);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ch->close();
  });
  size_t more = 0;
  EXPECT_EQ(ch->send_many(blocks.data() + 3, 3, within_ms(5000), &more), Status::kClosed);
  closer.join();
  EXPECT_EQ(more, 0u);
  for (size_t i = 3; i < 6; ++i) EXPECT_EQ(arena->release(blocks[i]), Status::kOk);  // still ours
  const auto got = drain(*ch);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i], seq(1, i));
  std::vector<BlockHandle> out(4);
  EXPECT_EQ(ch->recv_many(out.data(), 4, no_wait()).status, Status::kClosed);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  // A bad handle in the middle: the prefix before it is queued, the rest stays the caller's.
  auto open = this->make_channel(arena);
  auto mixed = make_messages(*open, 2, 0, 4);
  const BlockHandle good = mixed[2];
  mixed[2].generation ^= 1;  // stale
  EXPECT_NE(open->send_many(mixed.data(), mixed.size(), no_wait(), &queued), Status::kOk);
  EXPECT_EQ(queued, 2u);
  EXPECT_EQ(arena->release(good), Status::kOk);
  EXPECT_EQ(arena->release(mixed[3]), Status::kOk);
  EXPECT_EQ(drain(*open).size(), 2u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
}

// Batch senders and single senders link into one queue at once; one receiver mixes recv_many
// and recv. Every message arrives once, in order per sender, and each chain arrives unbroken
// (no other sender's message inside it).
TYPED_TEST(BatchTest, ChainsLinkWhileSingleSendersLinkBeside) {
  auto arena = this->make_arena(256 * kMiB);
  auto ch = this->make_channel(arena);
  ASSERT_TRUE(arena && ch);
  constexpr int kBatchSenders = 2, kSingleSenders = 2;
  constexpr uint64_t kChainsEach = 60, kSinglesEach = 3000;
  constexpr uint64_t kTotal = kBatchSenders * kChainsEach * kChain + kSingleSenders * kSinglesEach;
  std::vector<std::thread> threads;
  for (int s = 0; s < kBatchSenders; ++s) {
    threads.emplace_back([&, s] {
      const uint64_t id = 10 + s;
      for (uint64_t c = 0; c < kChainsEach; ++c) {
        auto blocks = make_messages(*ch, id, c * kChain, kChain);
        size_t queued = 0;
        EXPECT_EQ(ch->send_many(blocks.data(), blocks.size(), within_ms(10000), &queued), Status::kOk);
      }
    });
  }
  for (int s = 0; s < kSingleSenders; ++s) {
    threads.emplace_back([&, s] {
      const uint64_t id = 20 + s;
      for (uint64_t i = 0; i < kSinglesEach; ++i) {
        BlockHandle h = make_message(*ch, seq(id, i));
        EXPECT_EQ(ch->send(h, within_ms(10000)), Status::kOk);
      }
    });
  }
  std::vector<uint64_t> got;
  std::vector<BlockHandle> handles(kChain);
  const int64_t give_up = monotonic_ns() + 60'000'000'000;
  while (got.size() < kTotal && monotonic_ns() < give_up) {
    if (got.size() % 3 == 0) {
      auto one = ch->recv(within_ms(100));
      if (one.ok()) got.push_back(take_value(*ch, one.value));
      continue;
    }
    auto r = ch->recv_many(handles.data(), 1 + got.size() % kChain, within_ms(100));
    if (!r.ok()) continue;
    for (size_t i = 0; i < r.value; ++i) got.push_back(take_value(*ch, handles[i]));
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(got.size(), kTotal);
  std::map<uint64_t, uint64_t> next;
  for (size_t i = 0; i < got.size(); ++i) {
    const uint64_t sender = got[i] >> 32, n = got[i] & 0xffffffffu;
    EXPECT_EQ(n, next[sender]) << "sender " << sender;
    next[sender] = n + 1;
    if (sender >= 10 && sender < 20 && n % kChain == 0) {
      // The start of a chain: its other messages follow at once.
      ASSERT_LE(i + kChain, got.size());
      for (size_t j = 1; j < kChain; ++j) ASSERT_EQ(got[i + j], got[i] + j) << "a chain was split";
    }
  }
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  const InvariantReport r = check_invariants(*arena);
  EXPECT_TRUE(r.ok()) << r.describe();
}

// Two receivers take batches while two batch senders and one single sender send: each message
// is received exactly once, and each receiver sees every sender's messages in order.
TYPED_TEST(BatchTest, ReceiveBatchesRaceForTheSameQueue) {
  auto arena = this->make_arena(256 * kMiB);
  auto ch = this->make_channel(arena, /*maxsize=*/100);
  ASSERT_TRUE(arena && ch);
  constexpr uint64_t kChainsEach = 40, kSingles = 2000;
  constexpr uint64_t kTotal = 2 * kChainsEach * kChain + kSingles;
  std::vector<std::thread> senders;
  for (uint64_t id : {10u, 11u}) {
    senders.emplace_back([&, id] {
      for (uint64_t c = 0; c < kChainsEach; ++c) {
        auto blocks = make_messages(*ch, id, c * kChain, kChain);
        size_t queued = 0;
        EXPECT_EQ(ch->send_many(blocks.data(), blocks.size(), within_ms(20000), &queued), Status::kOk);
      }
    });
  }
  senders.emplace_back([&] {
    for (uint64_t i = 0; i < kSingles; ++i) {
      BlockHandle h = make_message(*ch, seq(20, i));
      EXPECT_EQ(ch->send(h, within_ms(20000)), Status::kOk);
    }
  });
  std::atomic<uint64_t> received{0};
  std::vector<uint64_t> got[2];
  std::vector<std::thread> receivers;
  for (int r = 0; r < 2; ++r) {
    receivers.emplace_back([&, r] {
      std::vector<BlockHandle> handles(kChain);
      const int64_t give_up = monotonic_ns() + 60'000'000'000;
      while (received.load() < kTotal && monotonic_ns() < give_up) {
        auto taken = ch->recv_many(handles.data(), 1 + (got[r].size() * 7) % kChain, within_ms(50));
        if (!taken.ok()) continue;
        for (size_t i = 0; i < taken.value; ++i) got[r].push_back(take_value(*ch, handles[i]));
        received.fetch_add(taken.value);
      }
    });
  }
  for (auto& t : senders) t.join();
  for (auto& t : receivers) t.join();
  std::set<uint64_t> all;
  for (const auto& g : got) {
    std::map<uint64_t, uint64_t> last;
    for (uint64_t v : g) {
      EXPECT_TRUE(all.insert(v).second) << "received twice: " << std::hex << v;
      const uint64_t sender = v >> 32;
      if (last.count(sender) != 0) {
        EXPECT_LT(last[sender], v) << "out of order";
      }
      last[sender] = v;
    }
  }
  EXPECT_EQ(all.size(), kTotal);
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  const InvariantReport report = check_invariants(*arena);
  EXPECT_TRUE(report.ok()) << report.describe();
}

// ---- A sender killed in the middle of a batch (shm, forked children) ---------------------------

// The hook: tests/cpp/crash_hook.h.

constexpr int kNotReached = 3;
constexpr uint64_t kChildSender = 2;

// One run: a child sends two chains (2 x kChain messages) and is killed at the `hit`th pass of
// `target`. Returns whether it was killed there.
bool run_batch_crash(CrashPoint target, uint32_t hit, uint64_t maxsize) {
  const std::string what = std::string(to_string(target)) + " (hit " + std::to_string(hit) + ", maxsize " +
                           std::to_string(maxsize) + ")";
  SCOPED_TRACE(what);
  auto created = Arena::create(ShmFactory::make(), 16 * kMiB, 77);
  EXPECT_EQ(created.status, Status::kOk);
  if (!created.ok()) return false;
  auto arena = created.value;
  auto ch_made = Channel::create(arena, maxsize, 0, 1);
  EXPECT_EQ(ch_made.status, Status::kOk);
  if (!ch_made.ok()) return false;
  auto ch = ch_made.value;
  // Traffic before: free lists with blocks and nodes on them (the child's allocations pop them),
  // and a message of the parent's queued ahead of the batch.
  {
    auto warm = make_messages(*ch, 1, 1000, maxsize != 0 ? maxsize : 3 * kChain);
    size_t queued = 0;
    EXPECT_EQ(ch->send_many(warm.data(), warm.size(), no_wait(), &queued), Status::kOk);
    EXPECT_EQ(drain(*ch).size(), warm.size());
  }
  BlockHandle before = make_message(*ch, seq(1, 0));
  EXPECT_EQ(ch->send(before, no_wait()), Status::kOk);

  const pid_t pid = ::fork();
  if (pid == 0) {
    arena->reattach_after_fork();
    if (arena->holder() == 0) ::_exit(5);
    auto blocks = make_messages(*ch, kChildSender, 0, 2 * kChain);
    g_target.store(static_cast<uint32_t>(target));
    g_hits_left.store(hit);
    set_crash_hook(&kill_at_target);
    size_t queued = 0;
    const Status s = ch->send_many(blocks.data(), blocks.size(), no_wait(), &queued);
    if (s != Status::kOk && s != Status::kFull) ::_exit(6);
    ::_exit(kNotReached);
  }
  if (!child_killed_at_point(pid, kNotReached)) return false;
  arena->reap_dead_holders();
  const InvariantReport r = check_invariants(*arena);
  // The documented windows of the node free list (docs/design.md, Known weak points).
  const uint64_t lost_nodes = target == CrashPoint::kNodePopped ? 1 : 0;
  EXPECT_EQ(r.lost_nodes, lost_nodes) << r.describe();
  EXPECT_EQ(r.violations(), lost_nodes) << r.describe();
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  const auto got = drain(*ch);
  // The parent's message, then whole chains of the child's, in order.
  EXPECT_FALSE(got.empty());
  if (!got.empty()) {
    EXPECT_EQ(got[0], seq(1, 0));
  }
  const size_t child = got.empty() ? 0 : got.size() - 1;
  const size_t chain = maxsize != 0 ? std::min<size_t>(kChain, maxsize - 1) : kChain;  // what one link took
  EXPECT_EQ(child % chain, 0u) << child << " of the child's messages: a chain was split";
  for (size_t i = 0; i < child; ++i) EXPECT_EQ(got[1 + i], seq(kChildSender, i));
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  // The channel serves on: a batch after the crash.
  auto blocks = make_messages(*ch, 1, 1, 3);
  size_t queued = 0;
  EXPECT_EQ(ch->send_many(blocks.data(), blocks.size(), no_wait(), &queued), Status::kOk);
  const auto again = drain(*ch);
  EXPECT_EQ(again.size(), 3u);
  const InvariantReport end = check_invariants(*arena);
  EXPECT_EQ(end.violations(), lost_nodes) << end.describe();
  return true;
}

TEST(BatchCrash, EachChainIsAllQueuedOrAllReclaimed) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  const CrashPoint points[] = {CrashPoint::kNodePopped,         CrashPoint::kNodeClaimed,
                               CrashPoint::kSendNodeAllocated, CrashPoint::kSendNamed,
                               CrashPoint::kSendMarkedSending, CrashPoint::kSendLinked,
                               CrashPoint::kSendTailSwung,     CrashPoint::kSendMarkedQueued,
                               CrashPoint::kSendNotified};
  int runs = 0;
  for (const CrashPoint p : points) {
    // The first message of the first chain, one in its middle, and one in the second chain.
    for (const uint32_t hit : {1u, 5u, static_cast<uint32_t>(kChain) + 3}) {
      // Unbounded, and a bound of 33 with one message queued: the first link takes 32 of the
      // first chain, and the non-blocking batch stops there (Full).
      for (const uint64_t maxsize : {uint64_t{0}, uint64_t{33}}) {
        const bool per_message = p != CrashPoint::kSendLinked && p != CrashPoint::kSendTailSwung &&
                                 p != CrashPoint::kSendMarkedQueued && p != CrashPoint::kSendNotified;
        // Points passed once per link are met at its 1st and 2nd hits (unbounded: two links).
        const uint32_t h = per_message ? hit : (hit == 1 ? 1u : 2u);
        if (!per_message && hit == 5) continue;
        if (maxsize != 0 && h > (per_message ? 5u : 1u)) continue;  // the bounded batch ends sooner
        EXPECT_TRUE(run_batch_crash(p, h, maxsize)) << to_string(p) << " hit " << h << " not reached";
        ++runs;
      }
    }
  }
  std::printf("batch crash runs: %d\n", runs);
}

}  // namespace
}  // namespace memchannel::testing
