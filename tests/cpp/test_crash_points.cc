// A process killed at each step of reserve -> write descriptor -> publish -> wake and
// recv -> release (docs/reliability.md item 3). For every crash point (CrashPoint in core/arena.h)
// and every workload that reaches it, a forked child attaches to a shared-memory arena, runs a
// send/recv workload and SIGKILLs itself the first (or a later) time it reaches the point. The
// parent then reaps the dead holder (Arena::reap_dead_holders, as any survivor does) and runs
// the invariant checker (core/invariants.h): no block lost or duplicated, no node lost, every
// index in bounds, counts consistent. Then the parent drains the channel (no message twice, in
// order per sender, at most the one message the child died holding lost) and traffic still
// flows. The loop asserts that every crash point was reached.
//
// Known leak windows are asserted exactly (Expected below), so they cannot silently grow: a
// process killed between popping a free-list entry and claiming it, or between marking an
// entry free and pushing it, loses that one block (or queue node); see kLeaks.
//
// Needs the shm backend (fork shares nothing of the heap backend afterwards) and a build with
// MEMCHANNEL_TEST_HOOKS; without hooks the test skips.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
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

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kParent = 1, kChild = 2;  // sender ids in message sequence numbers
constexpr int kChildMessages = 48;
constexpr int kNotReached = 3;  // child exit code: the workload never reached the point

uint64_t seq(uint64_t sender, uint64_t i) { return (sender << 32) | i; }

// ---- The crash hook (in the child only) ------------------------------------------------------

// The hook: tests/cpp/crash_hook.h.

// ---- Workloads ------------------------------------------------------------------------------

enum class Workload {
  kSteady,   // free lists and the node list stocked: allocations pop, messages in the queue
  kBounded,  // the same on a channel with maxsize and maxbytes, kept one message short of full
  kFresh,    // a fresh size class and an empty node list: allocations carve
  kConvert,  // capacity all carved, only large blocks free, no free node: nodes are cut from a block
  kOrphan,   // as kSteady, after another receiver died between its claim and taking the block, not
             // yet reaped: the child moves the head past that node and hands its message over
};
constexpr std::array<Workload, 5> kWorkloads = {Workload::kSteady, Workload::kBounded, Workload::kFresh,
                                                Workload::kConvert, Workload::kOrphan};

const char* name_of(Workload w) {
  switch (w) {
    case Workload::kSteady: return "steady";
    case Workload::kBounded: return "bounded";
    case Workload::kFresh: return "fresh";
    case Workload::kConvert: return "convert";
    case Workload::kOrphan: return "orphan";
  }
  return "?";
}

// What the child records for the parent: messages it received (a MAP_SHARED page).
struct ChildLog {
  std::atomic<uint32_t> received;
  uint64_t seqs[256];
};

Status send_seq(Channel& ch, uint64_t s, uint64_t bytes) {
  auto h = ch.allocate(bytes, PayloadLayout{}, no_wait());
  if (!h.ok()) return h.status;
  uint8_t* data = ch.arena()->payload(h.value);
  if (data == nullptr) return Status::kCorruptedState;
  std::memcpy(data, &s, sizeof s);
  const Status st = ch.send(h.value, no_wait());
  if (st != Status::kOk) ch.arena()->release(h.value);
  return st;
}

Result<uint64_t> recv_seq(Channel& ch) {
  auto h = ch.recv(no_wait());
  if (!h.ok()) return {h.status, 0};
  uint64_t s = 0;
  const uint8_t* data = ch.arena()->payload(h.value);
  if (data != nullptr) std::memcpy(&s, data, sizeof s);
  const Status st = ch.arena()->release(h.value);
  if (data == nullptr) return {Status::kCorruptedLength, 0};
  return {st, s};
}

// The arena and channel a run works on, set up by the parent before the fork.
struct Setup {
  std::shared_ptr<Arena> arena;
  std::shared_ptr<Channel> ch;
  std::vector<BlockHandle> parent_held;  // blocks the parent keeps (kConvert)
  uint64_t child_payload = 8;
  uint64_t parent_sent = 0;
  uint64_t may_lose = 1;  // parent messages a dead receiver may take with it
};

