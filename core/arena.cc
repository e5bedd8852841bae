#include "core/arena.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <pthread.h>
#include <thread>
#include <vector>

#include "core/channel.h"

namespace memchannel {
namespace {

constexpr uint64_t kInitialSegmentBytes = 4ull << 20;
constexpr uint64_t kHeaderBytes = (sizeof(ArenaHeader) + kUnit - 1) & ~(kUnit - 1);
constexpr int kMaxClaimRetries = 16;     // free-list entries that fail validation before giving up
constexpr uint32_t kStealClasses = 16;   // larger classes searched when capacity is exhausted
void bump_fork_generation() { detail::g_fork_generation.fetch_add(1, std::memory_order_relaxed); }
// Registered when the library loads, so it runs before any child handler registered later
// (the Python registry's reattaches arenas and channels and reads the new generation).
const int g_fork_handler_installed = pthread_atfork(nullptr, nullptr, bump_fork_generation);

uint64_t round_up_pow2(uint64_t v) { return v <= 1 ? 1 : (1ull << std::bit_width(v - 1)); }

bool is_plain_bytes(const PayloadLayout& layout) {
  return layout.itemsize == 1 && layout.ndim == 1 && layout.format == "B";
}

// The 64-bit word of a cell that holds its magic (see block.h, "Carving").
uint64_t* cell_word(uint8_t* cell) { return reinterpret_cast<uint64_t*>(cell + kCellWordOffset); }
uint64_t load_cell_word(uint8_t* cell) { return __atomic_load_n(cell_word(cell), __ATOMIC_ACQUIRE); }

// A counter stripe may go below zero on its own (wrapping); only the sum is meaningful.
void stripe_sub(std::atomic<uint64_t>& counter, uint64_t n) { counter.fetch_sub(n, std::memory_order_relaxed); }

}  // namespace

#if defined(MEMCHANNEL_TEST_HOOKS)
namespace detail {
std::atomic<CrashHook> g_crash_hook{nullptr};
}  // namespace detail
#endif

namespace detail {
// The child of every fork() bumps it (see fork_generation() in arena.h).
std::atomic<uint64_t> g_fork_generation{0};
}  // namespace detail

const char* to_string(CrashPoint p) {
  switch (p) {
    case CrashPoint::kAllocPopped: return "alloc_popped";
    case CrashPoint::kAllocCarveLocked: return "alloc_carve_locked";
    case CrashPoint::kAllocCarved: return "alloc_carved";
    case CrashPoint::kAllocClaimed: return "alloc_claimed";
    case CrashPoint::kReleaseRefDropped: return "release_ref_dropped";
    case CrashPoint::kReleaseMarkedFree: return "release_marked_free";
    case CrashPoint::kReleasePushed: return "release_pushed";
    case CrashPoint::kNodePopped: return "node_popped";
    case CrashPoint::kNodeCarveLocked: return "node_carve_locked";
    case CrashPoint::kNodeCarved: return "node_carved";
    case CrashPoint::kNodeClaimed: return "node_claimed";
    case CrashPoint::kNodeConvertClaimed: return "node_convert_claimed";
    case CrashPoint::kNodeConvertCells: return "node_convert_cells";
    case CrashPoint::kNodeConverted: return "node_converted";
    case CrashPoint::kNodeMarkedFree: return "node_marked_free";
    case CrashPoint::kSendNodeAllocated: return "send_node_allocated";
    case CrashPoint::kSendNamed: return "send_named";
    case CrashPoint::kSendMarkedSending: return "send_marked_sending";
    case CrashPoint::kSendLinked: return "send_linked";
    case CrashPoint::kSendTailSwung: return "send_tail_swung";
    case CrashPoint::kSendMarkedQueued: return "send_marked_queued";
    case CrashPoint::kSendNotified: return "send_notified";
    case CrashPoint::kRecvClaimed: return "recv_claimed";
    case CrashPoint::kRecvTaken: return "recv_taken";
    case CrashPoint::kRecvHeadAdvanced: return "recv_head_advanced";
    case CrashPoint::kRecvTransferred: return "recv_transferred";
    case CrashPoint::kRecvOldHeadFreed: return "recv_old_head_freed";
    case CrashPoint::kGrowSegmentClaimed: return "grow_segment_claimed";
    case CrashPoint::kGrowSegmentCreated: return "grow_segment_created";
    case CrashPoint::kCount: break;
  }
  return "unknown crash point";
}

Arena::Arena(std::unique_ptr<MemoryBackend> backend, ArenaHeader* header, uint64_t capacity)
    : backend_(std::move(backend)), header_(header), capacity_(capacity),
      sweeps_(backend_->tracks_holders()) {}

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
}

Arena::~Arena() { detach(); }

void Arena::detach() {
  if (detached_.exchange(true, std::memory_order_acq_rel)) return;
  // A forked child that never re-attached (reattach_after_fork) holds neither the slot nor the
  // count it inherited: they are its parent's, and stay so.
  if (fork_generation_ != fork_generation()) return;
  // Dead holders still count as attached until reaped: reap them so the last live process
  // really is the last and removes the segments.
  reap_dead_holders();
  if (holder_ != 0) free_slot(header_->holders[holder_ - 1]);
  if (header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    backend_->remove_segments(header_->segment_count.load(std::memory_order_acquire));
  }
}

void Arena::reattach_after_fork() {
  if (detached_.load(std::memory_order_acquire)) return;
  // Heap memory is private to the child after fork: its counts are its own copy.
  if (!backend_->tracks_holders()) {
    fork_generation_ = fork_generation();
    return;
  }
  uint32_t attached = header_->attached_holders.load(std::memory_order_acquire);
  do {
    if (attached == 0) {
      detached_.store(true, std::memory_order_release);
      return;
    }
  } while (!header_->attached_holders.compare_exchange_weak(attached, attached + 1,
                                                            std::memory_order_acq_rel));
  holder_ = 0;  // the inherited id is the parent's: blocks it names are not ours
  if (claim_holder_slot() != Status::kOk) {
    header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel);
    detached_.store(true, std::memory_order_release);
    return;
  }
  fork_generation_ = fork_generation();  // the slot and the count are now this process's
}

