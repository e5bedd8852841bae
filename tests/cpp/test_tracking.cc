// Release tracking and shares (core/tracking.cc, core/shares.cc; memchannel.Tracker and
// memchannel.share).
//
// Part of test_crash_points (tests/cpp/CMakeLists.txt), with the crash points of both.
//
// Tracking: a tracked message's tracking ends
// exactly when its block is next freed, by whichever party frees it: a receiver's release, the
// last receiver of a forwarded message, the reaper of a receiver that died holding it, the
// drop of a closed channel; and a crash of the freer between ending the tracking and freeing
// the block (CrashPoint::kReleaseTrackingEnded) leaves a consistent arena.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <thread>
#include <vector>

#include "core/fd_wait.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

template <typename Factory>
class TrackingTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(TrackingTest, BackendTypes, BackendNames);

BlockHandle allocate(Arena& a, uint64_t n = 100) {
  auto got = a.allocate(n, PayloadLayout{});
  EXPECT_EQ(got.status, Status::kOk);
  return got.value;
}

TYPED_TEST(TrackingTest, EndsWhenTheReceiverReleasesNotBefore) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  const BlockHandle b = allocate(*arena);
  auto t = arena->track_block(b);
  ASSERT_EQ(t.status, Status::kOk);
  EXPECT_EQ(t.value & 1u, 1u);
  ASSERT_EQ(ch->send(b, no_wait()), Status::kOk);
  EXPECT_FALSE(arena->tracking_ended(b.ref, t.value)) << "queued";
  EXPECT_EQ(arena->wait_tracking(b.ref, t.value, within(0.05)), Status::kTimedOut);
  auto got = ch->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_FALSE(arena->tracking_ended(b.ref, t.value)) << "held by the receiver";
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(arena->release(got.value), Status::kOk);
  });
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return arena->wait_tracking(b.ref, t.value, w); }, 5), Status::kOk);
  releaser.join();
  EXPECT_TRUE(arena->tracking_ended(b.ref, t.value));
  expect_quiescent_arena(*arena, 0, 1);
}

TYPED_TEST(TrackingTest, AForwardedMessageEndsAtItsLastRelease) {
  auto arena = this->make_arena();
  auto first = this->make_channel(arena);
  auto second = this->make_channel(arena);
  const BlockHandle b = allocate(*arena);
  const uint32_t ticket = arena->track_block(b).value;
  ASSERT_EQ(first->send(b, no_wait()), Status::kOk);
  auto got = first->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  ASSERT_EQ(second->send(got.value, no_wait()), Status::kOk);  // forwarded: the message moves
  EXPECT_FALSE(arena->tracking_ended(b.ref, ticket));
  auto last = second->recv(no_wait());
  ASSERT_EQ(last.status, Status::kOk);
  EXPECT_FALSE(arena->tracking_ended(b.ref, ticket));
  EXPECT_EQ(arena->release(last.value), Status::kOk);
  EXPECT_TRUE(arena->tracking_ended(b.ref, ticket));
}

TYPED_TEST(TrackingTest, AReusedBlockKeepsAnOldTrackerDone) {
  auto arena = this->make_arena();
  const BlockHandle b = allocate(*arena);
  const uint32_t old_ticket = arena->track_block(b).value;
  EXPECT_EQ(arena->release(b), Status::kOk);
  EXPECT_TRUE(arena->tracking_ended(b.ref, old_ticket));
  const BlockHandle again = allocate(*arena);
  ASSERT_EQ(again.ref, b.ref) << "the free list hands the same block back";
  const uint32_t new_ticket = arena->track_block(again).value;
  EXPECT_NE(new_ticket, old_ticket);
  EXPECT_TRUE(arena->tracking_ended(b.ref, old_ticket));
  EXPECT_FALSE(arena->tracking_ended(again.ref, new_ticket));
  EXPECT_EQ(arena->release(again), Status::kOk);
}

TYPED_TEST(TrackingTest, OnlyTheOwnerTracksAndUntrackedFreesStayUntracked) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  const BlockHandle b = allocate(*arena);
  ASSERT_EQ(ch->send(b, no_wait()), Status::kOk);
  EXPECT_EQ(arena->track_block(b).status, Status::kCorruptedState) << "a queued block is the queue's";
  auto got = ch->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(block_header(*arena, got.value.ref)->track.load() & 1u, 0u);
  EXPECT_EQ(arena->release(got.value), Status::kOk);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