// Forks a receiver that is killed right after claiming the first message (kOrphan); nobody
// reaps it before the child under test runs.
void kill_a_claiming_receiver(Setup& s) {
  // No process may sweep it up early (Arena::maybe_reap): the child must meet its node.
  s.arena->set_sweep_interval(-1);
  const pid_t pid = ::fork();
  if (pid == 0) {
    s.arena->reattach_after_fork();
    if (s.arena->holder() == 0) ::_exit(5);
    g_target.store(static_cast<uint32_t>(CrashPoint::kRecvClaimed));
    g_hits_left.store(1);
    set_crash_hook(&kill_at_target);
    (void)recv_seq(*s.ch);
    ::_exit(kNotReached);
  }
  int wstatus = 0;
  EXPECT_EQ(::waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "status " << wstatus;
  s.may_lose = 2;
}

Setup make_setup(Workload w) {
  Setup s;
  const uint64_t capacity = w == Workload::kConvert ? 64 * kKiB : 8 * kMiB;
  auto created = Arena::create(ShmFactory::make(), capacity, 7);
  EXPECT_EQ(created.status, Status::kOk);
  s.arena = created.value;
  if (s.arena == nullptr) return s;
  const bool bounded = w == Workload::kBounded;
  auto ch = Channel::create(s.arena, bounded ? 4 : 0, bounded ? 400 : 0, 11);
  EXPECT_EQ(ch.status, Status::kOk);
  s.ch = ch.value;
  if (s.ch == nullptr) return s;
  switch (w) {
    case Workload::kSteady:
    case Workload::kOrphan:
    case Workload::kBounded: {
      // Stock the free lists and the node list, then queue messages for the child (bounded: 3 of
      // at most 4 messages / 400 bytes, so each send of the child fills the channel).
      std::vector<BlockHandle> warm;
      for (int i = 0; i < 16; ++i) warm.push_back(s.arena->allocate(100, PayloadLayout{}).value);
      for (const BlockHandle& h : warm) s.arena->release(h);
      for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(send_seq(*s.ch, 0, 100), Status::kOk);
        EXPECT_TRUE(recv_seq(*s.ch).ok());
      }
      s.parent_sent = bounded ? 3 : 8;
      for (uint64_t i = 0; i < s.parent_sent; ++i) {
        EXPECT_EQ(send_seq(*s.ch, seq(kParent, i), 100), Status::kOk);
      }
      s.child_payload = 100;
      if (w == Workload::kOrphan) kill_a_claiming_receiver(s);
      break;
    }
    case Workload::kFresh:
      // Two queued messages of a small class; the child sends a class nobody used yet, and its
      // first send finds the node list empty.
      for (uint64_t i = 0; i < 2; ++i) EXPECT_EQ(send_seq(*s.ch, seq(kParent, i), 8), Status::kOk);
      s.parent_sent = 2;
      s.child_payload = 300;
      break;
    case Workload::kConvert: {
      EXPECT_EQ(send_seq(*s.ch, seq(kParent, 0), 8), Status::kOk);
      s.parent_sent = 1;
      // Carve the whole capacity: 1000-byte blocks, then the leftovers in the smallest blocks.
      std::vector<BlockHandle> large;
      for (;;) {
        auto h = s.arena->allocate(1000, PayloadLayout{});
        if (!h.ok()) break;
        large.push_back(h.value);
      }
      for (;;) {
        auto h = s.arena->allocate(0, PayloadLayout{});
        if (!h.ok()) break;
        s.parent_held.push_back(h.value);
      }
      EXPECT_GE(large.size(), 8u);
      for (const BlockHandle& h : large) s.arena->release(h);  // free: large blocks only
      s.child_payload = 1000;
      break;
    }
  }
  return s;
}