Status Arena::claim_holder_slot() {
  // Identity first (it may read /proc). The claim names the claimer's pid, so a claimer killed
  // before its identity is complete is still found dead (see reap_dead_holders).
  const HolderIdentity me = backend_->self_identity();
  for (int round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < kMaxHolders; ++i) {
      HolderSlot& slot = header_->holders[i];
      uint32_t expected = kSlotFree;
      if (!slot.state.compare_exchange_strong(expected, slot_claiming(me.words[0]), std::memory_order_acq_rel)) {
        continue;
      }
      slot.identity[0].store(me.words[0], std::memory_order_relaxed);
      slot.identity[1].store(me.words[1], std::memory_order_relaxed);
      incarnation_ = slot.incarnation.fetch_add(1, std::memory_order_relaxed) + 1;
      slot.state.store(kSlotActive, std::memory_order_release);  // identity visible to reapers
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
  const HolderIdentity id{{slot.identity[0].load(std::memory_order_relaxed),
                           slot.identity[1].load(std::memory_order_relaxed)}};
  if (slot.state.load(std::memory_order_acquire) != kSlotActive) return false;
  return backend_->liveness(id) != HolderLiveness::kDead;
}

template <typename Visit>
void Arena::walk_cells(Visit&& visit, uint64_t* bad_cells) {
  const uint32_t count = std::min(header_->segment_count.load(std::memory_order_acquire), kMaxSegments);
  const uint64_t carve_at = header_->carve.load(std::memory_order_acquire);
  for (uint32_t seg = 0; seg < count; ++seg) {
    uint8_t* base = segment_base(seg);
    if (base == nullptr) continue;
    const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
    const uint64_t end = seg == segment_of(carve_at) ? std::min(within_segment(carve_at), size) : size;
    uint64_t at = seg == 0 ? kHeaderBytes : 0;
    while (at + kUnit <= end) {
      uint8_t* cell = base + at;
      const uint64_t word = load_cell_word(cell);
      const uint32_t magic = static_cast<uint32_t>(word >> 32);
      CellInfo info{CellInfo::kBlock, make_offset(seg, at), kUnit, nullptr, nullptr, 0};
      if (is_carving_word(word)) {
        // A carve in progress, or one whose carver died: its size is in the word.
        const uint64_t bytes = carving_units(word) << kUnitShift;
        if (bytes > end - at) { ++*bad_cells; break; }
        info.kind = CellInfo::kCarving;
        info.bytes = bytes;
        info.carving_word = word;
      } else if (magic == kNodeMagic) {
        info.kind = CellInfo::kNode;
        info.node = reinterpret_cast<QueueNode*>(cell);
      } else if (magic == kBlockMagic) {
        auto* hdr = reinterpret_cast<BlockHeader*>(cell);
        const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
        if (cls >= kNumClasses) { ++*bad_cells; break; }
        const uint64_t bytes = class_units(cls) << kUnitShift;
        if (bytes > end - at) { ++*bad_cells; break; }
        info.bytes = bytes;
        info.block = hdr;
      } else {
        // A segment's unused tail is zero; anything else before the carve cursor is unknown
        // (carves publish their size before the cursor moves, so it is garbage): stop.
        if (seg == segment_of(carve_at) || magic != 0 || static_cast<uint32_t>(word) != 0) ++*bad_cells;
        break;
      }
      visit(info);
      at += info.bytes;
    }
  }
}

uint64_t Arena::for_each_cell(const std::function<void(const CellInfo&)>& visit) {
  uint64_t bad = 0;
  walk_cells([&](const CellInfo& c) { visit(c); }, &bad);
  return bad;
}

bool Arena::holder_alive(uint32_t holder) {
  if (!backend_->tracks_holders() || holder == 0 || holder == holder_) return true;
  if (holder > kMaxHolders) return false;
  HolderSlot& slot = header_->holders[holder - 1];
  const uint32_t state = slot.state.load(std::memory_order_acquire);
  if (slot_kind(state) == kSlotClaiming) return true;  // identity not yet published: assume alive
  if (state != kSlotActive) return false;
  const HolderIdentity id{{slot.identity[0].load(std::memory_order_relaxed),
                           slot.identity[1].load(std::memory_order_relaxed)}};
  return backend_->liveness(id) != HolderLiveness::kDead;
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
  hdr->flags.store(0, std::memory_order_relaxed);
  return free_block(ref, hdr, mine);
}

bool Arena::complete_send(BlockRef ref, uint32_t expected) {
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr || state_kind(expected) != kBlockSending) return false;
  uint32_t word = expected;
  return hdr->state.compare_exchange_strong(word, make_state(state_generation(expected), 0, kBlockQueued),
                                            std::memory_order_acq_rel);
}

void Arena::help_carve(uint64_t cursor, uint64_t carving_word) {
  const uint32_t seg = segment_of(cursor);
  const uint64_t size = seg < kMaxSegments ? sizes_[seg].load(std::memory_order_relaxed) : 0;
  const uint64_t within = within_segment(cursor);
  const uint64_t bytes = carving_units(carving_word) << kUnitShift;
  if (within > size || bytes > size - within) {
    // No carver writes a word that does not fit: garbage. Clear it so carving can go on.
    note_corruption();
    if (uint8_t* cell = translate(cursor, kUnit)) {
      uint64_t w = carving_word;
      __atomic_compare_exchange_n(cell_word(cell), &w, uint64_t{0}, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE);
    }
    return;
  }
  uint64_t c = cursor;
  header_->carve.compare_exchange_strong(c, cursor + bytes, std::memory_order_acq_rel);
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
  for (uint32_t i = 0; i < kMaxHolders; ++i) {
    HolderSlot& slot = header_->holders[i];
    if (i + 1 == holder_) continue;
    const uint32_t state = slot.state.load(std::memory_order_acquire);
    const uint32_t kind = slot_kind(state);
    if (kind == kSlotReclaiming) {
      // A reap in progress, or one whose reaper was killed half way (the 10-minute soak found
      // such a slot, and with it the arena's attach count, stuck for good): finish it. Every
      // step of reclaim_holder is a CAS from a state naming the dead holder, so running it
      // again completes what the first reaper left and repeats nothing it did.
      if (occupant_alive(slot_reaper(state), slot_reaper_incarnation(state), 0xffff)) continue;
    } else if (kind == kSlotActive || kind == kSlotClaiming) {
      const HolderIdentity id{{slot.identity[0].load(std::memory_order_relaxed),
                               slot.identity[1].load(std::memory_order_relaxed)}};
      if (kind == kSlotClaiming && (id.words[0] == 0 || id.words[1] == 0)) {
        // A claimer killed before it wrote its identity (identities are cleared when a slot is
        // freed, so a complete one is the claimer's own): its pid is in the claim itself.
        if (backend_->liveness(HolderIdentity{{slot_claimer(state), 0}}) != HolderLiveness::kDead) continue;
      } else if (backend_->liveness(id) != HolderLiveness::kDead) {
        continue;
      }
    } else {
      continue;
    }
    uint32_t expected = state;
    if (!slot.state.compare_exchange_strong(expected, slot_reclaiming(holder_, incarnation_),
                                            std::memory_order_acq_rel)) {
      continue;  // another party reclaims it, or the claimer finished its claim
    }
    const uint64_t n = reclaim_holder(i + 1);
    slot.reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    header_->reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    freed += n;
    // A reaper killed between these two stores leaves the attach count one high: the segments
    // then outlive the last process until cleanup_dead_arenas finds every holder dead (the
    // other order would risk removing them under a live process).
    free_slot(slot);
    header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel);
  }
  return freed;
}