TYPED_TEST(TrackingTest, AnArmedListenerGetsTheBlocksEvent) {
  auto arena = this->make_arena();
  auto sock = WaitSocket::open();
  ASSERT_EQ(sock.status, Status::kOk);
  const BlockHandle b = allocate(*arena);
  const uint32_t ticket = arena->track_block(b).value;
  EXPECT_FALSE(arena->arm_tracking(b.ref, ticket, sock.value->key()));
  EXPECT_EQ(sock.value->wait(0), Status::kTimedOut);
  EXPECT_EQ(arena->release(b), Status::kOk);
  ASSERT_EQ(sock.value->wait(5'000'000'000), Status::kOk);
  FdEvent ev[4];
  bool more = false;
  ASSERT_EQ(sock.value->drain(ev, 4, &more), 1);
  EXPECT_EQ(ev[0].arena_id, arena->arena_id());
  EXPECT_EQ(ev[0].offset, ref_to_offset(b.ref));
  EXPECT_TRUE(arena->arm_tracking(b.ref, ticket, sock.value->key())) << "ended: arming says so";
}

TYPED_TEST(TrackingTest, AClosedChannelsDropEndsIt) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  const BlockHandle b = allocate(*arena);
  const uint32_t ticket = arena->track_block(b).value;
  ASSERT_EQ(ch->send(b, no_wait()), Status::kOk);
  ch->close();
  ch.reset();  // the last Channel object drains and frees the header
  EXPECT_TRUE(arena->tracking_ended(b.ref, ticket));
  expect_quiescent_arena(*arena, 0, 0);
}

// ---- Shares ----------------------------------------------------------------------------------

// The status of one pool_reserve (its block, if any, stays out).
Status status_of_reserve(Arena& arena, Offset pool, const WaitSpec& w) {
  return arena.pool_reserve(pool, w).status;
}

template <typename Factory>
class SharesTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(SharesTest, BackendTypes, BackendNames);

BlockHandle filled(Arena& a, uint64_t n = 256) {
  BlockHandle b = allocate(a, n);
  uint8_t* p = a.payload(b);
  for (uint64_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(i);
  return b;
}

TYPED_TEST(SharesTest, EveryTokenViewsTheBlockReadOnlyAndTheLastFreesIt) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  const BlockHandle b = filled(*arena);
  const uint8_t* data = arena->payload(b);
  auto tokens = arena->share(b, 3);
  ASSERT_EQ(tokens.status, Status::kOk);
  ASSERT_EQ(tokens.value.size(), 3u);
  EXPECT_EQ(arena->census().shared, 1u);
  for (BlockHandle t : tokens.value) ASSERT_EQ(ch->send(t, no_wait()), Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 1u) << "tokens count as queue nodes, not blocks";
  {
    const InvariantReport r = check_invariants(*arena);
    EXPECT_TRUE(r.ok()) << r.describe();
  }
  std::vector<BlockHandle> got;
  for (int i = 0; i < 3; ++i) {
    auto r = ch->recv(no_wait());
    ASSERT_EQ(r.status, Status::kOk);
    auto v = arena->view(r.value);
    ASSERT_EQ(v.status, Status::kOk);
    EXPECT_TRUE(v.value.readonly);
    EXPECT_EQ(v.value.data, data) << "the same memory";
    EXPECT_EQ(v.value.length, 256u);
    got.push_back(r.value);
  }
  EXPECT_EQ(arena->release(got[0]), Status::kOk);
  EXPECT_EQ(arena->release(got[1]), Status::kOk);
  EXPECT_EQ(arena->census().shared, 1u) << "one share still out";
  EXPECT_EQ(arena->release(got[2]), Status::kOk);
  EXPECT_EQ(arena->census().shared, 0u);
  expect_quiescent_arena(*arena, 0, 1);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

TYPED_TEST(SharesTest, SharingAgainReplacesTheTokensShareAndIndicesRunOut) {
  auto arena = this->make_arena();
  const BlockHandle b = filled(*arena);
  auto first = arena->share(b, 40);
  ASSERT_EQ(first.status, Status::kOk);
  std::vector<BlockHandle> held = first.value;
  const BlockHandle last = held.back();
  held.pop_back();
  auto again = arena->share(last, 2);  // indices 40 and 41; `last` is freed
  ASSERT_EQ(again.status, Status::kOk);
  EXPECT_EQ(arena->view(last).status, Status::kCorruptedState) << "the old token is gone";
  held.insert(held.end(), again.value.begin(), again.value.end());
  EXPECT_EQ(arena->share(held.back(), 1).status, Status::kInvalidArgument) << "42 indices used";
  EXPECT_EQ(arena->view(held.back()).status, Status::kOk) << "a refused share keeps the token";
  for (BlockHandle t : held) EXPECT_EQ(arena->release(t), Status::kOk);
  EXPECT_EQ(arena->census().shared, 0u);
  expect_quiescent_arena(*arena, 0, 0);
}

TYPED_TEST(SharesTest, AForgedTokenIsCorruptionNeverAView) {
  auto arena = this->make_arena();
  const BlockHandle b = filled(*arena);
  auto tokens = arena->share(b, 2);
  ASSERT_EQ(tokens.status, Status::kOk);
  // The token's own payload (payload() of a token is the shared block's, as its Buffers see).
  BlockHeader* token = block_header(*arena, tokens.value[0].ref);
  ASSERT_NE(token, nullptr);
  auto* forged = reinterpret_cast<ShareToken*>(reinterpret_cast<uint8_t*>(token) + sizeof(BlockHeader));
  const ShareToken honest = *forged;
  for (int mode = 0; mode < 4; ++mode) {
    *forged = honest;
    if (mode == 0) forged->magic ^= 1;
    if (mode == 1) forged->index = 41;  // a bit nobody holds
    if (mode == 2) forged->generation ^= 1;
    if (mode == 3) forged->shared = ref_past_segment0(*arena);
    EXPECT_EQ(arena->view(tokens.value[0]).status, Status::kCorruptedState) << "mode " << mode;
  }
  *forged = honest;
  EXPECT_EQ(arena->view(tokens.value[0]).status, Status::kOk);
  EXPECT_EQ(arena->release(tokens.value[0]), Status::kOk);
  EXPECT_EQ(arena->release(tokens.value[1]), Status::kOk);
  expect_quiescent_arena(*arena, 0, 0);
}

// ---- Buffer pools ------------------------------------------------------------------------------

template <typename Factory>
class PoolsTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(PoolsTest, BackendTypes, BackendNames);

TYPED_TEST(PoolsTest, BlocksComeBackToThePoolUntilItCloses) {
  auto arena = this->make_arena();
  auto ch = this->make_channel(arena);
  const BlockHandle proto = allocate(*arena, 5000);
  auto pool = arena->create_pool(proto, 3);
  ASSERT_EQ(pool.status, Status::kOk);
  EXPECT_EQ(arena->pool_count(pool.value), 3u);
  EXPECT_EQ(arena->pool_idle(pool.value), 3u);
  EXPECT_EQ(arena->census().pooled, 3u);
  {
    const InvariantReport r = check_invariants(*arena);  // idle pool blocks count as in use
    EXPECT_TRUE(r.ok()) << r.describe();
  }
  std::vector<BlockHandle> out;
  for (int i = 0; i < 3; ++i) {
    auto b = arena->pool_reserve(pool.value, no_wait());
    ASSERT_EQ(b.status, Status::kOk);
    EXPECT_EQ(arena->view(b.value).value.length, 5000u) << "the prototype's layout";
    out.push_back(b.value);
  }
  EXPECT_EQ(arena->pool_reserve(pool.value, no_wait()).status, Status::kEmpty);
  EXPECT_EQ(arena->pool_reserve(pool.value, within(0.05)).status, Status::kEmpty);
  ASSERT_EQ(ch->send(out[0], no_wait()), Status::kOk);
  auto got = ch->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(arena->release(got.value), Status::kOk);  // sent and received: still the pool's
  EXPECT_EQ(arena->pool_idle(pool.value), 1u);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(arena->release(out[1]), Status::kOk);
  });
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return status_of_reserve(*arena, pool.value, w); }, 5), Status::kOk);
  releaser.join();
  arena->pool_close(pool.value);
  EXPECT_EQ(arena->pool_reserve(pool.value, no_wait()).status, Status::kClosed);
  EXPECT_EQ(arena->census().pooled, 0u) << "idle blocks went back to the arena";
  EXPECT_EQ(arena->release(out[2]), Status::kOk);
  EXPECT_EQ(arena->pool_count(pool.value), 1u) << "the block reserved by the wait is still out";
  expect_quiescent_arena(*arena, 1, 2);  // that block; the channel header and the pool's cell
}