[[noreturn]] void child_main(Setup& s, ChildLog* log, CrashPoint target, uint32_t hit) {
  s.arena->reattach_after_fork();  // a holder slot of its own
  if (s.arena->holder() == 0) ::_exit(5);
  g_target.store(static_cast<uint32_t>(target));
  g_hits_left.store(hit);
  set_crash_hook(&kill_at_target);
  for (uint64_t i = 0; i < kChildMessages; ++i) {
    if (send_seq(*s.ch, seq(kChild, i), s.child_payload) != Status::kOk) ::_exit(6);
    auto got = recv_seq(*s.ch);
    if (got.ok()) {
      const uint32_t n = log->received.load(std::memory_order_relaxed);
      if (n < 256) log->seqs[n] = got.value;
      log->received.store(n + 1, std::memory_order_release);
    } else if (got.status != Status::kEmpty) {
      ::_exit(7);
    }
  }
  ::_exit(kNotReached);
}

// ---- What a crash at each point may leave behind -----------------------------------------------

struct Expected {
  uint64_t lost_blocks = 0;  // kFree blocks on no free list
  uint64_t lost_nodes = 0;   // kNodeFree nodes on no free list
};

// The leak windows that remain (reported, and asserted exactly so they cannot grow): between a
// pop from a Treiber stack (the head CAS) and the claim of the popped entry (a CAS on its state),
// and between marking an entry free and pushing it, no shared word records who has the entry,
// so a reclaimer cannot tell it from an entry that is listed. One block or node per crash.
Expected expected_after(CrashPoint p) {
  switch (p) {
    case CrashPoint::kAllocPopped:
    case CrashPoint::kReleaseMarkedFree: return {1, 0};
    case CrashPoint::kNodePopped:
    case CrashPoint::kNodeMarkedFree: return {0, 1};
    default: return {};
  }
}

void expect_checked(const InvariantReport& r, const Expected& e, const std::string& when) {
  SCOPED_TRACE(when);
  EXPECT_EQ(r.lost_blocks, e.lost_blocks) << r.describe();
  EXPECT_EQ(r.lost_nodes, e.lost_nodes) << r.describe();
  EXPECT_EQ(r.violations(), e.lost_blocks + e.lost_nodes) << r.describe();
}

