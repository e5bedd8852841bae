// Release tracking: memchannel.Tracker, pyzmq's MessageTracker for channel memory.
//
// A sender that asks for a tracker marks the block before it sends it: BlockHeader::track =
// (ticket << 1) | 1, written while the block is still only its own (kReserved, or kReceived for
// a forwarded message), so the send's release publishes it. Every way a block can leave the
// message it carries ends in Arena::free_block: a receiver's release, a receiver's send
// forwarding it and the last holder's release after that, the reaper of a dead holder
// (reclaim_block), a closed channel's drop. free_block, while the block is still the caller's,
// ends the tracking before it marks the block free:
//
//   freer                                        tracker
//   -----                                        -------
//   t = track (relaxed); if t & 1:               key store (seq_cst)       arm_tracking only
//     CAS track t -> t & ~1 (seq_cst)            fence (seq_cst)
//     futex_wake(&track)                         track != ticket? done     (tracking_ended)
//     key = track_key.exchange(0)                futex_wait(&track, ticket) / poll(listener fd)
//     if key: send {arena id, offset} to key
//   mark the block free (state CAS)
//
// Either the freer's exchange sees the tracker's key, or the tracker's load after its fence
// sees the cleared bit (the Dekker pair of core/fd_wait.h). A crash of the freer between the
// two steps completes the tracker while the block is still held by a dead holder, whose
// reaper then frees it; it never leaves a free block tracked. A ticket is a process-wide
// counter from a random start, so a later tracked send of the same block (after it was freed
// and allocated again) has another ticket and an old tracker still reads "ended".
//
// Trust: a forged track word can make a tracker complete early or late (a wait has its
// timeout); a forged key makes a freer send 16 bytes to some memchannel listener, which looks
// once (as the fd wait-list). Nothing read here is used as an offset.
#include <climits>
#include <random>

#include "core/arena.h"
#include "core/fd_wait.h"
#include "core/futex.h"

namespace memchannel {
namespace {

uint32_t next_ticket() {
  static std::atomic<uint32_t> counter{std::random_device{}()};
  return (counter.fetch_add(1, std::memory_order_relaxed) << 1) | 1u;
}

}  // namespace

Result<uint32_t> Arena::track_block(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, 0};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (state_generation(word) != h.generation || (kind != kBlockReserved && kind != kBlockReceived) ||
      state_holder(word) != holder_) {
    return {Status::kCorruptedState, 0};  // not a block this holder owns now
  }
  const uint32_t ticket = next_ticket();
  hdr->track_key.store(0, std::memory_order_relaxed);
  hdr->track.store(ticket, std::memory_order_release);
  return {Status::kOk, ticket};
}

void Arena::end_tracking(BlockRef ref, BlockHeader* hdr, uint32_t word) {
  if (!hdr->track.compare_exchange_strong(word, word & ~1u, std::memory_order_seq_cst)) return;
  futex_wake(&hdr->track, INT_MAX);
  if (const uint32_t key = hdr->track_key.exchange(0, std::memory_order_seq_cst); key != 0) {
    (void)fd_send(key, FdEvent{arena_id_, ref_to_offset(ref)});
  }
  MEMCHANNEL_CRASH_POINT(kReleaseTrackingEnded);
}

bool Arena::tracking_ended(BlockRef ref, uint32_t ticket) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) {
    note_corruption();
    return true;
  }
  return hdr->track.load(std::memory_order_acquire) != ticket;
}

bool Arena::arm_tracking(BlockRef ref, uint32_t ticket, uint32_t key) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) {
    note_corruption();
    return true;
  }
  hdr->track_key.store(key, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with end_tracking's CAS
  return hdr->track.load(std::memory_order_acquire) != ticket;
}

Status Arena::wait_tracking(BlockRef ref, uint32_t ticket, const WaitSpec& spec) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kOk;
  }
  const int64_t start = monotonic_ns();
  const int64_t slice_end = spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  const int64_t until = spec.deadline_ns < slice_end ? spec.deadline_ns : slice_end;
  for (;;) {
    if (hdr->track.load(std::memory_order_acquire) != ticket) return Status::kOk;
    maybe_reap();  // a receiver that died holding the block: its reaper frees it
    if (hdr->track.load(std::memory_order_acquire) != ticket) return Status::kOk;
    int64_t timeout = -1;
    if (until != WaitSpec::kForever) {
      timeout = until - monotonic_ns();
      if (timeout <= 0) return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
    }
    if (futex_wait(&hdr->track, ticket, timeout) == FutexWait::kInterrupted) {
      return hdr->track.load(std::memory_order_acquire) != ticket ? Status::kOk : Status::kInterrupted;
    }
  }
}

}  // namespace memchannel
