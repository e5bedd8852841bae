// Crash recovery: finding dead holders and finishing or undoing what they left half done.
//
// The holder-slot protocol (claim, liveness, reaping, takeover of a reap whose reaper died;
// the slot state word is in core/arena_layout.h), the reclamation of a dead holder's cells
// (Arena::reclaim_holder) and of its queue operations (recover_queues). Every step is a CAS
// from a state that names the dead holder, so a reap run twice (its first reaper died) repeats
// nothing. See docs/design.md, "Prompt reclamation" and "Known weak points".
#include "core/recovery.h"

#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/arena_internal.h"
#include "core/channel.h"
#include "core/queue_walk.h"

namespace memchannel {
namespace {

// Walks a snapshot retries while receivers keep moving the head.
constexpr int kSnapshotAttempts = 16;

// The nodes reachable from the head of `h` (the dummy included), seen with the head unchanged
// from start to end. Empty (and *consistent false) if no attempt saw a still head. Stops at the
// first link that leaves the channel (a corrupted queue keeps its valid prefix).
std::unordered_set<BlockRef> snapshot_queue(Arena& arena, ChannelHeader& h, uint32_t tag, bool* consistent) {
  std::unordered_set<BlockRef> seen;
  *consistent = false;
  for (int attempt = 0; attempt < kSnapshotAttempts; ++attempt) {
    seen.clear();
    const uint64_t head = h.head.load(std::memory_order_acquire);
    QueueNode* first = arena.find_node(tagged_ref(head));
    const uint64_t s = first != nullptr ? first->state.load(std::memory_order_acquire) : 0;
    if (first != nullptr && node_channel(s) == tag && node_state_in_queue(s)) {
      seen.insert(tagged_ref(head));
      walk_queue(
          arena, first, tagged_ref(head), tag, [](uint64_t st, bool) { return node_state_in_queue(st); },
          [&](BlockRef ref, QueueNode*, uint64_t) { return seen.insert(ref).second; });
    }
    if (h.head.load(std::memory_order_acquire) == head) {
      *consistent = true;
      return seen;
    }
  }
  seen.clear();
  return seen;
}

}  // namespace

void Arena::set_sweep_interval(int64_t ns) {
  sweep_interval_ns_.store(ns, std::memory_order_relaxed);
  next_sweep_ns_.store(ns < 0 ? std::numeric_limits<int64_t>::max() : coarse_now_ns() + ns, std::memory_order_relaxed);
}

void Arena::sweep_slow() {
  const int64_t interval = sweep_interval_ns_.load(std::memory_order_relaxed);
  if (interval < 0 || detached_.load(std::memory_order_acquire)) return;
  const int64_t now = coarse_now_ns();
  int64_t due = next_sweep_ns_.load(std::memory_order_relaxed);
  // One thread per interval: the one that moves the due time on sweeps.
  if (now < due || !next_sweep_ns_.compare_exchange_strong(due, now + interval, std::memory_order_relaxed)) {
    return;
  }
  reap_dead_holders();
  check_header();  // forged header words are repaired within a sweep interval (docs/shm.md)
}

// The attach window. A party joins an arena in three steps (join_holders): it claims a holder
// slot (kSlotClaiming, naming its pid, with its liveness lock held), counts itself in
// attached_holders, then marks the slot kSlotActive. It leaves in three (detach): kSlotLeaving,
// the count given back, the slot freed. So every party counted in attached_holders holds a
// non-free slot, and its liveness lock, from before it counted itself until after it stopped
// counting; in the other order (counted first, as before layout 9) a party killed between the two
// steps left a count no reaper could find, and the segments outlived every process (the sync
// crash tests' SIGKILLed children under the sanitizers' slowness left such arenas, every slot
// free and the count 1 or 2).
//
// A slot is the only record a dead party leaves, and two words cannot change at once, so a dead
// party's slot tells its reaper whether to give its count back only where that is certain:
// kSlotActive, yes (it counted itself before it said so); kSlotClaiming (it may have died on
// either side of its count) and kSlotLeaving (on either side of giving it back), no. A unit
// given back twice could tear the arena down under a live party; a unit not given back only
// delays the teardown, which the last live party to leave then does anyway: it sees every slot
// free, or held by a dead party, and nobody counted since it looked (the attach sequence), so
// whatever the count still says belongs to nobody alive (Arena::detach, release_if_abandoned).
// A live party stalled anywhere in its window holds its slot and lock, so it is never judged
// gone: counted, it keeps the arena (its segments are not removed under it); not yet counted
// when the count reaches 0, its CAS finds the arena torn down and its attach is refused
// (kNotFound), as for any attach that comes after the last detach.
Status Arena::join_holders() {
  const Status claimed = claim_holder_slot();
  if (claimed != Status::kOk) return claimed;
  MEMCHANNEL_CRASH_POINT(kAttachSlotClaimed);
  HolderSlot& slot = header_->holders[holder_ - 1];
  // Join the holders unless the last one has torn the arena down. A count of 0 (or past the
  // slots) while a live party holds an active slot is forged, not a teardown: repaired.
  uint64_t word = header_->attached_holders.load(std::memory_order_acquire);
  do {
    const uint32_t count = holders_count(word);
    if (count == 0 || count > 2 * kMaxHolders) {
      uint32_t live = 0;
      const uint32_t active = active_slots(&live);
      if (live == 0 || !header_->attached_holders.compare_exchange_strong(word, holders_with_count(word, active),
                                                                          std::memory_order_acq_rel)) {
        free_slot(slot);
        backend_->unlock_slot(holder_ - 1);
        holder_ = 0;
        return Status::kNotFound;
      }
      note_corruption();
      word = holders_with_count(word, active);
    }
  } while (!header_->attached_holders.compare_exchange_weak(word, holders_joined(word), std::memory_order_acq_rel));
  MEMCHANNEL_CRASH_POINT(kAttachCounted);
  slot.state.store(kSlotActive, std::memory_order_release);  // counted: a reaper gives it back
  return Status::kOk;
}

Status Arena::claim_holder_slot() {
  // Identity first (it may read /proc). The claim names the claimer's pid, so a claimer killed
  // before its identity is complete is still found dead (see reap_dead_holders). The slot is
  // left kSlotClaiming: the caller counts itself, then marks it active (join_holders).
  const HolderIdentity me = backend_->self_identity();
  for (int round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < kMaxHolders; ++i) {
      HolderSlot& slot = header_->holders[i];
      uint32_t expected = kSlotFree;
      if (slot.state.load(std::memory_order_relaxed) != kSlotFree) continue;
      // The liveness lock first (core/backend.h): a slot is never claimed without it, so a
      // claimed slot whose lock nobody holds is a dead occupant's, in any PID namespace.
      if (!backend_->lock_slot(i)) continue;  // its last occupant is still letting go
      if (!slot.state.compare_exchange_strong(expected, slot_claiming(me.words[0]), std::memory_order_acq_rel)) {
        backend_->unlock_slot(i);
        continue;
      }
      slot.identity[0].store(me.words[0], std::memory_order_relaxed);
      slot.identity[1].store(me.words[1], std::memory_order_relaxed);
      incarnation_ = slot.incarnation.fetch_add(1, std::memory_order_release) + 1;
      holder_ = i + 1;
      return Status::kOk;
    }
    reap_dead_holders();  // all slots taken: free those of dead processes, then retry
  }
  return Status::kNoHolderSlot;
}