// One run: returns false if the child never reached the point.
bool run_once(Workload w, CrashPoint target, uint32_t hit) {
  const std::string what =
      std::string(to_string(target)) + " (hit " + std::to_string(hit) + ", " + name_of(w) + ")";
  SCOPED_TRACE(what);
  Setup s = make_setup(w);
  if (s.arena == nullptr || s.ch == nullptr) {
    ADD_FAILURE() << "setup failed";
    return false;
  }
  const uint64_t corruption_before = s.arena->stats().corruption_count;
  void* page = ::mmap(nullptr, sizeof(ChildLog), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    ADD_FAILURE() << "mmap";
    return false;
  }
  auto* log = new (page) ChildLog{};

  const pid_t pid = ::fork();
  if (pid == 0) child_main(s, log, target, hit);
  int wstatus = 0;
  EXPECT_EQ(::waitpid(pid, &wstatus, 0), pid);
  const bool reached = WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL;
  if (!reached) {
    EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == kNotReached)
        << "the child failed before the crash point: status " << wstatus;
  } else {
    // The survivor reclaims the dead holder, as any process does under allocation pressure or
    // when a wait slice ends.
    s.arena->reap_dead_holders();
    const Expected expected = expected_after(target);
    expect_checked(check_invariants(*s.arena), expected, "after reaping the dead child");
    EXPECT_EQ(s.arena->stats().corruption_count, corruption_before) << "recovery counted corruption";

    // The channel still works: drain it. No message twice (between the child and us), in
    // order per sender; of the parent's messages, at most the one the child died receiving is
    // missing.
    std::vector<uint64_t> drained;
    for (;;) {
      auto got = recv_seq(*s.ch);
      if (got.status == Status::kEmpty) break;
      EXPECT_EQ(got.status, Status::kOk) << to_string(got.status);
      if (!got.ok() || drained.size() > 1000) break;
      drained.push_back(got.value);
    }
    std::multiset<uint64_t> all(drained.begin(), drained.end());
    const uint32_t child_got = std::min<uint32_t>(log->received.load(std::memory_order_acquire), 256);
    for (uint32_t i = 0; i < child_got; ++i) all.insert(log->seqs[i]);
    for (uint64_t v : all) EXPECT_EQ(all.count(v), 1u) << "message " << std::hex << v << " delivered twice";
    std::map<uint64_t, uint64_t> last;  // per sender, in the parent's drain
    for (uint64_t v : drained) {
      const uint64_t sender = v >> 32;
      EXPECT_TRUE(sender == kParent || sender == kChild) << std::hex << v;
      if (last.count(sender) != 0) {
        EXPECT_LT(last[sender], v) << "out of order";
      }
      last[sender] = v;
    }
    uint64_t parent_seen = 0;
    for (uint64_t v : all) parent_seen += (v >> 32) == kParent ? 1 : 0;
    EXPECT_GE(parent_seen + s.may_lose, s.parent_sent) << "more messages lost than receivers died";

    // New traffic flows, and the arena is as consistent as before it.
    for (uint64_t i = 0; i < 4; ++i) {
      EXPECT_EQ(send_seq(*s.ch, seq(kParent, 100 + i), s.child_payload), Status::kOk);
    }
    for (uint64_t i = 0; i < 4; ++i) {
      auto got = recv_seq(*s.ch);
      EXPECT_EQ(got.status, Status::kOk);
      EXPECT_EQ(got.value, seq(kParent, 100 + i));
    }
    EXPECT_EQ(s.ch->recv(no_wait()).status, Status::kEmpty);
    expect_checked(check_invariants(*s.arena), expected, "after draining and new traffic");
    // The counts follow the queue (channel.h): empty counts 0, a bounded channel takes exactly
    // its bound again, and a closed one reports drained. (With a separate admission counter the
    // soak once found it one too high after a kill, and a closed channel never drained.)
    EXPECT_EQ(s.ch->queued(), 0u);
    if (w == Workload::kBounded) {
      uint64_t taken = 0;
      while (taken < 16 && send_seq(*s.ch, seq(kParent, 200 + taken), s.child_payload) == Status::kOk) ++taken;
      EXPECT_EQ(taken, 4u) << "a bound of 4 messages / 400 bytes";
      EXPECT_EQ(s.ch->queued(), taken);
      for (uint64_t i = 0; i < taken; ++i) EXPECT_TRUE(recv_seq(*s.ch).ok());
    }
    s.ch->close();
    EXPECT_EQ(s.ch->recv(no_wait()).status, Status::kClosed);
  }
  for (const BlockHandle& h : s.parent_held) EXPECT_EQ(s.arena->release(h), Status::kOk);
  ::munmap(page, sizeof(ChildLog));
  return reached;
}

