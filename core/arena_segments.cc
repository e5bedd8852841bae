// Arena creation, attachment and growth: segment 0 and the segment table (core/arena_layout.h).
#include <algorithm>
#include <cstring>
#include <new>

#include "core/arena_internal.h"

namespace memchannel {
using namespace arena_internal;  // NOLINT: the implementation's own helpers

namespace {
// The payload of the largest size class whose blocks fit in `block` bytes.
uint64_t largest_class_payload(uint64_t block) {
  const uint32_t cls = class_for_units(block >> kUnitShift);
  uint64_t bytes = class_units(cls) << kUnitShift;
  if (bytes > block) bytes = cls == 0 ? 0 : class_units(cls - 1) << kUnitShift;
  return bytes > sizeof(BlockHeader) ? bytes - sizeof(BlockHeader) : 0;
}
}  // namespace

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
  arena->arena_id_ = arena_id;
  arena->sizes_[0].store(seg0, std::memory_order_relaxed);
  arena->note_mapped(0);
  arena->bases_[0].store(seg.value, std::memory_order_release);
  // The creator: counted (nobody else can see the arena before `ready`), then its slot. If it
  // gets none, the arena's destructor gives the count back and removes the segments.
  header->attached_holders.store(holders_joined(0), std::memory_order_relaxed);
  if (arena->backend_->tracks_holders()) {
    const Status s = arena->claim_holder_slot();
    if (s != Status::kOk) return {s, nullptr};
    header->holders[arena->holder_ - 1].state.store(kSlotActive, std::memory_order_release);
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
  // Magic and layout version before anything else (core/arena_layout.h): a header of another
  // version is refused before any of its fields is read as ours. A zero magic with `ready`
  // unset is a creator still at work.
  const bool ready = header->ready.load(std::memory_order_acquire) == kArenaReady;
  if (header->magic != kArenaMagic) return {ready || header->magic != 0 ? Status::kBadMagic : Status::kNotReady, nullptr};
  if (!arena_header_compatible(*header)) return {Status::kVersionMismatch, nullptr};
  if (!ready) return {Status::kNotReady, nullptr};
  const uint64_t capacity_untrusted = header->capacity;
  if (capacity_untrusted < segment0_bytes ||
      capacity_untrusted > kMaxSegmentBytes * kMaxSegments ||
      header->segment_bytes[0].load(std::memory_order_acquire) != segment0_bytes) {
    return {Status::kCorruptedLength, nullptr};
  }
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity_untrusted));
  arena->arena_id_ = header->arena_id;
  arena->sizes_[0].store(segment0_bytes, std::memory_order_relaxed);
  arena->note_mapped(0);
  // Segment 0's sentinel tail (core/backend.h): a file cut and grown back has its size again.
  if (!arena->segment_intact(0)) {
    arena->detached_.store(true, std::memory_order_release);  // holds no count: gives none back
    return {Status::kCorruptedLength, nullptr};
  }
  arena->bases_[0].store(seg.value, std::memory_order_release);
  if (!arena->backend_->tracks_holders()) {
    // One process: no slots. Join unless the last holder is tearing the arena down.
    uint64_t word = header->attached_holders.load(std::memory_order_acquire);
    do {
      if (holders_count(word) == 0) {
        arena->detached_.store(true, std::memory_order_release);
        return {Status::kNotFound, nullptr};
      }
    } while (!header->attached_holders.compare_exchange_weak(word, holders_joined(word), std::memory_order_acq_rel));
    return {Status::kOk, std::move(arena)};
  }
  // A slot first, then the count ("The attach window", core/recovery.cc).
  const Status s = arena->join_holders();
  if (s != Status::kOk) {
    arena->detached_.store(true, std::memory_order_release);  // holds no count: gives none back
    return {s, nullptr};
  }
  arena->reap_dead_holders();
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
  largest = largest > kNodeBytes ? largest - kNodeBytes : 0;
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
  // The nonce was written before the size was published (grow): the name is the creator's.
  backend_->use_segment_nonce(index, header_->segment_nonce[index].load(std::memory_order_acquire));
  auto mapped = backend_->map_segment(index, bytes_untrusted);
  if (!mapped.ok()) return nullptr;
  sizes_[index].store(bytes_untrusted, std::memory_order_relaxed);
  note_mapped(index);
  bases_[index].store(mapped.value, std::memory_order_release);  // pairs with segment_base's load
  return mapped.value;
}