ArenaCensus Arena::census() {
  ArenaCensus c;
  walk_cells([&](const CellInfo& cell) {
    if (cell.kind == CellInfo::kCarving) {
      ++c.carving_cells;
      return;
    }
    if (cell.kind == CellInfo::kNode) {
      ++c.nodes;
      switch (node_kind(cell.node->state.load(std::memory_order_acquire))) {
        case kNodeFree: ++c.nodes_free; break;
        case kNodeHeld: ++c.nodes_held; break;
        case kNodeLinked: ++c.nodes_linked; break;
        case kNodeClaimed: ++c.nodes_claimed; break;
      }
      return;
    }
    ++c.blocks;
    if ((cell.block->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      ++c.arena_cells;
      return;
    }
    switch (state_kind(cell.block->state.load(std::memory_order_acquire))) {
      case kBlockFree: ++c.free_blocks; break;
      case kBlockReserved: ++c.reserved; break;
      case kBlockQueued: ++c.queued; break;
      case kBlockReceived: ++c.received; break;
      case kBlockSending: ++c.sending; break;
      case kBlockTransferred: ++c.transferred; break;
    }
  }, &c.bad_cells);
  // Every block on a free list must be free, of the list's class, and listed once (a quiescent
  // check); the same for the node free list.
  std::vector<BlockRef> listed;
  for (uint32_t cls = 0; cls < kNumClasses; ++cls) {
    BlockRef ref = tagged_ref(header_->free_lists[cls].head.load(std::memory_order_acquire));
    for (uint64_t steps = 0; ref != 0; ++steps) {
      BlockHeader* hdr = block_header(ref);
      if (hdr == nullptr || steps > c.blocks) { c.free_lists_consistent = false; break; }
      if (state_kind(hdr->state.load(std::memory_order_acquire)) != kBlockFree ||
          hdr->size_class.load(std::memory_order_relaxed) != cls) {
        c.free_lists_consistent = false;
      }
      listed.push_back(ref);
      ref = hdr->next_free.load(std::memory_order_relaxed);
    }
  }
  std::sort(listed.begin(), listed.end());
  if (std::adjacent_find(listed.begin(), listed.end()) != listed.end()) c.free_lists_consistent = false;
  c.free_listed = listed.size();
  std::vector<BlockRef> nodes_listed;
  BlockRef ref = tagged_ref(header_->node_free.load(std::memory_order_acquire));
  for (uint64_t steps = 0; ref != 0; ++steps) {
    QueueNode* n = find_node(ref);
    if (n == nullptr || steps > c.nodes) { c.node_list_consistent = false; break; }
    if (node_kind(n->state.load(std::memory_order_acquire)) != kNodeFree) c.node_list_consistent = false;
    nodes_listed.push_back(ref);
    ref = n->free_next.load(std::memory_order_relaxed);
  }
  std::sort(nodes_listed.begin(), nodes_listed.end());
  if (std::adjacent_find(nodes_listed.begin(), nodes_listed.end()) != nodes_listed.end()) {
    c.node_list_consistent = false;
  }
  c.nodes_free_listed = nodes_listed.size();
  return c;
}

Result<std::shared_ptr<Arena>> Arena::create(std::unique_ptr<MemoryBackend> backend,
                                             uint64_t capacity, uint64_t arena_id) {
  if (capacity < kHeaderBytes + kUnit * 16) return {Status::kInvalidArgument, nullptr};
  const uint64_t seg0 = std::min({capacity, kInitialSegmentBytes, kMaxSegmentBytes});
  auto seg = backend->create_segment(0, seg0);
  if (!seg.ok()) return {seg.status, nullptr};
  auto* header = new (seg.value) ArenaHeader{};  // memory is zero-filled; this starts lifetimes
  header->magic = kArenaMagic;
  header->version = kArenaLayoutVersion;
  header->header_bytes = static_cast<uint32_t>(kHeaderBytes);
  header->capacity = capacity;
  header->arena_id = arena_id;
  header->segment_bytes[0].store(seg0, std::memory_order_relaxed);
  header->segment_count.store(1, std::memory_order_relaxed);
  header->carve.store(make_offset(0, kHeaderBytes), std::memory_order_relaxed);
  header->counters.carved_bytes.store(kHeaderBytes, std::memory_order_relaxed);
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity));
  arena->sizes_[0].store(seg0, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
  header->attached_holders.store(1, std::memory_order_relaxed);  // the creator
  if (arena->backend_->tracks_holders()) {
    const Status s = arena->claim_holder_slot();
    if (s != Status::kOk) return {s, nullptr};
  }
  // Published last: an opener that sees kArenaReady sees every field above (acquire).
  header->ready.store(kArenaReady, std::memory_order_release);
  return {Status::kOk, std::move(arena)};
}

Result<std::shared_ptr<Arena>> Arena::attach(std::unique_ptr<MemoryBackend> backend,
                                             uint64_t segment0_bytes) {
  if (segment0_bytes < kHeaderBytes || segment0_bytes > kMaxSegmentBytes) {
    return {Status::kCorruptedLength, nullptr};
  }
  auto seg = backend->map_segment(0, segment0_bytes);
  if (!seg.ok()) return {seg.status, nullptr};
  auto* header = reinterpret_cast<ArenaHeader*>(seg.value);
  if (header->ready.load(std::memory_order_acquire) != kArenaReady) return {Status::kNotReady, nullptr};
  if (header->magic != kArenaMagic) return {Status::kBadMagic, nullptr};
  if (header->version != kArenaLayoutVersion || header->header_bytes != kHeaderBytes) {
    return {Status::kVersionMismatch, nullptr};
  }
  const uint64_t capacity_untrusted = header->capacity;
  if (capacity_untrusted < segment0_bytes ||
      capacity_untrusted > kMaxSegmentBytes * kMaxSegments ||
      header->segment_bytes[0].load(std::memory_order_acquire) != segment0_bytes) {
    return {Status::kCorruptedLength, nullptr};
  }
  // Join the holders unless the last one is already tearing the arena down.
  uint32_t attached = header->attached_holders.load(std::memory_order_acquire);
  do {
    if (attached == 0 || attached > kMaxHolders) return {Status::kNotFound, nullptr};
  } while (!header->attached_holders.compare_exchange_weak(attached, attached + 1,
                                                           std::memory_order_acq_rel));
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity_untrusted));
  arena->sizes_[0].store(segment0_bytes, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
  if (arena->backend_->tracks_holders()) {
    arena->reap_dead_holders();
    const Status s = arena->claim_holder_slot();
    if (s != Status::kOk) return {s, nullptr};
  }
  return {Status::kOk, std::move(arena)};
}

uint64_t Arena::max_payload() const {
  const uint64_t seg0 = sizes_[0].load(std::memory_order_relaxed);
  const uint64_t largest_segment =
      std::min(std::max(capacity_ - seg0, seg0 - kHeaderBytes), kMaxSegmentBytes);
  const uint64_t block = std::min(largest_segment, kMaxBlockBytes);
  // The largest class that fits, minus the header.
  const uint32_t cls = class_for_units(block >> kUnitShift);
  uint64_t bytes = class_units(cls) << kUnitShift;
  if (bytes > block) bytes = cls == 0 ? 0 : class_units(cls - 1) << kUnitShift;
  return bytes > sizeof(BlockHeader) ? bytes - sizeof(BlockHeader) : 0;
}

namespace {
// The payload of the largest size class whose blocks fit in `block` bytes.
uint64_t largest_class_payload(uint64_t block) {
  const uint32_t cls = class_for_units(block >> kUnitShift);
  uint64_t bytes = class_units(cls) << kUnitShift;
  if (bytes > block) bytes = cls == 0 ? 0 : class_units(cls - 1) << kUnitShift;
  return bytes > sizeof(BlockHeader) ? bytes - sizeof(BlockHeader) : 0;
}
}  // namespace

