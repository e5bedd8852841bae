// Small messages inline (core/node.h; docs/design.md, "Small messages inline"): up to
// kInlineBytes of payload travel in their 128-byte queue node, with no data block. Every length
// round-trips; longer is refused; inline and block messages keep one FIFO order, singly and in
// batches; a receiver with no SmallMessage gets a block; forged inline descriptors lose only
// their message; a queue of inline messages costs one node cell each and passes the invariant
// checker; and a sender or receiver killed anywhere in an inline send or receive leaves the arena
// consistent, the messages it had linked delivered, and no block or node leaked.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/crash_points.h"
#include "core/invariants.h"
#include "core/status.h"
#include "tests/cpp/backends.h"
#include "tests/cpp/crash_hook.h"

namespace memchannel::testing {
namespace {

// `n` bytes of a pattern that names (tag, length).
std::vector<uint8_t> pattern(uint64_t tag, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(tag * 31 + i * 7 + n);
  return v;
}

uint64_t tag_of(const uint8_t* p, uint64_t n) {
  uint64_t v = 0;
  std::memcpy(&v, p, n < 8 ? n : 8);
  return v;
}

// A message of 8 bytes naming `value`, inline.
Status send_value_inline(Channel& ch, uint64_t value) { return ch.send_inline(&value, sizeof value, no_wait()); }

// A message naming `value` in a block of `bytes`.
Status send_value_block(Channel& ch, uint64_t value, uint64_t bytes = 200) {
  auto h = ch.allocate(bytes, PayloadLayout{}, no_wait());
  if (!h.ok()) return h.status;
  std::memcpy(ch.arena()->payload(h.value), &value, sizeof value);
  const Status s = ch.send(h.value, no_wait());
  if (s != Status::kOk) ch.arena()->release(h.value);
  return s;
}

// The value of the next message, inline or not; releases its block. kEmpty etc. as status.
Result<uint64_t> recv_value(Channel& ch, bool with_small = true) {
  SmallMessage small;
  auto got = ch.recv(no_wait(), with_small ? &small : nullptr);
  if (!got.ok()) return {got.status, 0};
  if (got.value.ref == 0) return {Status::kOk, tag_of(small.bytes, small.length)};
  uint64_t length = 0;
  const uint8_t* p = ch.arena()->payload(got.value, &length);
  const uint64_t v = p != nullptr ? tag_of(p, length) : ~0ull;
  EXPECT_EQ(ch.arena()->release(got.value), Status::kOk);
  return {Status::kOk, v};
}

template <typename Factory>
class InlineTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(InlineTest, BackendTypes, BackendNames);

TYPED_TEST(InlineTest, EveryLengthUpTo64RoundTripsWithNoBlock) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  for (size_t n = 0; n <= kInlineBytes; ++n) {
    const auto bytes = pattern(n, n);
    ASSERT_EQ(ch->send_inline(bytes.data(), n, no_wait()), Status::kOk) << n;
  }
  EXPECT_EQ(arena->stats().blocks_in_use, 0u) << "inline messages hold no data block";
  EXPECT_EQ(ch->stats().queued, kInlineBytes + 1);
  expect_quiescent_arena(*arena, 0, 1);
  for (size_t n = 0; n <= kInlineBytes; ++n) {
    SmallMessage small;
    auto got = ch->recv(no_wait(), &small);
    ASSERT_EQ(got.status, Status::kOk) << n;
    EXPECT_EQ(got.value.ref, 0u) << "an inline message comes as ref 0";
    ASSERT_EQ(small.length, n);
    if (n != 0) {
      EXPECT_EQ(std::memcmp(small.bytes, pattern(n, n).data(), n), 0) << n;
    }
  }
  EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty);
  const ChannelStats s = ch->stats();
  EXPECT_EQ(s.sent, kInlineBytes + 1);
  EXPECT_EQ(s.received, kInlineBytes + 1);
  expect_quiescent_arena(*arena, 0, 1);
}