Result<uint8_t*> Arena::create_named_segment(uint32_t index, uint64_t bytes, bool taken_over) {
  if (taken_over) {
    // A creator that died half way may have left its file under the nonce it recorded.
    backend_->use_segment_nonce(index, header_->segment_nonce[index].load(std::memory_order_acquire));
    backend_->discard_segment(index);
  }
  // A fresh nonce per try, recorded before the file exists (so a takeover finds its name). A
  // name already taken (squatted: only possible by guessing 32 random bits) is skipped.
  Result<uint8_t*> created{Status::kSystemError, nullptr};
  for (int attempt = 0; attempt < kMaxNameCollisions; ++attempt) {
    const uint32_t nonce = static_cast<uint32_t>(backend_->new_segment_nonce());
    header_->segment_nonce[index].store(nonce, std::memory_order_release);
    backend_->use_segment_nonce(index, nonce);
    created = backend_->create_segment(index, bytes);
    if (created.ok() || !backend_->last_create_collided()) break;
  }
  return created;
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
    auto created = create_named_segment(next, size, is_creating_word(existing));
    if (!created.ok()) {
      uint64_t w = mine;
      header_->segment_bytes[next].compare_exchange_strong(w, 0, std::memory_order_acq_rel);
      notify_all(header_->space);  // waiters for this segment: it will not come from us
      return created.status == Status::kSystemError ? Status::kOutOfCapacity : created.status;
    }
    {
      std::lock_guard<std::mutex> lock(map_mutex_);
      sizes_[next].store(size, std::memory_order_relaxed);
      note_mapped(next);
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
      sentinels_[next].store(nullptr, std::memory_order_relaxed);
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

uint32_t Arena::active_slots(uint32_t* live) {
  uint32_t active = 0, alive = 0;
  for (uint32_t i = 0; i < kMaxHolders; ++i) {
    if (i + 1 == holder_) continue;
    if (header_->holders[i].state.load(std::memory_order_acquire) != kSlotActive) continue;
    ++active;
    if (live != nullptr && backend_->lock_liveness(i) != HolderLiveness::kDead) ++alive;
  }
  if (live != nullptr) *live = alive;
  return active;
}

bool Arena::repair_carve(uint64_t bad) {
  // The last segment the table names that this process can map; the cells of a segment are
  // carved from its start, and what was never carved is zero.
  uint32_t seg = 0;
  for (uint32_t i = 1; i < kMaxSegments; ++i) {
    const uint64_t b = header_->segment_bytes[i].load(std::memory_order_acquire);
    if (b == 0 || is_creating_word(b) || segment_base(i) == nullptr) break;
    seg = i;
  }
  uint8_t* base = segment_base(seg);
  if (base == nullptr) return false;
  const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
  uint64_t at = seg == 0 ? kHeaderBytes : 0;
  while (at + kUnit <= size) {
    uint8_t* cell = base + at;
    const uint64_t word = load_cell_word(cell);
    const uint32_t magic = static_cast<uint32_t>(word >> 32);
    uint64_t bytes = kUnit;
    if (word == 0) break;  // never carved: the cursor belongs here
    if (is_carving_word(word)) {
      bytes = carving_units(word) << kUnitShift;
    } else if (magic == kBlockMagic) {
      const uint32_t cls = reinterpret_cast<BlockHeader*>(cell)->size_class.load(std::memory_order_relaxed);
      bytes = cls < kNumClasses ? class_units(cls) << kUnitShift : kUnit;
    } else if (magic == kNodeMagic) {
      bytes = kNodeBytes;  // its inline payload may be zero: it is not a never-carved cell
    }
    // Garbage is stepped over a unit at a time (it leaks, nothing reuses it).
    if (bytes == 0 || bytes > size - at) bytes = kUnit;
    at += bytes;
  }
  const uint64_t proven = make_offset(seg, std::min(at, size));
  if (proven == bad) return false;
  uint64_t expected = bad;
  if (!header_->carve.compare_exchange_strong(expected, proven, std::memory_order_acq_rel)) return false;
  note_corruption();
  return true;
}

void Arena::mark_truncated() {
  header_->ready.store(kArenaTruncated, std::memory_order_release);  // lands in zeros if segment 0 went
  if (!truncated_.exchange(true, std::memory_order_relaxed)) note_corruption();
}

bool Arena::confirm_intact() {
  if (truncated()) return false;
  // What the backend knows (fstat of every mapping: shrunk, or pages lost and grown back; the
  // SIGBUS guard's replaced pages) and what another party found (`ready`).
  if (header_->ready.load(std::memory_order_acquire) == kArenaTruncated ||
      backend_->check_mappings() != Status::kOk) {
    mark_truncated();
    return false;
  }
  // Every file is whole: a wrong sentinel or `ready` was written by a peer, not left by a
  // truncation (which always takes the end of a file, and with it the sentinel).
  uint64_t repaired = 0;
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    std::atomic<uint64_t>* s = sentinels_[i].load(std::memory_order_relaxed);
    if (s != nullptr && s->load(std::memory_order_relaxed) != kSegmentSentinel) {
      s->store(kSegmentSentinel, std::memory_order_relaxed);
      ++repaired;
    }
  }
  uint32_t ready = header_->ready.load(std::memory_order_acquire);
  if (ready != kArenaReady && ready != kArenaTruncated &&
      header_->ready.compare_exchange_strong(ready, kArenaReady, std::memory_order_acq_rel)) {
    ++repaired;
  }
  if (repaired != 0) header_->counters.corruption_count.fetch_add(repaired, std::memory_order_relaxed);
  if (header_->ready.load(std::memory_order_acquire) == kArenaTruncated) {  // meanwhile, by another party
    mark_truncated();
    return false;
  }
  return true;
}

uint64_t Arena::check_header() {
  uint64_t repaired = 0;
  // Identity: written once by the creator; this process checked it at attach (or wrote it).
  const auto restore64 = [&](uint64_t* word, uint64_t want) {
    if (__atomic_load_n(word, __ATOMIC_RELAXED) != want) {
      __atomic_store_n(word, want, __ATOMIC_RELAXED);
      ++repaired;
    }
  };
  const auto restore32 = [&](uint32_t* word, uint32_t want) {
    if (__atomic_load_n(word, __ATOMIC_RELAXED) != want) {
      __atomic_store_n(word, want, __ATOMIC_RELAXED);
      ++repaired;
    }
  };
  restore64(&header_->magic, kArenaMagic);
  restore32(&header_->version, kArenaLayoutVersion);
  restore32(&header_->header_bytes, static_cast<uint32_t>(kHeaderBytes));
  restore64(&header_->capacity, capacity_);
  restore64(&header_->arena_id, arena_id_);
  // A truncated segment (seen here, or by another party: `ready` says so) is not repairable:
  // what its pages held is gone. Declared corrupt for every party. A forged `ready` or
  // sentinel is restored (and counted) by confirm_intact.
  if (!confirm_intact()) {
    if (repaired != 0) header_->counters.corruption_count.fetch_add(repaired, std::memory_order_relaxed);
    return repaired;
  }
  // The segment table: a segment this process maps has the size it mapped (segments never
  // change size), and the count covers every mapped segment and no absent one.
  uint32_t mapped = 0, present = 0;
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    const uint64_t size = sizes_[i].load(std::memory_order_relaxed);
    uint64_t b = header_->segment_bytes[i].load(std::memory_order_acquire);
    if (size != 0) {
      mapped = i + 1;
      if (b != size && header_->segment_bytes[i].compare_exchange_strong(b, size, std::memory_order_acq_rel)) ++repaired;
      b = size;
    }
    if (b != 0 && !is_creating_word(b) && present == i) present = i + 1;
  }
  uint32_t count = header_->segment_count.load(std::memory_order_acquire);
  const uint32_t want = std::max(mapped, std::min(count, present));
  if (count != want && header_->segment_count.compare_exchange_strong(count, want, std::memory_order_acq_rel)) {
    ++repaired;
  }
  // The carve cursor: in a segment that exists, on the grid, past the header, at a cell that
  // was never carved (or being carved).
  const uint64_t cursor = header_->carve.load(std::memory_order_acquire);
  const uint32_t seg = segment_of(cursor);
  const uint64_t within = within_segment(cursor);
  uint8_t* base = seg < kMaxSegments ? segment_base(seg) : nullptr;
  const uint64_t size = base != nullptr ? sizes_[seg].load(std::memory_order_relaxed) : 0;
  bool sane = base != nullptr && (within & (kUnit - 1)) == 0 && within <= size && (seg != 0 || within >= kHeaderBytes);
  if (sane && within + kUnit <= size) {
    const uint64_t w = load_cell_word(base + within);
    sane = w == 0 || is_carving_word(w) || header_->carve.load(std::memory_order_acquire) != cursor;
  }
  if (!sane && repair_carve(cursor)) ++repaired;
  // The attach count: never below the active holder slots (a party counts itself before it
  // marks its slot active, and marks it leaving before it stops counting; a reaper frees a slot
  // before it gives the count back), never past the slots.
  uint64_t attached = header_->attached_holders.load(std::memory_order_acquire);
  const uint32_t active = active_slots() + (holder_ != 0 ? 1 : 0);
  if ((holders_count(attached) < active || holders_count(attached) > 2 * kMaxHolders) &&
      header_->attached_holders.load(std::memory_order_acquire) == attached &&
      header_->attached_holders.compare_exchange_strong(attached, holders_with_count(attached, active),
                                                        std::memory_order_acq_rel)) {
    ++repaired;
  }
  if (repaired != 0) header_->counters.corruption_count.fetch_add(repaired, std::memory_order_relaxed);
  return repaired;
}

}  // namespace memchannel