uint64_t Arena::reachable_payload() const {
  // A block of a class can be served if one exists (it lies in a segment, in the part carved
  // so far) or can still be carved (after the carve cursor, or in a segment still to be made).
  // Segment sizes and the cursor are read from shared memory: they only decide which error a
  // failed request reports. A segment being created could be of any size: then judge nothing.
  const uint64_t cursor = header_->carve.load(std::memory_order_acquire);
  uint64_t largest = 0, total = 0;
  uint32_t i = 0;
  for (; i < kMaxSegments; ++i) {
    const uint64_t b = header_->segment_bytes[i].load(std::memory_order_acquire);
    if (b == 0) break;
    if (b == kSegmentCreating || b > kMaxSegmentBytes) return max_payload();
    const uint64_t start = i == 0 ? std::min(b, kHeaderBytes) : 0;
    uint64_t usable = b - start;
    if (i == segment_of(cursor) && within_segment(cursor) >= start && within_segment(cursor) <= b) {
      usable = std::max(within_segment(cursor) - start, b - within_segment(cursor));  // carved, left
    }
    largest = std::max(largest, usable);
    total += b;
  }
  if (i < kMaxSegments && total < capacity_) largest = std::max(largest, std::min(capacity_ - total, kMaxSegmentBytes));
  // Room for the queue node a send needs besides the block: what is reported here must be
  // sendable, not only reservable, or a send of it would wait forever on a small arena.
  largest = largest > kUnit ? largest - kUnit : 0;
  return std::min(max_payload(), largest_class_payload(std::min(largest, kMaxBlockBytes)));
}

uint8_t* Arena::map_segment_slow(uint32_t index) {
  const uint64_t bytes_untrusted = header_->segment_bytes[index].load(std::memory_order_acquire);
  if (bytes_untrusted == 0 || is_creating_word(bytes_untrusted) ||
      bytes_untrusted > kMaxSegmentBytes) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(map_mutex_);
  uint8_t* base = bases_[index].load(std::memory_order_acquire);
  if (base != nullptr) return base;
  auto mapped = backend_->map_segment(index, bytes_untrusted);
  if (!mapped.ok()) return nullptr;
  sizes_[index].store(bytes_untrusted, std::memory_order_relaxed);
  bases_[index].store(mapped.value, std::memory_order_release);  // pairs with segment_base's load
  return mapped.value;
}

BlockHeader* Arena::block_header(BlockRef ref) {
  if (ref == 0) return nullptr;
  auto* hdr = translate_as<BlockHeader>(ref_to_offset(ref));
  if (hdr == nullptr || load_cell_magic(hdr) != kBlockMagic) return nullptr;
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  if (cls >= kNumClasses || translate(ref_to_offset(ref), class_units(cls) << kUnitShift) == nullptr) {
    return nullptr;
  }
  return hdr;
}

QueueNode* Arena::find_node(BlockRef ref) {
  if (ref == 0) return nullptr;
  auto* n = translate_as<QueueNode>(ref_to_offset(ref));
  if (n == nullptr || load_cell_magic(n) != kNodeMagic) return nullptr;
  return n;
}

QueueNode* Arena::node(BlockRef ref) {
  if (ref == 0) return nullptr;
  QueueNode* n = find_node(ref);
  if (n == nullptr) note_corruption();
  return n;
}

Status Arena::grow(uint32_t current, uint64_t at_least) {
  // Never waits: a segment another live party is creating makes this kInterrupted at once, and
  // the caller (carve) reports kOutOfCapacity, so its caller waits on the space EventCount with
  // its own deadline (the creator wakes it when the segment is published). A segment whose
  // creator died half way (its creating word names a holder that is gone) is taken over and
  // created again: the dead creator's file, if any, is replaced (ShmBackend::create_segment).
  const uint32_t next = current + 1;
  if (next >= kMaxSegments) return Status::kOutOfCapacity;
  uint64_t existing = header_->segment_bytes[next].load(std::memory_order_acquire);
  if (is_creating_word(existing) && bases_[next].load(std::memory_order_acquire) != nullptr) {
    // Another thread of this process is publishing the segment it just created (it maps the
    // segment before it writes the size): wait for it like for any live creator.
    if (existing == make_creating_word(holder_, incarnation_)) return Status::kInterrupted;
    // This process has mapped that segment already: it was created, and the entry was
    // rewritten since. Taking it over would unmap memory in use here.
    note_corruption();
    return Status::kOutOfCapacity;
  }
  if (is_creating_word(existing) && creator_alive(existing)) return Status::kInterrupted;
  if (existing == 0 || is_creating_word(existing)) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < next; ++i) {
      const uint64_t b = header_->segment_bytes[i].load(std::memory_order_acquire);
      if (is_creating_word(b) || b > kMaxSegmentBytes) return Status::kOutOfCapacity;
      total += b;
    }
    if (total >= capacity_) return Status::kOutOfCapacity;
    const uint64_t current_size = sizes_[current].load(std::memory_order_relaxed);
    uint64_t size = std::max(std::min(current_size * 2, kMaxSegmentBytes), round_up_pow2(at_least));
    size = std::min({size, capacity_ - total, kMaxSegmentBytes});
    if (size < at_least) return Status::kOutOfCapacity;
    const uint64_t mine = make_creating_word(holder_, incarnation_);
    if (!header_->segment_bytes[next].compare_exchange_strong(existing, mine, std::memory_order_acq_rel)) {
      return Status::kOk;  // someone else claimed it (or took it over); retry against theirs
    }
    MEMCHANNEL_CRASH_POINT(kGrowSegmentClaimed);
    auto created = backend_->create_segment(next, size);
    if (!created.ok()) {
      uint64_t w = mine;
      header_->segment_bytes[next].compare_exchange_strong(w, 0, std::memory_order_acq_rel);
      notify_all(header_->space);  // waiters for this segment: it will not come from us
      return created.status == Status::kSystemError ? Status::kOutOfCapacity : created.status;
    }
    {
      std::lock_guard<std::mutex> lock(map_mutex_);
      sizes_[next].store(size, std::memory_order_relaxed);
      bases_[next].store(created.value, std::memory_order_release);
    }
    MEMCHANNEL_CRASH_POINT(kGrowSegmentCreated);
    uint64_t w = mine;
    if (!header_->segment_bytes[next].compare_exchange_strong(w, size, std::memory_order_acq_rel)) {
      // Taken over meanwhile (we were thought dead: a forged or misread slot). Ours is not the
      // arena's segment: forget our mapping and use theirs.
      note_corruption();
      std::lock_guard<std::mutex> lock(map_mutex_);
      bases_[next].store(nullptr, std::memory_order_release);
      sizes_[next].store(0, std::memory_order_relaxed);
      return Status::kOk;
    }
    uint32_t count = header_->segment_count.load(std::memory_order_acquire);
    while (count < next + 1 &&
           !header_->segment_count.compare_exchange_weak(count, next + 1, std::memory_order_acq_rel)) {
    }
    notify_all(header_->space);  // callers that found the segment being created wait there
  }
  // Move the carve cursor past the full segment (whoever gets there first).
  uint64_t cur = header_->carve.load(std::memory_order_acquire);
  while (segment_of(cur) == current &&
         !header_->carve.compare_exchange_weak(cur, make_offset(next, 0), std::memory_order_acq_rel)) {
  }
  return Status::kOk;
}