TEST(CrashPoints, EveryPointLeavesAConsistentArena) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  std::set<uint32_t> reached;
  std::map<std::string, int> runs;
  // Segment creation (kGrowSegment*) has its own crash tests: tests/cpp/test_shm_growth.cc;
  // the attach window (kAttach*) has its own in test_reclaim.cc (AttachWindow).
  // The sync primitives' points (kSync*) have theirs in test_sync_crash.cc (SyncCrashPoints);
  // release tracking's (kReleaseTrackingEnded), shares' (kShare*) and pools' (kPool*) in
  // test_tracking.cc; a receive batch's stashed nodes (kNodesStashed) in test_inline.cc.
  const auto covered_elsewhere = [](uint32_t p) {
    return p == static_cast<uint32_t>(CrashPoint::kReleaseTrackingEnded) ||
           p == static_cast<uint32_t>(CrashPoint::kNodesStashed) ||
           p == static_cast<uint32_t>(CrashPoint::kShareTokensReady) ||
           p == static_cast<uint32_t>(CrashPoint::kShareIndicesClaimed) ||
           p == static_cast<uint32_t>(CrashPoint::kShareBitDropped) ||
           p == static_cast<uint32_t>(CrashPoint::kPoolPopped) ||
           p == static_cast<uint32_t>(CrashPoint::kPoolMarkedFree) ||
           p == static_cast<uint32_t>(CrashPoint::kGrowSegmentClaimed) ||
           p == static_cast<uint32_t>(CrashPoint::kGrowSegmentCreated) ||
           p == static_cast<uint32_t>(CrashPoint::kAttachSlotClaimed) ||
           p == static_cast<uint32_t>(CrashPoint::kAttachCounted) ||
           (p >= static_cast<uint32_t>(CrashPoint::kSyncLockTaken) && p <= static_cast<uint32_t>(CrashPoint::kSyncEventSet)) ||
           p == static_cast<uint32_t>(CrashPoint::kSyncSemReclaimed);
  };
  for (uint32_t p = 0; p < kCrashPointCount; ++p) {
    const auto point = static_cast<CrashPoint>(p);
    if (covered_elsewhere(p)) {
      reached.insert(p);
      continue;
    }
    for (Workload w : kWorkloads) {
      // The first time the child reaches the point, and (steady states) a later time, when the
      // queue and the lists have turned over a few times.
      for (uint32_t hit : {1u, 5u}) {
        if (hit != 1 && w != Workload::kSteady && w != Workload::kBounded) continue;
        if (run_once(w, point, hit)) {
          reached.insert(p);
          ++runs[name_of(w)];
        }
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
  std::string missing;
  for (uint32_t p = 0; p < kCrashPointCount; ++p) {
    if (reached.count(p) == 0) missing += std::string(" ") + to_string(static_cast<CrashPoint>(p));
  }
  EXPECT_EQ(reached.size(), kCrashPointCount) << "crash points no workload reached:" << missing;
  for (const auto& [w, n] : runs) std::printf("workload %s: %d crash runs\n", w.c_str(), n);
}

// The soak's leak (docs/design.md, Known weak points): a receiver killed between claiming a
// node and marking its block kReceived, while other receivers go on. They move the head onto
// the claimed node and past it, and free it as an old dummy, before anyone reaps the dead
// receiver. The message must still be accounted for: after the reap no block is left kQueued
// with nothing naming it (the checker's orphan_messages), and the arena comes back to empty.
TEST(CrashPoints, ReceiverKilledAfterClaimWhileOthersReceive) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto created = Arena::create(ShmFactory::make(), 8 * kMiB, 13);
  ASSERT_EQ(created.status, Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto ch = Channel::create(arena, 0, 0, 14).value;
  ASSERT_NE(ch, nullptr);
  arena->set_sweep_interval(-1);  // the dead receiver stays unreaped until we reap it below
  constexpr uint64_t kMessages = 64;
  for (uint64_t i = 0; i < kMessages; ++i) ASSERT_EQ(send_seq(*ch, seq(kParent, i), 100), Status::kOk);

  const pid_t pid = ::fork();
  if (pid == 0) {
    arena->reattach_after_fork();
    if (arena->holder() == 0) ::_exit(5);
    g_target.store(static_cast<uint32_t>(CrashPoint::kRecvClaimed));
    g_hits_left.store(1);
    set_crash_hook(&kill_at_target);
    (void)recv_seq(*ch);
    ::_exit(kNotReached);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "status " << wstatus;

  // Two receivers drain the rest: the head passes the dead receiver's node and frees it.
  std::atomic<uint64_t> got{0};
  std::vector<std::thread> receivers;
  for (int t = 0; t < 2; ++t) {
    receivers.emplace_back([&] {
      for (;;) {
        auto r = recv_seq(*ch);
        if (r.status == Status::kEmpty) return;
        if (r.ok()) got.fetch_add(1);
      }
    });
  }
  for (std::thread& t : receivers) t.join();
  EXPECT_EQ(got.load(), kMessages - 1) << "only the dead receiver's message may be missing";
  EXPECT_EQ(arena->census().nodes_claimed, 1u) << "the head is the last node";

  arena->reap_dead_holders();
  const InvariantReport r = check_invariants(*arena);
  EXPECT_EQ(r.orphan_messages, 0u) << r.describe();
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(arena->census().queued, 0u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u) << "the dead receiver's block did not come back";
  // Traffic still flows.
  ASSERT_EQ(send_seq(*ch, seq(kParent, 1000), 100), Status::kOk);
  EXPECT_EQ(recv_seq(*ch).value, seq(kParent, 1000));
}

// A claimer that is only slow: other receivers pass its node and hand it the message
// (kTransferred); when it resumes, its mark_received takes the message as its own.
std::atomic<int> g_pause_state{0};  // 1: the paused thread is inside its hook; 2: let it go
thread_local bool t_pause_here = false;
void pause_at_claim(CrashPoint p) {
  if (p != CrashPoint::kRecvClaimed || !t_pause_here) return;
  t_pause_here = false;
  g_pause_state.store(1);
  while (g_pause_state.load() != 2) std::this_thread::yield();
}

TEST(CrashPoints, SlowClaimerGetsItsMessageAfterOthersPassItsNode) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto created = Arena::create(ShmFactory::make(), 8 * kMiB, 15);
  ASSERT_EQ(created.status, Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto ch = Channel::create(arena, 0, 0, 16).value;
  ASSERT_NE(ch, nullptr);
  constexpr uint64_t kMessages = 8;
  for (uint64_t i = 0; i < kMessages; ++i) ASSERT_EQ(send_seq(*ch, seq(kParent, i), 100), Status::kOk);
  g_pause_state.store(0);
  set_crash_hook(&pause_at_claim);
  Result<uint64_t> slow{Status::kEmpty, 0};
  std::thread claimer([&] {
    t_pause_here = true;
    slow = recv_seq(*ch);
  });
  while (g_pause_state.load() != 1) std::this_thread::yield();
  // The claimer holds message 0's node; the rest pass it and free it as an old dummy.
  std::vector<uint64_t> others;
  for (;;) {
    auto r = recv_seq(*ch);
    if (r.status == Status::kEmpty) break;
    ASSERT_TRUE(r.ok()) << to_string(r.status);
    others.push_back(r.value);
  }
  EXPECT_EQ(others.size(), kMessages - 1);
  EXPECT_EQ(arena->census().transferred, 1u) << "message 0 was not handed to its claimer";
  g_pause_state.store(2);
  claimer.join();
  set_crash_hook(nullptr);
  ASSERT_TRUE(slow.ok()) << to_string(slow.status);
  EXPECT_EQ(slow.value, seq(kParent, 0));
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  const InvariantReport r = check_invariants(*arena);
  EXPECT_TRUE(r.ok()) << r.describe();
}

// The same race with everything concurrent: a sender and two receiver threads run in the
// parent while forked receivers are killed, one after another, at a claim (at a random hit),
// then the dead are reaped. No block may be left kQueued and unreachable; only the messages the
// dead receivers claimed may be missing.
TEST(CrashPoints, ReceiversKilledAtTheirClaimsUnderConcurrentTraffic) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  auto created = Arena::create(ShmFactory::make(), 16 * kMiB, 17);
  ASSERT_EQ(created.status, Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto ch = Channel::create(arena, 0, 0, 18).value;
  ASSERT_NE(ch, nullptr);
  arena->set_sweep_interval(-1);  // the dead stay unreaped until the end, as in the soak's window
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent{0}, received{0};
  std::thread sender([&] {
    for (uint64_t i = 0; !stop.load(); ++i) {
      if (send_seq(*ch, seq(kParent, i), 100) == Status::kOk) sent.fetch_add(1);
      if (i % 64 == 0) std::this_thread::yield();
    }
  });
  std::vector<std::thread> receivers;
  for (int t = 0; t < 2; ++t) {
    receivers.emplace_back([&] {
      while (!stop.load()) {
        if (recv_seq(*ch).ok()) received.fetch_add(1);
      }
    });
  }
  constexpr int kVictims = 12;
  int killed = 0;
  for (int v = 0; v < kVictims; ++v) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      arena->reattach_after_fork();
      if (arena->holder() == 0) ::_exit(5);
      g_target.store(static_cast<uint32_t>(CrashPoint::kRecvClaimed));
      g_hits_left.store(1 + static_cast<uint32_t>(v % 5));
      set_crash_hook(&kill_at_target);
      const int64_t give_up = monotonic_ns() + 10'000'000'000;  // the parent's sender keeps sending
      while (monotonic_ns() < give_up) (void)recv_seq(*ch);
      ::_exit(kNotReached);
    }
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    if (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) ++killed;
  }
  stop.store(true);
  sender.join();
  for (std::thread& t : receivers) t.join();
  EXPECT_EQ(killed, kVictims);
  while (recv_seq(*ch).ok()) received.fetch_add(1);
  arena->reap_dead_holders();
  const InvariantReport r = check_invariants(*arena);
  EXPECT_EQ(r.orphan_messages, 0u) << r.describe();
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().corruption_count, 0u);
  // Each victim took at most its own hits' worth (it received what it counted, then claimed one).
  EXPECT_LE(sent.load() - received.load(), 5u * kVictims);
}