bool Arena::creator_alive(uint64_t w) {
  if (!backend_->tracks_holders()) return true;  // a thread of this process: it cannot die alone
  return occupant_alive(creating_holder(w), creating_incarnation(w), 0xffffff);
}

bool Arena::occupant_alive(uint32_t holder, uint32_t incarnation, uint32_t mask) {
  if (!backend_->tracks_holders()) return true;
  if (holder == 0 || holder > kMaxHolders) return false;  // no tracked occupant: nobody finishes it
  if (holder == holder_) return (incarnation_ & mask) == (incarnation & mask);
  HolderSlot& slot = header_->holders[holder - 1];
  const uint32_t state = slot.state.load(std::memory_order_acquire);
  // Claimed again since (or being reclaimed, or free): the occupant is gone.
  if (state != kSlotActive || (slot.incarnation.load(std::memory_order_relaxed) & mask) != (incarnation & mask)) {
    return false;
  }
  return backend_->lock_liveness(holder - 1) != HolderLiveness::kDead;
}

bool Arena::holder_alive(uint32_t holder) {
  if (!backend_->tracks_holders() || holder == 0 || holder == holder_) return true;
  if (holder > kMaxHolders) return false;
  HolderSlot& slot = header_->holders[holder - 1];
  const uint32_t state = slot.state.load(std::memory_order_acquire);
  if (slot_kind(state) == kSlotClaiming) return true;  // identity not yet published: assume alive
  if (state != kSlotActive) return false;
  return backend_->lock_liveness(holder - 1) != HolderLiveness::kDead;
}