TYPED_TEST(InlineTest, LongerThanAnInlineMessageIsRefusedAndNothingQueued) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  const auto bytes = pattern(1, kInlineBytes + 1);
  EXPECT_EQ(ch->send_inline(bytes.data(), bytes.size(), no_wait()), Status::kInvalidArgument);
  const Channel::Outgoing m{BlockHandle{0, 0}, bytes.data(), bytes.size()};
  size_t queued = 7;
  EXPECT_EQ(ch->send_many(&m, 1, no_wait(), &queued), Status::kInvalidArgument);
  EXPECT_EQ(queued, 0u);
  EXPECT_EQ(ch->queued(), 0u);
  expect_quiescent_arena(*arena, 0, 1);
}

TYPED_TEST(InlineTest, InlineAndBlockMessagesKeepOneOrderSinglyAndInBatches) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  uint64_t next = 0;
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ((i % 3 == 0 ? send_value_block(*ch, next) : send_value_inline(*ch, next)), Status::kOk);
    ++next;
  }
  // A batch of 150 (three chains), every third a block.
  std::vector<uint64_t> values;
  std::vector<Channel::Outgoing> batch;
  for (int i = 0; i < 150; ++i) values.push_back(next + i);
  for (int i = 0; i < 150; ++i) {
    if (i % 3 == 1) {
      auto h = ch->allocate(100, PayloadLayout{}, no_wait());
      ASSERT_TRUE(h.ok());
      std::memcpy(arena->payload(h.value), &values[i], 8);
      batch.push_back({h.value, nullptr, 0});
    } else {
      batch.push_back({BlockHandle{0, 0}, &values[i], 8});
    }
  }
  size_t queued = 0;
  ASSERT_EQ(ch->send_many(batch.data(), batch.size(), no_wait(), &queued), Status::kOk);
  EXPECT_EQ(queued, 150u);
  next += 150;
  EXPECT_EQ(arena->stats().blocks_in_use, 4u + 50u) << "only the block messages hold blocks";
  expect_quiescent_arena(*arena, 54, 1);
  // recv_many with slots for inline messages, then the rest one by one without (blocks made).
  std::array<BlockHandle, Channel::kMaxChain> out;
  std::array<SmallMessage, Channel::kMaxChain> smalls;
  uint64_t expect = 0;
  auto r = ch->recv_many(out.data(), out.size(), no_wait(), smalls.data());
  ASSERT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.value, Channel::kMaxChain);
  for (size_t i = 0; i < r.value; ++i) {
    if (out[i].ref == 0) {
      EXPECT_EQ(tag_of(smalls[i].bytes, smalls[i].length), expect++);
    } else {
      uint64_t length = 0;
      EXPECT_EQ(tag_of(arena->payload(out[i], &length), 8), expect++);
      EXPECT_EQ(arena->release(out[i]), Status::kOk);
    }
  }
  for (;;) {
    auto v = recv_value(*ch, /*with_small=*/false);  // inline ones come in blocks made for them
    if (!v.ok()) {
      EXPECT_EQ(v.status, Status::kEmpty);
      break;
    }
    EXPECT_EQ(v.value, expect++);
  }
  EXPECT_EQ(expect, next);
  expect_quiescent_arena(*arena, 0, 1);
}

TYPED_TEST(InlineTest, ForgedInlineDescriptorsLoseOnlyTheirMessage) {
  auto arena = this->make_arena();
  struct Forge {
    const char* what;
    void (*apply)(QueueNode&);
  };
  const Forge forges[] = {
      {"length past the inline bytes", [](QueueNode& n) { n.length.store(kInlineBytes + 1); }},
      {"huge length", [](QueueNode& n) { n.length.store(~0ull); }},
      {"block ref zero without the inline mark", [](QueueNode& n) { n.generation.store(3); }},
  };
  for (const Forge& f : forges) {
    SCOPED_TRACE(f.what);
    auto ch = this->make_channel(arena);
    ASSERT_NE(ch, nullptr);
    for (uint64_t i = 1; i <= 3; ++i) ASSERT_EQ(send_value_inline(*ch, i), Status::kOk);
    const BlockRef d = tagged_ref(channel_header(*ch)->head.load());
    f.apply(*queue_node(*arena, tagged_ref(queue_node(*arena, d)->next.load())));
    const uint64_t before = corruption_count(*arena);
    EXPECT_FALSE(check_invariants(*arena).ok()) << "the census sees the forged descriptor";
    auto two = recv_value(*ch);
    for (int tries = 0; tries < 4 && !two.ok() && is_corruption(two.status); ++tries) two = recv_value(*ch);
    ASSERT_EQ(two.status, Status::kOk);
    EXPECT_EQ(two.value, 2u);
    EXPECT_GT(corruption_count(*arena), before);
    EXPECT_EQ(ch->stats().messages_lost, 1u) << "the forged message is counted lost";
    auto three = recv_value(*ch);
    for (int tries = 0; tries < 4 && !three.ok() && is_corruption(three.status); ++tries) three = recv_value(*ch);
    ASSERT_EQ(three.status, Status::kOk);
    EXPECT_EQ(three.value, 3u);
    EXPECT_EQ(recv_value(*ch).status, Status::kEmpty);
    EXPECT_EQ(ch->queued(), 0u);
  }
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
}