// The checker itself catches what it claims to (a checker that finds nothing proves nothing).
TEST(CrashPoints, InvariantCheckerCatchesPlantedFaults) {
  auto created = Arena::create(ShmFactory::make(), 8 * kMiB, 9);
  ASSERT_EQ(created.status, Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto ch = Channel::create(arena, 0, 0, 12).value;
  ASSERT_NE(ch, nullptr);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_EQ(send_seq(*ch, i, 100), Status::kOk);
  auto spare = arena->allocate(100, PayloadLayout{});
  ASSERT_TRUE(spare.ok());
  ASSERT_EQ(arena->release(spare.value), Status::kOk);
  {
    const InvariantReport clean = check_invariants(*arena);
    EXPECT_TRUE(clean.ok()) << clean.describe();
    EXPECT_EQ(clean.messages, 3u);
    EXPECT_EQ(clean.channels, 1u);
  }
  ChannelHeader* h = channel_header(*ch);
  ArenaHeader* a = arena_header(*arena);
  const uint32_t cls = class_of_payload(100);
  // A message numbered out of turn, and one whose byte position is off.
  {
    QueueNode* second = queue_node(*arena, tagged_ref(queue_node(*arena, tagged_ref(h->head.load()))->next.load()));
    second->seq.fetch_add(1);
    EXPECT_EQ(check_invariants(*arena).count_mismatches, 1u);
    second->seq.fetch_sub(1);
    second->position_bytes.fetch_add(1);
    EXPECT_EQ(check_invariants(*arena).bytes_mismatches, 1u);
    second->position_bytes.fetch_sub(1);
  }
  // A free block dropped from its list.
  const uint64_t list = a->free_lists[cls].head.load();
  a->free_lists[cls].head.store(make_tagged(tagged_tag(list) + 1, 0));
  EXPECT_EQ(check_invariants(*arena).lost_blocks, 1u);
  a->free_lists[cls].head.store(list);
  // A queued block no queue names, and a stale queue entry.
  QueueNode* dummy = queue_node(*arena, tagged_ref(h->head.load()));
  QueueNode* first = queue_node(*arena, tagged_ref(dummy->next.load()));
  const uint32_t gen = first->generation.load();
  first->generation.store(gen + 1);
  {
    const InvariantReport r = check_invariants(*arena);
    EXPECT_EQ(r.stale_entries, 1u) << r.describe();
    EXPECT_EQ(r.orphan_messages, 1u) << r.describe();
  }
  first->generation.store(gen);
  // A message handed to a claimer that is not alive (holder 100 names no slot in use): held by
  // the dead, and its queue entry no longer names a queued message.
  {
    BlockHeader* b = block_header(*arena, first->block.load());
    const uint32_t word = b->state.load();
    b->state.store(make_state(state_generation(word), 100, kBlockTransferred));
    const InvariantReport r = check_invariants(*arena);
    EXPECT_EQ(r.dead_held_blocks, 1u) << r.describe();
    EXPECT_EQ(r.stale_entries, 1u) << r.describe();
    EXPECT_EQ(r.transferred, 1u) << r.describe();
    b->state.store(word);
  }
  // A tail off the queue.
  const uint64_t tail = h->tail.load();
  auto stray = arena->allocate_node();
  ASSERT_TRUE(stray.ok());
  h->tail.store(make_tagged(tagged_tag(tail) + 1, stray.value));
  EXPECT_EQ(check_invariants(*arena).tails_off_queue, 1u);
  h->tail.store(tail);
  arena->free_node(stray.value);
  EXPECT_TRUE(check_invariants(*arena).ok()) << check_invariants(*arena).describe();
  while (ch->recv(no_wait()).ok()) {
  }
}

}  // namespace
}  // namespace memchannel::testing