Status Arena::reclaim_block(BlockRef ref, uint32_t expected) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) return Status::kCorruptedOffset;
  if (state_kind(expected) == kBlockFree) return Status::kDoubleRelease;
  uint32_t word = expected;
  // Make the block ours first, so resetting its reference count and flags races nobody.
  const uint32_t mine = make_state(state_generation(expected), holder_, kBlockReserved);
  if (!hdr->state.compare_exchange_strong(word, mine, std::memory_order_acq_rel)) {
    return Status::kDoubleRelease;
  }
  hdr->refcount.store(1, std::memory_order_relaxed);
  // A share token keeps its flag (freeing it drops its share: core/shares.cc), a pool's block
  // its own (it goes back to its pool: core/pools.cc).
  hdr->flags.store(hdr->flags.load(std::memory_order_relaxed) & (kBlockFlagShare | kBlockFlagPooled),
                   std::memory_order_relaxed);
  return free_block(ref, hdr, mine);
}

bool Arena::complete_send(BlockRef ref, uint32_t expected) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr || state_kind(expected) != kBlockSending) return false;
  uint32_t word = expected;
  return hdr->state.compare_exchange_strong(word, make_state(state_generation(expected), 0, kBlockQueued),
                                            std::memory_order_acq_rel);
}

uint64_t Arena::reclaim_holder(uint32_t holder_id) {
  uint64_t freed = 0, bad = 0;
  // A carve the dead holder left at the cursor: move the cursor past it, so the walk sees it.
  const uint64_t cursor = header_->carve.load(std::memory_order_acquire);
  uint8_t* at_cursor = (within_segment(cursor) % kUnit) == 0 ? translate(cursor, kUnit) : nullptr;
  if (uint8_t* cell = at_cursor) {
    const uint64_t w = load_cell_word(cell);
    if (is_carving_word(w) && carving_holder(w) == holder_id) help_carve(cursor, w);
  }
  // Queues first: a send the dead holder had linked is completed, one it had not is rolled
  // back; messages it had claimed are freed; dummies it had advanced past are freed.
  freed += recover_queues(*this, holder_id);
  walk_cells([&](const CellInfo& c) {
    if (c.kind == CellInfo::kCarving) {
      if (carving_holder(c.carving_word) != holder_id) return;
      // The carver died before initialising its cell: make it a free block of its class.
      const uint64_t units = carving_units(c.carving_word);
      const uint32_t cls = class_for_units(units);
      if (cls >= kNumClasses || class_units(cls) != units) return;  // not a carve we make
      uint8_t* cell = translate(c.offset, c.bytes);
      if (cell == nullptr) return;
      uint64_t w = c.carving_word;
      if (!__atomic_compare_exchange_n(cell_word(cell), &w, make_carving_word(holder_, units), false,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return;
      }
      auto* hdr = reinterpret_cast<BlockHeader*>(cell);
      hdr->state.store(make_state(0, 0, kBlockFree), std::memory_order_relaxed);
      hdr->refcount.store(0, std::memory_order_relaxed);
      hdr->size_class.store(cls, std::memory_order_relaxed);
      hdr->length.store(0, std::memory_order_relaxed);
      hdr->flags.store(0, std::memory_order_relaxed);
      publish_cell(cell, kBlockMagic);
      push_free(header_->free_lists[cls].head, offset_to_ref(c.offset), &hdr->next_free);
      notify_all(header_->space);
      ++freed;
      return;
    }
    if (c.kind == CellInfo::kNode) {
      const uint64_t s = c.node->state.load(std::memory_order_acquire);
      if (node_kind(s) == kNodeHeld && node_holder(s) == holder_id) {
        free_node_at(c.node, offset_to_ref(c.offset), s, true);
      }
      return;
    }
    const uint32_t word = c.block->state.load(std::memory_order_acquire);
    const BlockState kind = state_kind(word);
    if (state_holder(word) != holder_id || (kind != kBlockReserved && kind != kBlockReceived &&
                                            kind != kBlockSending && kind != kBlockTransferred)) {
      return;
    }
    if (reclaim_block(offset_to_ref(c.offset), word) == Status::kOk) ++freed;
  }, &bad);
  return freed;
}

void Arena::free_slot(HolderSlot& slot) {
  // A free slot has no identity: so a slot found kSlotClaiming with a complete identity names
  // its claimer, not an earlier occupant (see reap_dead_holders).
  slot.identity[0].store(0, std::memory_order_relaxed);
  slot.identity[1].store(0, std::memory_order_relaxed);
  slot.state.store(kSlotFree, std::memory_order_release);
}

uint64_t Arena::reap_dead_holders() {
  if (!backend_->tracks_holders()) return 0;
  uint64_t freed = 0;
  uint64_t my_pid = 0;  // read when first needed (a reaper with no slot names itself by pid)
  for (uint32_t i = 0; i < kMaxHolders; ++i) {
    HolderSlot& slot = header_->holders[i];
    if (i + 1 == holder_) continue;
    const uint32_t state = slot.state.load(std::memory_order_acquire);
    const uint32_t incarnation = slot.incarnation.load(std::memory_order_acquire);
    const uint32_t kind = slot_kind(state);
    // Liveness is the slot's lock (core/backend.h, "Liveness locks"): the occupant holds lock i,
    // a reaper without a slot holds lock kMaxHolders + i. A lock nobody holds is a dead party's,
    // whatever PID namespace it ran in; a lock that cannot be judged counts as held.
    bool owes_count = kind == kSlotActive;  // see "The attach window" above
    if (kind == kSlotReclaimingByPid) {
      owes_count = slot_reap_owes_count(state);
      if (backend_->lock_liveness(kMaxHolders + i) != HolderLiveness::kDead) continue;
    } else if (kind == kSlotReclaiming) {
      // A reap in progress, or one whose reaper was killed half way (the 10-minute soak found
      // such a slot, and with it the arena's attach count, stuck for good): finish it. Every
      // step of reclaim_holder is a CAS from a state naming the dead holder, so running it
      // again completes what the first reaper left and repeats nothing it did.
      owes_count = slot_reap_owes_count(state);
      if (occupant_alive(slot_reaper(state), slot_reaper_incarnation(state), 0xffff)) continue;
    } else if (kind == kSlotActive || kind == kSlotClaiming || kind == kSlotLeaving) {
      if (backend_->lock_liveness(i) != HolderLiveness::kDead) continue;
    } else {
      continue;
    }
    // The reap names its reaper, so that only the reaper's death lets another take it over: by
    // holder id, or by pid while this process is still attaching (no slot yet: a reap recorded
    // as holder 0 would look abandoned and be run twice, decrementing the attach count twice).
    if (holder_ == 0 && my_pid == 0) my_pid = backend_->self_identity().words[0];
    const uint32_t mine = (holder_ != 0 ? slot_reclaiming(holder_, incarnation_) : slot_reclaiming_by_pid(my_pid)) |
                          (owes_count ? 0 : kSlotNoCount);
    if (holder_ == 0 && my_pid == 0) continue;  // no way to name ourselves: leave it to others
    const bool by_pid = holder_ == 0;
    if (by_pid && !backend_->lock_slot(kMaxHolders + i)) continue;  // another slotless reaper
    uint32_t expected = state;
    if (!slot.state.compare_exchange_strong(expected, mine, std::memory_order_acq_rel)) {
      if (by_pid) backend_->unlock_slot(kMaxHolders + i);
      continue;  // another party reclaims it, or the claimer finished its claim
    }
    // The word matched, but it may be a new occupant's (the judged one left, another claimed
    // the slot with the same word): a claim bumps the incarnation and takes the lock first.
    if (slot.incarnation.load(std::memory_order_acquire) != incarnation ||
        ((kind == kSlotActive || kind == kSlotClaiming || kind == kSlotLeaving) &&
         backend_->lock_liveness(i) != HolderLiveness::kDead)) {
      expected = mine;
      slot.state.compare_exchange_strong(expected, state, std::memory_order_acq_rel);
      if (by_pid) backend_->unlock_slot(kMaxHolders + i);
      continue;
    }
    const uint64_t n = reclaim_holder(i + 1);
    slot.reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    header_->reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    freed += n;
    // A reaper killed between these two stores leaves the attach count one high, a unit of
    // nobody: the last live party to leave drops it with its teardown (Arena::detach). The
    // other order would let a takeover of this reap give the unit back a second time.
    free_slot(slot);
    const uint64_t before = owes_count ? header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel) : 0;
    if (by_pid) backend_->unlock_slot(kMaxHolders + i);
    // The dead party's unit was the last: possible only for a reaper not counted itself (one
    // still claiming its slot, all slots taken) or after a forged count. Then the reaper is the
    // last party out and tears down (unless a live active slot shows the count lied).
    if (owes_count && holders_count(before) == 1) tear_down();
  }
  return freed;
}