TYPED_TEST(InlineTest, AQueuedInlineMessageCostsOneNodeCell) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  // Warm: the channel's first messages carve what a steady queue reuses.
  const uint64_t carved = arena->stats().carved_bytes;
  constexpr uint64_t kMessages = 10000;
  const auto bytes = pattern(9, kInlineBytes);
  for (uint64_t i = 0; i < kMessages; ++i) ASSERT_EQ(ch->send_inline(bytes.data(), bytes.size(), no_wait()), Status::kOk);
  EXPECT_EQ(arena->stats().carved_bytes - carved, kMessages * kNodeBytes);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(ch->stats().bytes_queued, kMessages * kInlineBytes);
  expect_quiescent_arena(*arena, 0, 1);
  for (uint64_t i = 0; i < kMessages; ++i) ASSERT_TRUE(recv_value(*ch).ok());
  expect_quiescent_arena(*arena, 0, 1);
}

// ---- Killed in the middle of an inline send or receive (fork + SIGKILL at a crash point). ----

// The hook: tests/cpp/crash_hook.h.

constexpr int kNotReached = 3;

// One run: a child sends 5 inline messages one by one, then a batch of 70, or (receiving) takes
// messages the parent queued, and is killed at the `hit`th pass of `target`. Returns whether it
// was killed there.
bool run_inline_crash(CrashPoint target, uint32_t hit, bool receiving) {
  SCOPED_TRACE(std::string(to_string(target)) + " hit " + std::to_string(hit) + (receiving ? " (receiver)" : ""));
  auto created = Arena::create(ShmFactory::make(), 16 * kMiB, 91);
  EXPECT_EQ(created.status, Status::kOk);
  if (!created.ok()) return false;
  auto arena = created.value;
  auto made = Channel::create(arena, 0, 0, 1);
  EXPECT_EQ(made.status, Status::kOk);
  if (!made.ok()) return false;
  auto ch = made.value;
  // Traffic before: nodes on the free list (the child's sends pop them).
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(send_value_inline(*ch, i), Status::kOk);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_TRUE(recv_value(*ch).ok());
  EXPECT_EQ(send_value_inline(*ch, 1000), Status::kOk);  // the parent's, ahead of the child's
  if (receiving) {
    for (uint64_t i = 1; i < 20; ++i) EXPECT_EQ(send_value_inline(*ch, 1000 + i), Status::kOk);
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    arena->reattach_after_fork();
    if (arena->holder() == 0) ::_exit(5);
    g_target.store(static_cast<uint32_t>(target));
    g_hits_left.store(hit);
    set_crash_hook(&kill_at_target);
    if (receiving) {
      for (int i = 0; i < 10; ++i) {
        SmallMessage small;
        if (!ch->recv(no_wait(), &small).ok()) ::_exit(6);
      }
      std::array<BlockHandle, Channel::kMaxChain> out;
      std::array<SmallMessage, Channel::kMaxChain> smalls;
      if (!ch->recv_many(out.data(), out.size(), no_wait(), smalls.data()).ok()) ::_exit(7);
      ::_exit(kNotReached);
    }
    for (uint64_t i = 0; i < 5; ++i) {
      if (send_value_inline(*ch, i) != Status::kOk) ::_exit(6);
    }
    std::vector<uint64_t> values(70);
    std::vector<Channel::Outgoing> batch(70);
    for (size_t i = 0; i < values.size(); ++i) {
      values[i] = 5 + i;
      batch[i] = {BlockHandle{0, 0}, &values[i], 8};
    }
    size_t queued = 0;
    if (ch->send_many(batch.data(), batch.size(), no_wait(), &queued) != Status::kOk) ::_exit(7);
    ::_exit(kNotReached);
  }
  if (!child_killed_at_point(pid, kNotReached)) return false;
  arena->reap_dead_holders();
  // The documented windows of the node free list (docs/design.md, Known weak points): a node
  // popped and not yet claimed; a receive batch's old dummies freed and not yet listed (the
  // child's recv_many takes the 10 messages its single receives left: 10 old dummies).
  const uint64_t lost_nodes = target == CrashPoint::kNodePopped ? 1 : target == CrashPoint::kNodesStashed ? 10 : 0;
  const InvariantReport r = check_invariants(*arena);
  EXPECT_EQ(r.lost_nodes, lost_nodes) << r.describe();
  EXPECT_EQ(r.violations(), lost_nodes) << r.describe();
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  std::vector<uint64_t> got;
  for (;;) {
    auto v = recv_value(*ch);
    if (!v.ok()) {
      EXPECT_EQ(v.status, Status::kEmpty);
      break;
    }
    got.push_back(v.value);
  }
  if (receiving) {
    // What the receiver had not taken is still queued, in order; it took a prefix (at
    // kNodesStashed, after its batch took the rest: all of it).
    EXPECT_EQ(got.empty(), target == CrashPoint::kNodesStashed);
    for (size_t i = 1; i < got.size(); ++i) EXPECT_EQ(got[i], got[i - 1] + 1);
    if (!got.empty()) {
      EXPECT_EQ(got.back(), 1019u);
    }
  } else {
    // The parent's message, then the child's in order, a prefix: every one it linked, and at
    // most the one being linked at the kill... which was linked or not, never half.
    EXPECT_FALSE(got.empty());
    if (!got.empty()) {
      EXPECT_EQ(got[0], 1000u);
    }
    for (size_t i = 1; i < got.size(); ++i) EXPECT_EQ(got[i], i - 1);
  }
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(send_value_inline(*ch, 7), Status::kOk);  // the channel serves on
  auto again = recv_value(*ch);
  EXPECT_TRUE(again.ok() && again.value == 7u);
  const InvariantReport end = check_invariants(*arena);
  EXPECT_EQ(end.violations(), lost_nodes) << end.describe();
  return true;
}

