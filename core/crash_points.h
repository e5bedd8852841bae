// Crash points: named steps of the data path where a test may kill the process
// (tests/cpp/test_crash_points.cc; docs/reliability.md item 3).
//
// Each names the moment just after one step of reserve -> write descriptor -> publish -> wake and
// recv -> release. In builds with MEMCHANNEL_TEST_HOOKS a test installs a hook (a plain function
// pointer) that may kill the process there; in other builds MEMCHANNEL_CRASH_POINT is empty.
#pragma once

#include <atomic>
#include <cstdint>

namespace memchannel {

enum class CrashPoint : uint32_t {
  // Arena::allocate
  kAllocPopped,         // a block is off its free list, not yet claimed (still kFree)
  kAllocCarveLocked,    // a fresh cell holds this holder's carving word; cursor not yet moved
  kAllocCarved,         // the cursor is past the fresh cell; its header not yet written
  kAllocClaimed,        // the block is kReserved by this holder; metadata not yet written
  // Arena::release
  kReleaseTrackingEnded,  // a tracked block's tracking ended (core/tracking.cc); the block not yet free
  // Arena::share / drop_share (core/shares.cc)
  kShareTokensReady,    // the tokens are filled and flagged; the block not yet kShared
  kShareIndicesClaimed, // a re-share's new indices are in the share word; its tokens not yet flagged
  kShareBitDropped,     // a token's bit is cleared; the block (if it was the last) not yet freed
  // Buffer pools (core/pools.cc)
  kPoolPopped,          // a block is off its pool's list, not yet claimed (still kFree)
  kPoolMarkedFree,      // a pooled block coming back is kFree, not yet on its pool's list
  kReleaseRefDropped,   // the last reference is dropped; the block still names its holder
  kReleaseMarkedFree,   // the block is kFree, not yet on its free list
  kReleasePushed,       // the block is on its free list; waiters not yet woken
  // Arena::allocate_node / free_node
  kNodePopped,          // a node is off the node free list, not yet claimed (still kNodeFree)
  kNodeCarveLocked,     // as kAllocCarveLocked, for a node
  kNodeCarved,          // as kAllocCarved, for a node
  kNodeClaimed,         // the node is kNodeHeld by this holder
  kNodeConvertClaimed,  // capacity spent: a free data block is kReserved to be cut into nodes
  kNodeConvertCells,    // its cells after the first are kNodeHeld nodes; the first not yet
  kNodeConverted,       // every cell is a kNodeHeld node; none is on the free list yet
  kNodeMarkedFree,      // a node is kNodeFree, not yet on the node free list
  // Channel::send
  kSendNodeAllocated,   // a node is held; the message is not admitted
  kSendNamed,           // the node is kNodeLinked(channel, sender) with the descriptor; not linked
  kSendMarkedSending,   // the block is kSending
  kSendLinked,          // the node is linked after the last node (not yet the tail)
  kSendTailSwung,       // the tail names the node
  kSendMarkedQueued,    // the block is kQueued
  kSendNotified,        // receivers woken
  // Channel::recv
  kRecvClaimed,         // the first message node is kNodeClaimed by this holder
  kRecvTaken,           // its block is kReceived by this holder
  kRecvHeadAdvanced,    // the head names the claimed node; the old dummy not yet freed
  kRecvTransferred,     // the old dummy's message, not yet taken by its claimer, is kTransferred
                        // to that claimer; the old dummy not yet freed
  kRecvOldHeadFreed,    // the old dummy is free
  // Arena::grow
  kGrowSegmentClaimed,  // segment_bytes[next] holds this holder's creating word; no segment yet
  kGrowSegmentCreated,  // the segment exists and is mapped here; its size not yet published
  // Arena::attach / reattach_after_fork (core/arena_segments.cc, core/arena.cc)
  kAttachSlotClaimed,   // this process's holder slot is claimed (kSlotClaiming, its identity written);
                        // not yet counted in the arena's attach count
  kAttachCounted,       // the arena's attach count includes this process; its holder slot not yet active
  // Sync (core/sync.h)
  kSyncLockTaken,       // the lock word names this holder; an RLock's owner thread not yet written
  kSyncLockTakeover,    // a dead owner's lock word is replaced by this holder's
  kSyncLockReleased,    // the lock word is 0; waiters not yet woken
  kSyncSemIntent,       // this holder's entry counts one more permit; the permit not yet taken
  kSyncSemTaken,        // the permit is taken (and counted in the entry)
  kSyncSemReleased,     // permits are back in the count; the entry not yet decremented
  kSyncCondRegistered,  // a waiter is counted in the condition's word; not yet in its entry
  kSyncCondLeaving,     // a waiter's entry is decremented; the word not yet
  kSyncBarrierArrived,  // this holder's arrival is in the barrier word (the entry names it)
  kSyncEventSet,        // the event flag is set; waiters not yet woken
  kSyncSemReclaimed,    // recover(): a dead holder's permits are back in the count, the word names its
                        // entry's decrement; the entry not yet decremented
  kNodesStashed,        // a receive batch's old dummies are kNodeFree, linked to one another, not yet on
                        // the node free list (Arena::push_stash)
  kCount
};
inline constexpr uint32_t kCrashPointCount = static_cast<uint32_t>(CrashPoint::kCount);
const char* to_string(CrashPoint p);

using CrashHook = void (*)(CrashPoint);
#if defined(MEMCHANNEL_TEST_HOOKS)
inline constexpr bool kCrashHooksCompiled = true;
namespace detail {
extern std::atomic<CrashHook> g_crash_hook;
}  // namespace detail
// Installs `hook` (nullptr: none) for every crash point of this process.
inline void set_crash_hook(CrashHook hook) { detail::g_crash_hook.store(hook, std::memory_order_seq_cst); }
inline void crash_point(CrashPoint p) {
  if (CrashHook hook = detail::g_crash_hook.load(std::memory_order_relaxed)) hook(p);
}
#define MEMCHANNEL_CRASH_POINT(name) ::memchannel::crash_point(::memchannel::CrashPoint::name)
#else
inline constexpr bool kCrashHooksCompiled = false;
inline void set_crash_hook(CrashHook) {}
#define MEMCHANNEL_CRASH_POINT(name) static_cast<void>(0)
#endif

}  // namespace memchannel