// ---- Crashes (shm: a forked child is another holder) ------------------------------------------

class TrackingCrash : public BackendTest<ShmFactory> {};

std::atomic<uint32_t> g_point{0};
void kill_here(CrashPoint p) {
  if (static_cast<uint32_t>(p) == g_point.load(std::memory_order_relaxed)) {
    ::kill(::getpid(), SIGKILL);
    ::_exit(99);
  }
}

// A child receives the tracked message and, with `point` set, releases it (killed there), or
// without one dies holding it. Returns true if it was SIGKILLed.
bool child_receives_and_dies(Arena& arena, Channel& ch, bool release_it) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    arena.reattach_after_fork();
    ch.reattach_after_fork();
    auto got = ch.recv(within(5));
    if (!got.ok()) ::_exit(3);
    if (release_it) {
      g_point.store(static_cast<uint32_t>(CrashPoint::kReleaseTrackingEnded));
      set_crash_hook(kill_here);
      (void)arena.release(got.value);
      ::_exit(4);  // the crash point was not reached
    }
    ::kill(::getpid(), SIGKILL);
    ::_exit(99);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

TEST_F(TrackingCrash, AFreerKilledBetweenEndingAndFreeingLeavesNothingBehind) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto arena = make_arena();
  auto ch = make_channel(arena);
  const BlockHandle b = allocate(*arena);
  const uint32_t ticket = arena->track_block(b).value;
  ASSERT_EQ(ch->send(b, no_wait()), Status::kOk);
  ASSERT_TRUE(child_receives_and_dies(*arena, *ch, true));
  EXPECT_TRUE(arena->tracking_ended(b.ref, ticket)) << "ended before the child died";
  arena->reap_dead_holders();  // the block the dead child held is freed
  expect_quiescent_arena(*arena, 0, 1);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