void Arena::publish_cell(uint8_t* cell, uint32_t magic) {
  // One 64-bit store replaces the carving word: the cell's fields written before it are
  // visible to whoever sees the magic (acquire).
  __atomic_store_n(cell_word(cell), static_cast<uint64_t>(magic) << 32, __ATOMIC_RELEASE);
}

Result<Offset> Arena::carve(uint64_t bytes, bool node, int64_t creator_wait_ns) {
  const uint64_t mine = make_carving_word(holder_, bytes >> kUnitShift);
  int64_t stalled_since = 0;
  for (;;) {
    const uint64_t cur = header_->carve.load(std::memory_order_acquire);
    const uint32_t seg = segment_of(cur);
    const uint64_t within = within_segment(cur);
    uint8_t* base = seg < kMaxSegments ? segment_base(seg) : nullptr;
    const uint64_t size = base != nullptr ? sizes_[seg].load(std::memory_order_relaxed) : 0;
    if (base == nullptr || (within & (kUnit - 1)) != 0 || within > size ||
        (seg == 0 && within < kHeaderBytes)) {
      note_corruption();  // a cursor outside the segments, off the 64-byte grid, or in the header
      return {Status::kCorruptedOffset, 0};
    }
    if (size - within >= kUnit) {
      uint8_t* cell = base + within;
      const uint64_t w = load_cell_word(cell);
      if (is_carving_word(w)) {  // another carver claimed this cell: move the cursor for it
        help_carve(cur, w);
        continue;
      }
      if (w != 0) {
        // An initialised cell at the cursor: our cursor read is stale, or the cursor is forged.
        if (header_->carve.load(std::memory_order_acquire) != cur) continue;
        note_corruption();
        return {Status::kCorruptedOffset, 0};
      }
      if (bytes <= size - within) {
        uint64_t expected = 0;
        if (!__atomic_compare_exchange_n(cell_word(cell), &expected, mine, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
          continue;
        }
        if (node) {
          MEMCHANNEL_CRASH_POINT(kNodeCarveLocked);
        } else {
          MEMCHANNEL_CRASH_POINT(kAllocCarveLocked);
        }
        // If this CAS fails, someone moved the cursor on our behalf (help_carve) or on to the
        // next segment (grow): either way the cell at `cur` is carved, and ours.
        uint64_t c = cur;
        header_->carve.compare_exchange_strong(c, cur + bytes, std::memory_order_acq_rel);
        header_->counters.carved_bytes.fetch_add(bytes, std::memory_order_relaxed);
        return {Status::kOk, cur};
      }
    }
    const Status s = grow(seg, bytes);
    if (s == Status::kInterrupted) {
      // Another live party is creating the next segment. A caller with a deadline (or the GIL)
      // does not wait here: it waits on the space EventCount, which the creator wakes.
      if (creator_wait_ns <= 0) return {Status::kOutOfCapacity, 0};
      const int64_t now = monotonic_ns();
      if (stalled_since == 0) stalled_since = now;
      if (now - stalled_since > creator_wait_ns) return {Status::kOutOfCapacity, 0};
      std::this_thread::yield();
      continue;
    }
    if (s != Status::kOk) return {s, 0};
  }
}

Result<BlockRef> Arena::pop_free(std::atomic<uint64_t>& head, bool nodes, uint32_t cls, uint64_t* word,
                                 void** cell) {
  uint64_t h = head.load(std::memory_order_acquire);
  for (;;) {
    const BlockRef ref = tagged_ref(h);
    if (ref == 0) return {Status::kEmpty, 0};
    std::atomic<uint32_t>* link = nullptr;
    uint64_t state = 0;
    bool ok = false;
    void* at = nullptr;
    if (nodes) {
      if (QueueNode* n = find_node(ref)) {
        at = n;
        link = &n->free_next;
        state = n->state.load(std::memory_order_acquire);
        ok = node_kind(state) == kNodeFree;
      }
    } else if (BlockHeader* hdr = block_header(ref)) {
      at = hdr;
      link = &hdr->next_free;
      state = hdr->state.load(std::memory_order_acquire);
      ok = state_kind(static_cast<uint32_t>(state)) == kBlockFree &&
           hdr->size_class.load(std::memory_order_relaxed) == cls;
    }
    // A stale `next` (the top was popped and re-pushed meanwhile) fails the tag CAS below.
    const BlockRef next = link != nullptr ? link->load(std::memory_order_relaxed) : 0;
    if (!ok || next == ref) {
      // Only corruption if the head still names this entry: an entry just popped by another
      // party is no longer free, and its pop moved the head (acquire pairs with its claim).
      const uint64_t again = head.load(std::memory_order_acquire);
      if (again != h) {
        h = again;
        continue;
      }
      // A head outside arena memory, a block that is held or of another class, a cycle:
      // detach the whole list. Its blocks leak rather than risk handing one out twice.
      note_corruption();
      head.compare_exchange_strong(h, make_tagged(tagged_tag(h) + 1, 0), std::memory_order_acq_rel);
      return {Status::kCorruptedIndex, 0};
    }
    if (head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, next),
                                   std::memory_order_acquire, std::memory_order_acquire)) {
      *word = state;
      *cell = at;
      return {Status::kOk, ref};
    }
  }
}

void Arena::push_free(std::atomic<uint64_t>& head, BlockRef ref, std::atomic<uint32_t>* link) {
  uint64_t h = head.load(std::memory_order_relaxed);
  do {
    link->store(tagged_ref(h), std::memory_order_relaxed);
    // release: the link store and the block's last contents happen-before the next pop (acquire).
  } while (!head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, ref),
                                       std::memory_order_release, std::memory_order_relaxed));
}

Result<BlockRef> Arena::take_free_block(uint32_t cls, uint32_t* generation, BlockHeader** hdr_out) {
  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    uint64_t word = 0;
    void* cell = nullptr;
    auto popped = pop_free(header_->free_lists[cls].head, false, cls, &word, &cell);
    if (!popped.ok()) return popped;
    MEMCHANNEL_CRASH_POINT(kAllocPopped);
    auto* hdr = static_cast<BlockHeader*>(cell);
    uint32_t expected = static_cast<uint32_t>(word);
    const uint32_t gen = (state_generation(expected) + 1) & kGenerationMask;
    if (hdr->state.compare_exchange_strong(expected, make_state(gen, holder_, kBlockReserved),
                                           std::memory_order_acq_rel)) {
      *generation = gen;
      *hdr_out = hdr;
      return popped;
    }
    note_corruption();  // popped by us, yet claimed by someone else: listed twice
  }
  return {Status::kCorruptedIndex, 0};
}