TEST(InlineCrash, AKilledInlineSenderLeavesAPrefixAndNoLeak) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  const CrashPoint points[] = {CrashPoint::kNodePopped,    CrashPoint::kNodeClaimed, CrashPoint::kSendNodeAllocated,
                               CrashPoint::kSendNamed,     CrashPoint::kSendLinked,  CrashPoint::kSendTailSwung,
                               CrashPoint::kSendNotified};
  int runs = 0;
  for (const CrashPoint p : points) {
    // A single send (1st, 3rd), and within the batch's first and second chains.
    const bool per_link = p == CrashPoint::kSendLinked || p == CrashPoint::kSendTailSwung || p == CrashPoint::kSendNotified;
    const std::vector<uint32_t> hits = per_link ? std::vector<uint32_t>{1, 3, 6, 7} : std::vector<uint32_t>{1, 3, 8, 72};
    for (const uint32_t h : hits) {
      EXPECT_TRUE(run_inline_crash(p, h, false)) << to_string(p) << " hit " << h << " not reached";
      ++runs;
    }
  }
  std::printf("inline sender crash runs: %d\n", runs);
}

TEST(InlineCrash, AKilledInlineReceiverLosesOnlyWhatItTook) {  // also covers kNodesStashed
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  // Single receives (hits 1 and 4), and within the receive batch (hit 12): the batch's old
  // dummies are held by the receiver until it lists them, so its reclaimer frees them.
  const CrashPoint points[] = {CrashPoint::kRecvClaimed, CrashPoint::kRecvHeadAdvanced, CrashPoint::kRecvOldHeadFreed};
  for (const CrashPoint p : points) {
    for (const uint32_t h : {1u, 4u, 12u}) {
      EXPECT_TRUE(run_inline_crash(p, h, true)) << to_string(p) << " hit " << h << " not reached";
    }
  }
  // Between freeing the batch's old dummies and listing them: those 10 nodes are lost, no more.
  EXPECT_TRUE(run_inline_crash(CrashPoint::kNodesStashed, 1, true)) << "nodes_stashed not reached";
}

}  // namespace
}  // namespace memchannel::testing