TEST_F(TrackingCrash, AReceiverKilledHoldingItEndsItWhenReaped) {
  auto arena = make_arena();
  auto ch = make_channel(arena);
  const BlockHandle b = allocate(*arena);
  const uint32_t ticket = arena->track_block(b).value;
  ASSERT_EQ(ch->send(b, no_wait()), Status::kOk);
  ASSERT_TRUE(child_receives_and_dies(*arena, *ch, false));
  EXPECT_FALSE(arena->tracking_ended(b.ref, ticket)) << "held by a dead, unreaped holder";
  // The wait itself sweeps for dead holders (Arena::maybe_reap): no explicit reap.
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return arena->wait_tracking(b.ref, ticket, w); }, 5), Status::kOk);
  expect_quiescent_arena(*arena, 0, 1);
}

// A child that attaches and runs `body` with the crash hook aimed at `point`; true if killed there.
template <typename Body>
bool child_killed_at(Arena& arena, Channel& ch, CrashPoint point, Body&& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    arena.reattach_after_fork();
    ch.reattach_after_fork();
    g_point.store(static_cast<uint32_t>(point));
    set_crash_hook(kill_here);
    body();
    ::_exit(4);  // the crash point was not reached
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

TEST_F(TrackingCrash, ASharerKilledBeforeTheBlockIsSharedLeavesNothing) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto arena = make_arena();
  auto ch = make_channel(arena);
  ASSERT_TRUE(child_killed_at(*arena, *ch, CrashPoint::kShareTokensReady, [&] {
    (void)arena->share(filled(*arena), 3);
  }));
  arena->reap_dead_holders();  // its block and its three tokens are the dead child's
  EXPECT_EQ(arena->census().shared, 0u);
  expect_quiescent_arena(*arena, 0, 1);
}