uint64_t recover_queues(Arena& arena, uint32_t dead) {
  struct Queue {
    ChannelHeader* header = nullptr;
    std::vector<std::pair<BlockRef, uint64_t>> nodes;  // linked or claimed nodes, state as walked
  };
  std::unordered_map<uint32_t, Queue> queues;
  arena.for_each_cell([&](const CellInfo& c) {
    if (c.kind == CellInfo::kBlock) {
      if ((c.block->flags.load(std::memory_order_relaxed) & kBlockFlagArena) == 0 ||
          c.bytes < sizeof(BlockHeader) + sizeof(ChannelHeader)) {
        return;
      }
      const Offset at = c.offset + sizeof(BlockHeader);
      auto* h = arena.translate_as<ChannelHeader>(at);
      if (h != nullptr && h->magic == kChannelMagic && h->version == kChannelLayoutVersion) {
        queues[channel_tag(at)].header = h;
      }
    } else if (c.kind == CellInfo::kNode) {
      const uint64_t s = c.node->state.load(std::memory_order_acquire);
      if (node_kind(s) == kNodeLinked || node_kind(s) == kNodeClaimed) {
        queues[node_channel(s)].nodes.emplace_back(offset_to_ref(c.offset), s);
      }
    }
  });
  uint64_t freed = 0;
  for (auto& [tag, q] : queues) {
    if (q.header == nullptr) continue;
    ChannelHeader& h = *q.header;
    bool consistent = false;
    const std::unordered_set<BlockRef> in_queue = snapshot_queue(arena, h, tag, &consistent);
    for (const auto& [ref, walked] : q.nodes) {
      QueueNode* n = arena.find_node(ref);
      if (n == nullptr || n->state.load(std::memory_order_acquire) != walked) continue;  // moved on
      const BlockRef block_ref = n->block.load(std::memory_order_relaxed);
      const uint32_t generation = n->generation.load(std::memory_order_relaxed);
      // Still the same incarnation (a recycled node has a new generation): the descriptor
      // read above is this node's.
      if (n->state.load(std::memory_order_acquire) != walked) continue;
      BlockHeader* block = arena.find_block(block_ref);
      const uint32_t block_state = block != nullptr ? block->state.load(std::memory_order_acquire) : 0;
      const bool block_is_message = block != nullptr && state_generation(block_state) == generation;
      const bool queued = in_queue.count(ref) != 0;
      if (node_kind(walked) == kNodeLinked && node_holder(walked) == dead) {
        if (queued) {
          // Linked before its sender died: finish the send, the message is delivered.
          if (block_is_message && state_kind(block_state) == kBlockSending) {
            arena.complete_send(block_ref, block_state);
          }
        } else if (consistent) {
          // Named for a send, never linked (nothing was counted): free the node; the block, if
          // it was already kSending, is freed (still kReserved, the holder pass frees it).
          arena.free_node_from(ref, walked);
          const bool sending = block_is_message && state_kind(block_state) == kBlockSending &&
                               state_holder(block_state) == dead;
          if (sending && arena.reclaim_block(block_ref, block_state) == Status::kOk) {
            ++freed;
          }
        }
        // Not knowable (the head kept moving): the holder pass frees a kSending block; a linked
        // message is then skipped by its receiver, an unlinked node stays allocated.
      } else if (node_kind(walked) == kNodeClaimed) {
        if (node_holder(walked) == dead && block_is_message &&
            (state_kind(block_state) == kBlockQueued || state_kind(block_state) == kBlockSending)) {
          // Claimed by a receiver that died before taking the block: it goes with the receiver.
          if (arena.reclaim_block(block_ref, block_state) == Status::kOk) ++freed;
        }
        if (consistent && !queued) {
          // Behind the head: an old dummy whose advancer died before freeing it (or one a
          // repair cut off). If the advancer is alive and frees it first, this CAS fails.
          arena.free_node_from(ref, walked, /*count_refusal=*/false);
        }
      }
    }
  }
  return freed;
}

}  // namespace memchannel
