// Release tracking (core/tracking.cc, memchannel.Tracker): a tracked message's tracking ends
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

}  // namespace
}  // namespace memchannel::testing