TEST_F(TrackingCrash, AReleaserKilledAfterDroppingTheLastShareLeavesNothing) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  for (const uint32_t n : {1u, 2u}) {
    SCOPED_TRACE(n == 1 ? "the last share" : "one of two shares");
    auto arena = make_arena();
    auto ch = make_channel(arena);
    auto tokens = arena->share(filled(*arena), n);
    ASSERT_EQ(tokens.status, Status::kOk);
    ASSERT_EQ(ch->send(tokens.value[0], no_wait()), Status::kOk);
    ASSERT_TRUE(child_killed_at(*arena, *ch, CrashPoint::kShareBitDropped, [&] {
      auto got = ch->recv(within(5));
      if (got.ok()) (void)arena->release(got.value);
    }));
    arena->reap_dead_holders();  // the dead child's token is freed; its share dropped again: no-op
    if (n == 2) {
      EXPECT_EQ(arena->census().shared, 1u);
      EXPECT_EQ(arena->release(tokens.value[1]), Status::kOk);
    }
    EXPECT_EQ(arena->census().shared, 0u);
    expect_quiescent_arena(*arena, 0, 1);
    EXPECT_EQ(corruption_count(*arena), 0u);
  }
}

TEST_F(TrackingCrash, AReSharerKilledBetweenClaimingAndFlaggingLeaksTheBlockExactly) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto arena = make_arena();
  auto ch = make_channel(arena);
  auto tokens = arena->share(filled(*arena), 1);
  ASSERT_EQ(tokens.status, Status::kOk);
  ASSERT_EQ(ch->send(tokens.value[0], no_wait()), Status::kOk);
  ASSERT_TRUE(child_killed_at(*arena, *ch, CrashPoint::kShareIndicesClaimed, [&] {
    auto got = ch->recv(within(5));
    if (got.ok()) (void)arena->share(got.value, 2);
  }));
  arena->reap_dead_holders();
  // The documented leak window (core/shares.cc): the two new tokens were still plain blocks, so
  // the reaper freed them without dropping their shares, and the block stays shared: exactly
  // one block, nothing else.
  const ArenaCensus c = arena->census();
  EXPECT_EQ(c.shared, 1u);
  EXPECT_EQ(c.reserved + c.sending + c.queued + c.received, 0u);
  EXPECT_TRUE(c.free_lists_consistent);
  EXPECT_EQ(c.free_blocks, c.free_listed);
}

// The pools' two windows are the free list's (core/pools.cc): killed between popping and
// claiming, or between marking a returning block free and pushing it, the pool loses exactly that
// one block (kFree, on no list, still flagged as the pool's); the others still come and go.
TEST_F(TrackingCrash, APoolLosesExactlyTheOneBlockAKilledHolderHadOffItsList) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  for (const CrashPoint point : {CrashPoint::kPoolPopped, CrashPoint::kPoolMarkedFree}) {
    SCOPED_TRACE(to_string(point));
    auto arena = make_arena();
    auto ch = make_channel(arena);
    auto pool = arena->create_pool(allocate(*arena, 1000), 3);
    ASSERT_EQ(pool.status, Status::kOk);
    ASSERT_TRUE(child_killed_at(*arena, *ch, point, [&] {
      auto b = arena->pool_reserve(pool.value, no_wait());
      if (b.ok()) (void)arena->release(b.value);
    }));
    arena->reap_dead_holders();
    EXPECT_EQ(arena->pool_idle(pool.value), 2u) << "one block lost to the pool, the others idle";
    for (int round = 0; round < 4; ++round) {  // the pool still works with what it has
      auto a = arena->pool_reserve(pool.value, no_wait());
      auto b = arena->pool_reserve(pool.value, no_wait());
      ASSERT_EQ(a.status, Status::kOk);
      ASSERT_EQ(b.status, Status::kOk);
      EXPECT_EQ(arena->pool_reserve(pool.value, no_wait()).status, Status::kEmpty);
      EXPECT_EQ(arena->release(a.value), Status::kOk);
      EXPECT_EQ(arena->release(b.value), Status::kOk);
    }
    EXPECT_EQ(arena->census().pooled, 3u) << "the lost one is still a free block flagged as the pool's";
    EXPECT_EQ(corruption_count(*arena), 0u);
  }
}

}  // namespace
}  // namespace memchannel::testing