Result<BlockHandle> Arena::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                    int64_t creator_wait_ns) {
  maybe_reap();
  const bool plain = is_plain_bytes(layout);
  if (!plain && (layout.ndim > kMaxNdim || layout.format.empty() ||
                 layout.format.size() > kMaxFormatLen || layout.itemsize == 0)) {
    return {Status::kInvalidArgument, {}};
  }
  if (!plain) {
    if (layout.shape == nullptr && layout.ndim > 1) return {Status::kInvalidArgument, {}};
    uint64_t elements = 1;
    for (uint32_t i = 0; i < layout.ndim && layout.shape != nullptr; ++i) {
      if (layout.shape[i] < 0 ||
          __builtin_mul_overflow(elements, static_cast<uint64_t>(layout.shape[i]), &elements)) {
        return {Status::kInvalidArgument, {}};
      }
    }
    uint64_t total = 0;
    if (layout.shape == nullptr) {
      const bool fits = layout.ndim == 0 ? payload_bytes == layout.itemsize
                                         : payload_bytes % layout.itemsize == 0;
      if (!fits) return {Status::kInvalidArgument, {}};
    } else if (__builtin_mul_overflow(elements, uint64_t{layout.itemsize}, &total) ||
               total != payload_bytes) {
      return {Status::kInvalidArgument, {}};
    }
  }
  const uint64_t meta = plain ? 0 : meta_bytes_for(layout.ndim, static_cast<uint32_t>(layout.format.size()));
  if (payload_bytes > kMaxBlockBytes || payload_bytes > max_payload() ||
      payload_bytes + meta > max_payload()) {
    return {Status::kTooLarge, {}};
  }
  const uint64_t units = (sizeof(BlockHeader) + meta + payload_bytes + kUnit - 1) >> kUnitShift;
  const uint32_t cls = class_for_units(units);
  const uint64_t class_bytes = class_units(cls) << kUnitShift;

  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    BlockRef ref = 0;
    uint32_t generation = 0;
    BlockHeader* hdr = nullptr;
    auto taken = take_free_block(cls, &generation, &hdr);
    if (taken.ok()) {
      ref = taken.value;
    } else {
      auto carved = carve(class_bytes, false, creator_wait_ns);
      if (carved.ok()) {
        uint8_t* cell = translate(carved.value, class_bytes);
        if (cell == nullptr) return {Status::kCorruptedOffset, {}};
        MEMCHANNEL_CRASH_POINT(kAllocCarved);
        auto* fresh = reinterpret_cast<BlockHeader*>(cell);
        hdr = fresh;
        generation = 1;
        fresh->state.store(make_state(generation, holder_, kBlockReserved), std::memory_order_relaxed);
        fresh->next_free.store(0, std::memory_order_relaxed);
        fresh->size_class.store(cls, std::memory_order_relaxed);
        fresh->flags.store(0, std::memory_order_relaxed);
        publish_cell(cell, kBlockMagic);
        ref = offset_to_ref(carved.value);
      } else if (carved.status == Status::kOutOfCapacity) {
        // Capacity is spent: a free block of a larger class is better than waiting.
        for (uint32_t c = cls + 1; c < kNumClasses && c <= cls + kStealClasses && ref == 0; ++c) {
          if (tagged_ref(header_->free_lists[c].head.load(std::memory_order_relaxed)) == 0) continue;
          auto stolen = take_free_block(c, &generation, &hdr);
          if (stolen.ok()) ref = stolen.value;
        }
        if (ref == 0) {
          // Allocation pressure: blocks held by dead processes may be what is missing.
          if (reap_dead_holders() > 0) continue;
          // No segment there is, or that can still be made, holds a block of this class (nor
          // of a larger one): waiting cannot help.
          if (payload_bytes + meta > reachable_payload()) return {Status::kTooLarge, {}};
          return {Status::kOutOfCapacity, {}};
        }
      } else {
        return {carved.status, {}};
      }
    }
    const uint32_t actual_cls = hdr->size_class.load(std::memory_order_relaxed);
    stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
    stripe().bytes_in_use.fetch_add(class_units(actual_cls) << kUnitShift,
                                             std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kAllocClaimed);
    hdr->refcount.store(1, std::memory_order_relaxed);
    hdr->flags.store(0, std::memory_order_relaxed);
    hdr->length.store(payload_bytes, std::memory_order_relaxed);
    hdr->meta_bytes.store(static_cast<uint32_t>(meta), std::memory_order_relaxed);
    if (!plain) {
      auto* meta_ptr = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader);
      const BlockMetaPrefix prefix{layout.itemsize, static_cast<uint16_t>(layout.ndim),
                                   static_cast<uint16_t>(layout.format.size())};
      std::memcpy(meta_ptr, &prefix, sizeof(prefix));
      int64_t one_dim = static_cast<int64_t>(payload_bytes / layout.itemsize);
      const int64_t* shape = layout.shape != nullptr ? layout.shape : &one_dim;
      std::memcpy(meta_ptr + sizeof(prefix), shape, 8ull * layout.ndim);
      std::memcpy(meta_ptr + sizeof(prefix) + 8ull * layout.ndim, layout.format.data(),
                  layout.format.size());
    }
    return {Status::kOk, {ref, generation}};
  }
  return {Status::kCorruptedIndex, {}};
}

Status Arena::free_block(BlockRef ref, BlockHeader* hdr, uint32_t expected_state) {
  uint32_t word = expected_state;
  if (!hdr->state.compare_exchange_strong(word,
                                          make_state(state_generation(expected_state), 0, kBlockFree),
                                          std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  stripe_sub(stripe().blocks_in_use, 1);
  stripe_sub(stripe().bytes_in_use, class_units(cls) << kUnitShift);
  MEMCHANNEL_CRASH_POINT(kReleaseMarkedFree);
  push_free(header_->free_lists[cls].head, ref, &hdr->next_free);
  MEMCHANNEL_CRASH_POINT(kReleasePushed);
  notify_all(header_->space);
  return Status::kOk;
}

Status Arena::release(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  if ((hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    note_corruption();  // arena structures are freed by their owner (free_cells), never here
    return Status::kCorruptedState;
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (kind == kBlockQueued || kind == kBlockSending) {
    // A message in a queue (its sender's handle is one generation behind: send bumps it).
    note_corruption();
    return Status::kCorruptedState;
  }
  if (state_generation(word) != h.generation || kind == kBlockFree) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (kind != kBlockReserved && kind != kBlockReceived) {
    note_corruption();
    return Status::kCorruptedState;
  }
  // Held by another holder: a Buffer a forked child inherited from its parent (the child has a
  // slot of its own since reattach_after_fork). The block stays the parent's; nothing changes.
  if (state_holder(word) != (holder_ & 0xff)) return Status::kNotHolder;
  const uint32_t before = hdr->refcount.fetch_sub(1, std::memory_order_acq_rel);
  if (before == 0) {
    hdr->refcount.store(0, std::memory_order_relaxed);
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (before > 1) return Status::kOk;
  MEMCHANNEL_CRASH_POINT(kReleaseRefDropped);
  return free_block(h.ref, hdr, word);
}

Status Arena::retain(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) return Status::kCorruptedOffset;
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived)) {
    return Status::kCorruptedState;
  }
  hdr->refcount.fetch_add(1, std::memory_order_relaxed);
  return Status::kOk;
}

Status Arena::mark_received(BlockHandle h) {
  BlockHeader* hdr = block_cell(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  for (;;) {
    const BlockState kind = state_kind(word);
    // kTransferred to us: the node we claimed was freed (as an old dummy) before we got here,
    // and the party that freed it handed the message to us (Channel::advance).
    const bool ours = kind == kBlockTransferred && state_holder(word) == holder_;
    if (state_generation(word) != h.generation || (kind != kBlockQueued && kind != kBlockSending && !ours) ||
        (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      note_corruption();  // a forged or duplicated descriptor: not a message queued as this one
      return Status::kCorruptedState;
    }
    // A kSending block is linked but its sender has not yet marked it kQueued: take it anyway.
    if (hdr->state.compare_exchange_weak(word, make_state(h.generation, holder_, kBlockReceived),
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
      return Status::kOk;
    }
  }
}

bool Arena::transfer_message(BlockHandle message, uint32_t claimer) {
  BlockHeader* hdr = block_cell(message.ref);
  if (hdr == nullptr) return false;
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  for (;;) {
    const BlockState kind = state_kind(word);
    if (state_generation(word) != message.generation || (kind != kBlockQueued && kind != kBlockSending) ||
        (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      return false;  // taken by its claimer, freed by a reclaimer, or recycled: not ours to move
    }
    if (hdr->state.compare_exchange_weak(word, make_state(message.generation, claimer, kBlockTransferred),
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
      return true;
    }
  }
}

Status Arena::begin_send(BlockHandle h, uint32_t* previous) {
  BlockHeader* hdr = block_cell(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (state_generation(word) != h.generation || (kind != kBlockReserved && kind != kBlockReceived) ||
      (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    note_corruption();
    return Status::kCorruptedState;
  }
  if (state_holder(word) != (holder_ & 0xff)) return Status::kNotHolder;  // see release()
  if (hdr->refcount.load(std::memory_order_relaxed) != 1) return Status::kInvalidArgument;
  if (!hdr->state.compare_exchange_strong(word, make_state(sending_generation(h), holder_, kBlockSending),
                                          std::memory_order_acq_rel)) {
    return Status::kCorruptedState;
  }
  *previous = word;
  return Status::kOk;
}

Status Arena::abort_send(BlockHandle message, uint32_t previous) {
  BlockHeader* hdr = block_cell(message.ref);
  uint32_t word = make_state(message.generation, holder_, kBlockSending);
  if (hdr == nullptr ||
      !hdr->state.compare_exchange_strong(word, previous, std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kCorruptedState;
  }
  return Status::kOk;
}

void Arena::finish_send(BlockHandle message) {
  BlockHeader* hdr = block_cell(message.ref);
  if (hdr == nullptr) return;
  uint32_t word = make_state(message.generation, holder_, kBlockSending);
  // Fails when a receiver took the message first (kSending -> kReceived): nothing to do.
  hdr->state.compare_exchange_strong(word, make_state(message.generation, 0, kBlockQueued),
                                     std::memory_order_acq_rel);
}

Result<BlockView> Arena::view(BlockHandle h) {
  Result<BlockView> out;
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, {}};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived)) {
    return {Status::kCorruptedState, {}};
  }
  // Read each peer-written field once, then check it against private bounds.
  const uint64_t class_bytes = class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift;
  const uint64_t meta = hdr->meta_bytes.load(std::memory_order_relaxed);
  const uint64_t length = hdr->length.load(std::memory_order_relaxed);
  const uint64_t room = class_bytes - sizeof(BlockHeader);
  if (meta > room || length > room - meta || (meta % kUnit) != 0) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  BlockView& v = out.value;
  v.data = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader) + meta;
  v.length = length;
  if (meta == 0) {
    v.itemsize = 1;
    v.ndim = 1;
    v.shape[0] = static_cast<int64_t>(length);
    v.format[0] = 'B';
    v.format_len = 1;
    return out;
  }
  const uint8_t* meta_ptr = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader);
  BlockMetaPrefix prefix;
  std::memcpy(&prefix, meta_ptr, sizeof(prefix));
  if (prefix.ndim > kMaxNdim || prefix.format_len == 0 || prefix.format_len > kMaxFormatLen ||
      prefix.itemsize == 0 || meta_bytes_for(prefix.ndim, prefix.format_len) > meta) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  std::memcpy(v.shape.data(), meta_ptr + sizeof(prefix), 8ull * prefix.ndim);
  std::memcpy(v.format.data(), meta_ptr + sizeof(prefix) + 8ull * prefix.ndim, prefix.format_len);
  uint64_t elements = 1;
  for (uint32_t i = 0; i < prefix.ndim; ++i) {
    if (v.shape[i] < 0 ||
        __builtin_mul_overflow(elements, static_cast<uint64_t>(v.shape[i]), &elements)) {
      note_corruption();
      return {Status::kCorruptedLength, {}};
    }
  }
  uint64_t total = 0;
  if (__builtin_mul_overflow(elements, uint64_t{prefix.itemsize}, &total) || total != length) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  v.itemsize = prefix.itemsize;
  v.ndim = prefix.ndim;
  v.format_len = prefix.format_len;
  return out;
}

Result<uint64_t> Arena::held_length(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, 0};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived) ||
      (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    return {Status::kCorruptedState, 0};
  }
  if (state_holder(word) != (holder_ & 0xff)) return {Status::kNotHolder, 0};  // see release()
  const uint64_t room = (class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift) -
                        sizeof(BlockHeader);
  const uint64_t meta = hdr->meta_bytes.load(std::memory_order_relaxed);
  const uint64_t length = hdr->length.load(std::memory_order_relaxed);
  if (meta > room || length > room - meta) {
    note_corruption();
    return {Status::kCorruptedLength, 0};
  }
  return {Status::kOk, length};
}

uint8_t* Arena::payload(BlockHandle h, uint64_t* length_out) {
  auto v = view(h);
  if (!v.ok()) return nullptr;
  if (length_out != nullptr) *length_out = v.value.length;
  return v.value.data;
}

Result<BlockRef> Arena::allocate_node(int64_t creator_wait_ns) {
  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    uint64_t word = 0;
    void* listed = nullptr;
    auto popped = pop_free(header_->node_free, true, 0, &word, &listed);
    if (popped.ok()) {
      MEMCHANNEL_CRASH_POINT(kNodePopped);
      auto* n = static_cast<QueueNode*>(listed);
      const uint64_t held = make_node_state(0, node_generation(word) + 1, holder_, kNodeHeld);
      if (!n->state.compare_exchange_strong(word, held, std::memory_order_acq_rel)) {
        note_corruption();  // popped by us, yet claimed by someone else: listed twice
        continue;
      }
      stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
      MEMCHANNEL_CRASH_POINT(kNodeClaimed);
      return popped;
    }
    auto carved = carve(kUnit, true, creator_wait_ns);
    if (carved.ok()) {
      uint8_t* cell = translate(carved.value, kUnit);
      if (cell == nullptr) return {Status::kCorruptedOffset, 0};
      MEMCHANNEL_CRASH_POINT(kNodeCarved);
      auto* n = reinterpret_cast<QueueNode*>(cell);
      n->next.store(0, std::memory_order_relaxed);
      n->state.store(make_node_state(0, 1, holder_, kNodeHeld), std::memory_order_relaxed);
      publish_cell(cell, kNodeMagic);
      stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
      MEMCHANNEL_CRASH_POINT(kNodeClaimed);
      return {Status::kOk, offset_to_ref(carved.value)};
    }
    if (carved.status != Status::kOutOfCapacity) return {carved.status, 0};
    // Capacity is carved: cut a free data block into nodes (a queue must not wait for a node
    // while data blocks are free), or reclaim what dead holders held.
    auto converted = convert_block_to_nodes();
    if (converted.ok()) return converted;
    if (reap_dead_holders() > 0) continue;
    return {Status::kOutOfCapacity, 0};
  }
  return {Status::kCorruptedIndex, 0};
}

Result<BlockRef> Arena::convert_block_to_nodes() {
  for (uint32_t cls = 0; cls < kNumClasses; ++cls) {
    if (tagged_ref(header_->free_lists[cls].head.load(std::memory_order_relaxed)) == 0) continue;
    uint32_t generation = 0;
    BlockHeader* hdr = nullptr;
    auto taken = take_free_block(cls, &generation, &hdr);
    if (!taken.ok()) continue;
    const uint64_t units = class_units(cls);
    // Counted as a block in use while it is one (a reclaimer frees it as a block).
    stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
    stripe().bytes_in_use.fetch_add(units << kUnitShift, std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kNodeConvertClaimed);
    uint8_t* base = translate(ref_to_offset(taken.value), units << kUnitShift);
    if (base == nullptr) continue;
    const uint64_t held = make_node_state(0, 1, holder_, kNodeHeld);
    auto make_node = [&](uint8_t* cell) {
      auto* n = reinterpret_cast<QueueNode*>(cell);
      n->state.store(held, std::memory_order_relaxed);  // valid before the magic says "node"
      publish_cell(cell, kNodeMagic);
      n->next.store(0, std::memory_order_relaxed);
      n->block.store(0, std::memory_order_relaxed);
      n->generation.store(0, std::memory_order_relaxed);
      n->length.store(0, std::memory_order_relaxed);
    };
    // Cells inside the payload first: until the header cell turns, a walker sees one block
    // (kReserved by us, reclaimed whole if we die); after it, only nodes (held by us).
    for (uint64_t u = 1; u < units; ++u) make_node(base + (u << kUnitShift));
    MEMCHANNEL_CRASH_POINT(kNodeConvertCells);
    make_node(base);
    stripe_sub(stripe().blocks_in_use, 1);
    stripe_sub(stripe().bytes_in_use, units << kUnitShift);
    stripe().nodes_in_use.fetch_add(units, std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kNodeConverted);
    for (uint64_t u = 1; u < units; ++u) free_node_from(taken.value + static_cast<BlockRef>(u), held);
    return taken;
  }
  return {Status::kOutOfCapacity, 0};
}

bool Arena::free_node_from(BlockRef ref, uint64_t expected, bool count_refusal) {
  QueueNode* n = find_node(ref);
  if (n == nullptr) {
    if (count_refusal) note_corruption();
    return false;
  }
  return free_node_at(n, ref, expected, count_refusal);
}

bool Arena::free_node_at(QueueNode* n, BlockRef ref, uint64_t expected, bool count_refusal) {
  uint64_t word = expected;
  if (node_kind(expected) == kNodeFree ||
      !n->state.compare_exchange_strong(word, make_node_state(0, node_generation(expected), 0, kNodeFree),
                                        std::memory_order_acq_rel)) {
    if (count_refusal) note_corruption();  // freed twice, or not a node
    return false;
  }
  stripe_sub(stripe().nodes_in_use, 1);
  MEMCHANNEL_CRASH_POINT(kNodeMarkedFree);
  push_free(header_->node_free, ref, &n->free_next);
  return true;
}

void Arena::free_node(BlockRef ref) {
  QueueNode* n = node(ref);
  if (n == nullptr) return;
  free_node_at(n, ref, n->state.load(std::memory_order_acquire), true);
}

Result<Offset> Arena::allocate_cells(uint64_t bytes) {
  auto r = allocate(bytes, PayloadLayout{});
  if (!r.ok()) return {r.status, 0};
  // Long-lived structures are not user data: keep them out of the data-block counters, and
  // owned by the arena rather than by this process (a crash must not free them).
  BlockHeader* hdr = block_header(r.value.ref);
  if (hdr == nullptr) {  // a block that no longer passes its checks: a peer rewrote it
    note_corruption();
    return {Status::kCorruptedOffset, 0};
  }
  hdr->flags.store(kBlockFlagArena, std::memory_order_relaxed);
  hdr->state.store(make_state(r.value.generation, 0, kBlockReserved), std::memory_order_release);
  stripe().blocks_in_use.fetch_sub(1, std::memory_order_relaxed);
  stripe().bytes_in_use.fetch_sub(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
  return {Status::kOk, ref_to_offset(r.value.ref) + sizeof(BlockHeader)};
}

void Arena::free_cells(Offset off) {
  const BlockRef ref = offset_to_ref(off - sizeof(BlockHeader));
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) return;
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_kind(word) != kBlockReserved) return;
  hdr->flags.store(0, std::memory_order_relaxed);
  stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
  stripe().bytes_in_use.fetch_add(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  stripe().nodes_in_use.fetch_sub(1, std::memory_order_relaxed);
  hdr->refcount.store(1, std::memory_order_relaxed);
  free_block(ref, hdr, word);
}

uint32_t Arena::thread_stripe() {
  static std::atomic<uint32_t> next{0};
  thread_local const uint32_t mine = next.fetch_add(1, std::memory_order_relaxed);
  return mine;
}

ArenaStats Arena::stats() {
  maybe_reap();
  return counters();
}

ArenaStats Arena::counters() const {
  const ArenaCounters& c = header_->counters;
  // Sums of the stripes; a transiently negative sum (a free counted before its allocation was
  // read) reads as 0.
  auto sum = [&](std::atomic<uint64_t> CounterStripe::*field) {
    uint64_t total = 0;
    for (const CounterStripe& st : c.stripes) total += (st.*field).load(std::memory_order_relaxed);
    return static_cast<int64_t>(total) < 0 ? uint64_t{0} : total;
  };
  ArenaStats s{};
  s.capacity = capacity_;
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    const uint64_t b = sizes_[i].load(std::memory_order_relaxed);
    if (b != 0) {
      s.mapped_bytes += b;
      ++s.segments;
    }
  }
  s.carved_bytes = c.carved_bytes.load(std::memory_order_relaxed);
  s.blocks_in_use = sum(&CounterStripe::blocks_in_use);
  s.bytes_in_use = sum(&CounterStripe::bytes_in_use);
  s.bytes_copied = sum(&CounterStripe::bytes_copied);
  s.corruption_count = c.corruption_count.load(std::memory_order_relaxed);
  s.nodes_in_use = sum(&CounterStripe::nodes_in_use);
  s.attached_holders = header_->attached_holders.load(std::memory_order_relaxed);
  s.reclaimed_blocks = header_->reclaimed_blocks.load(std::memory_order_relaxed);
  return s;
}

}  // namespace memchannel
