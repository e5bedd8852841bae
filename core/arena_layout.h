// The arena's shared header: segment 0 starts with it. Every field below is in memory that
// every attached process can write, so every value read from it is untrusted: offsets and
// sizes are bounded by this process's private copies (Arena::sizes_, capacity_), states are
// changed only by CAS from an exact expected word, and identities are used only as /proc
// lookup keys (shm/liveness.h).
//
//   offset  field                         written by
//   ------  ----------------------------  ----------------------------------------------
//        0  magic, version, header_bytes,  the creator, once; `ready` (32) published last
//           capacity, arena_id, ready
//       64  carve                         any allocator (CAS): next free byte
//       72  segment_count                 the party that publishes a segment
//       80  segment_bytes[64]             segment sizes; a creating word while one is created
//      640  counters                      corruption_count, carved_bytes; 16 stripes from 704
//     1728  space (EventCount)            senders waiting for a free block
//     1736  attached_holders              attach / detach / reap: count (32) | attach sequence (32)
//     1744  reclaimed_blocks              reapers
//     1792  holders[128] (64 B each)      HolderSlot: state word, incarnation, identity
//     9984  node_free                     tagged free list of QueueNodes
//    10048  free_lists[92] (64 B each)    one cache line per size class
//    15936  segment_nonce[64] (4 B each)  random part of each growth segment's name; 16192 in all
//
// Every segment file (shm) is kSegmentTailBytes longer than the segment the arena uses: a tail
// whose first word is kSegmentSentinel (core/backend.h), checked at map time and by the data
// path, so a truncation is seen at the first call that touches the segment (layout 7).
//
// Stable across layout versions (every version from 6 on, and what every reader of a foreign
// arena relies on): magic at 0, version at 8, header_bytes at 12, ready at 32, and the holder
// table at kHolderTableOffset. A reader checks magic and version before it reads anything else
// (arena_header_compatible below); an arena of another version is refused, and left alone.
//
// (Offsets are asserted below; a change to the layout bumps kArenaLayoutVersion.)
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/layout.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kArenaMagic = 0x314e524148434d4dull;  // "MMCHARN1"
inline constexpr uint32_t kArenaLayoutVersion = 9;  // 2: node states, kBlockSending, carving; 3: striped counters; 4: kBlockTransferred; 5: node seq; 6: segment nonces, liveness locks; 7: segment sentinel tails; block header track/pool/shares words, share tokens, pools; 8: 128-byte node cells with inline payloads; 9: a holder slot is claimed before its party is counted, attach sequence beside the count, kSlotLeaving
inline constexpr uint32_t kArenaReady = 0x52454459u;            // "REDY"
// `ready` once a party found a segment truncated (its pages, and what they held, are gone): the
// arena is corrupt for every party, which each learns at its next send or recv (Arena::intact
// reads `ready`) or sweep (Arena::check_header).
inline constexpr uint32_t kArenaTruncated = 0x43555254u;        // "TRUC"
// segment_bytes[i] while one party creates segment i: the creating word names the creator
// (holder id and the incarnation of its slot), so a creator that died half way is detected and
// its segment replaced (Arena::grow). ~0ull (kSegmentCreating) is a creating word of no holder.
inline constexpr uint64_t kSegmentCreating = ~0ull;
constexpr uint64_t make_creating_word(uint32_t holder, uint32_t incarnation) {
  return (0xffffffffull << 32) | (static_cast<uint64_t>(incarnation & 0xffffff) << 8) | (holder & 0xff);
}
constexpr bool is_creating_word(uint64_t w) { return (w >> 32) == 0xffffffffull; }
constexpr uint32_t creating_holder(uint64_t w) { return static_cast<uint32_t>(w) & 0xff; }
constexpr uint32_t creating_incarnation(uint64_t w) { return (static_cast<uint32_t>(w) >> 8) & 0xffffff; }
static_assert(is_creating_word(kSegmentCreating) && creating_holder(kSegmentCreating) == 0xff);
// Processes that may hold blocks. Holder id = slot index + 1 (0 = untracked, heap backend).
inline constexpr uint32_t kMaxHolders = 128;
// Prompt reclamation (Arena::maybe_reap): a process sweeps its arena's holder slots for dead
// peers at most this often, from its ordinary calls.
inline constexpr int64_t kSweepIntervalNs = 250'000'000;
enum HolderSlotState : uint32_t {
  kSlotFree = 0,
  kSlotClaiming = 1,         // claimed by a party still joining: it may or may not be counted yet
  kSlotActive = 2,           // its party is counted in attached_holders
  kSlotReclaiming = 3,       // reaped by a holder (named in the word)
  kSlotReclaimingByPid = 4,  // reaped by a process that has no slot yet (attaching: its pid)
  kSlotLeaving = 5,          // its party is detaching: its count is given back, or being given back
};
// In a reap's word (kSlotReclaiming*): the reaped party owed no count to give back (its slot was
// kSlotClaiming or kSlotLeaving when the reap began), so a reaper that takes the reap over after
// the first one died knows as well as the first whether to decrement attached_holders.
inline constexpr uint32_t kSlotNoCount = 0x80;
// A slot's state word: the state in the low byte, and in the rest who is working on it, so a
// party killed in the middle can be told from one still at work:
//   kSlotClaiming    | claimer's identity word 0 (its pid) & 0xffffff << 8
//   kSlotReclaiming  | reaper's holder id << 8 | reaper's incarnation & 0xffff << 16
//   kSlotReclaimingByPid | reaper's pid & 0xffffff << 8 (a reaper still attaching: no holder id)
//   either reap kind may carry kSlotNoCount (bit 7)
// A claimer killed before it wrote its identity, or a reaper killed half way through a reap,
// is then found dead by the next sweep, which takes the slot over (Arena::reap_dead_holders).
constexpr uint32_t slot_kind(uint32_t word) { return word & 0x7f; }
// Whether the reap `word` describes owes the arena's attach count the reaped party's unit.
constexpr bool slot_reap_owes_count(uint32_t word) { return (word & kSlotNoCount) == 0; }
constexpr uint32_t slot_claiming(uint64_t claimer) {
  return kSlotClaiming | (static_cast<uint32_t>(claimer & 0xffffff) << 8);
}
constexpr uint32_t slot_claimer(uint32_t word) { return word >> 8; }
constexpr uint32_t slot_reclaiming_by_pid(uint64_t reaper) {
  return kSlotReclaimingByPid | (static_cast<uint32_t>(reaper & 0xffffff) << 8);
}
constexpr uint32_t slot_reaper_pid(uint32_t word) { return word >> 8; }
constexpr uint32_t slot_reclaiming(uint32_t reaper, uint32_t incarnation) {
  return kSlotReclaiming | ((reaper & 0xff) << 8) | ((incarnation & 0xffff) << 16);
}
constexpr uint32_t slot_reaper(uint32_t word) { return (word >> 8) & 0xff; }
constexpr uint32_t slot_reaper_incarnation(uint32_t word) { return word >> 16; }
static_assert(slot_kind(slot_claiming(0xffffffffu)) == kSlotClaiming);
static_assert(slot_reaper(slot_reclaiming(128, 0x12345)) == 128);
static_assert(slot_reaper_incarnation(slot_reclaiming(128, 0x12345)) == 0x2345);
static_assert(slot_kind(slot_reclaiming(128, 0xffff) | kSlotNoCount) == kSlotReclaiming);
static_assert(slot_kind(slot_reclaiming_by_pid(0xffffff) | kSlotNoCount) == kSlotReclaimingByPid);

// attached_holders: the count of parties attached (low 32 bits) and the attach sequence (high 32
// bits), bumped by every attach. The count is every party between its attach and its detach, plus
// the unit of any party that died in the attach window (counted, slot not yet kSlotActive) or
// of a dead party whose reaper died before giving it back: such units are never given back one by
// one, the last live party to leave drops them with its teardown (Arena::detach, "The attach
// window" in core/recovery.cc). 0 = torn down: nobody joins any more. The sequence lets that
// teardown tell that nobody attached between its look at the count and its CAS to 0.
inline constexpr uint64_t kAttachSeqOne = 1ull << 32;
constexpr uint32_t holders_count(uint64_t word) { return static_cast<uint32_t>(word); }
constexpr uint64_t holders_joined(uint64_t word) { return word + 1 + kAttachSeqOne; }
constexpr uint64_t holders_with_count(uint64_t word, uint32_t count) { return (word & ~0xffffffffull) | count; }
static_assert(holders_count(holders_joined(0xffffffff00000001ull)) == 2);

struct alignas(kCacheLine) HolderSlot {
  std::atomic<uint32_t> state;             // slot state word (above); identity valid while kSlotActive
  std::atomic<uint32_t> incarnation;       // bumped by every claim: tells occupants of a slot apart
  std::atomic<uint64_t> identity[2];       // backend-defined (pid, start time)
  std::atomic<uint64_t> reclaimed_blocks;  // blocks freed on behalf of a dead occupant
};
static_assert(sizeof(HolderSlot) == kCacheLine);
static_assert(offsetof(HolderSlot, state) == 0);
static_assert(offsetof(HolderSlot, incarnation) == 4);
static_assert(offsetof(HolderSlot, identity) == 8);
static_assert(offsetof(HolderSlot, reclaimed_blocks) == 24);

struct alignas(kCacheLine) FreeList {
  std::atomic<uint64_t> head;  // tagged: (pop/push count << 32) | BlockRef of the top block
};
static_assert(sizeof(FreeList) == kCacheLine);

// Counters touched by every allocate and free are striped: a party adds to its own stripe
// (by holder and thread) and stats() sums the stripes, so a sender and a receiver on two
// cores do not bounce one cache line per message. A block allocated in one stripe and freed
// in another leaves each stripe off; the sum is exact modulo 2^64.
inline constexpr uint32_t kCounterStripes = 16;
struct alignas(kCacheLine) CounterStripe {
  std::atomic<uint64_t> blocks_in_use;     // data blocks allocated and not yet freed
  std::atomic<uint64_t> bytes_in_use;      // their class sizes
  std::atomic<uint64_t> nodes_in_use;      // queue nodes and channel headers
  std::atomic<uint64_t> bytes_copied;      // payload bytes copied by senders (0 on zero-copy)
};
static_assert(sizeof(CounterStripe) == kCacheLine);

struct ArenaCounters {
  std::atomic<uint64_t> corruption_count;  // validation failures of arena memory
  std::atomic<uint64_t> carved_bytes;      // memory handed out by the carve cursor
  CounterStripe stripes[kCounterStripes];
};
static_assert(offsetof(ArenaCounters, corruption_count) == 0);
static_assert(offsetof(ArenaCounters, carved_bytes) == 8);
static_assert(offsetof(ArenaCounters, stripes) == 64);
static_assert(sizeof(ArenaCounters) == 1088);

struct ArenaHeader {
  // Identity: creator-written, immutable after `ready`.
  uint64_t magic;
  uint32_t version;
  uint32_t header_bytes;
  uint64_t capacity;
  uint64_t arena_id;
  std::atomic<uint32_t> ready;
  uint32_t reserved0_[7];
  // Growth.
  alignas(kCacheLine) std::atomic<uint64_t> carve;          // arena offset of the next free byte
  std::atomic<uint32_t> segment_count;
  uint32_t reserved1_;
  std::atomic<uint64_t> segment_bytes[kMaxSegments];
  alignas(kCacheLine) ArenaCounters counters;
  alignas(kCacheLine) EventCount space;                     // woken when blocks are freed
  std::atomic<uint64_t> attached_holders;                   // count | attach sequence << 32; count 0 = torn down
  std::atomic<uint64_t> reclaimed_blocks;                   // blocks freed for dead holders
  HolderSlot holders[kMaxHolders];
  alignas(kCacheLine) std::atomic<uint64_t> node_free;      // tagged free list of QueueNodes
  FreeList free_lists[kNumClasses];
  // Random part of segment i's name (i > 0), written before the segment is created, read by
  // every process that maps or removes it (core/backend.h, "Growth-segment names").
  alignas(kCacheLine) std::atomic<uint32_t> segment_nonce[kMaxSegments];
};
inline constexpr std::size_t kHolderTableOffset = 1792;  // never moves (see the table above)
static_assert(std::is_standard_layout_v<ArenaHeader>);
static_assert(offsetof(ArenaHeader, magic) == 0);
static_assert(offsetof(ArenaHeader, version) == 8);
static_assert(offsetof(ArenaHeader, header_bytes) == 12);
static_assert(offsetof(ArenaHeader, capacity) == 16);
static_assert(offsetof(ArenaHeader, arena_id) == 24);
static_assert(offsetof(ArenaHeader, ready) == 32);
static_assert(offsetof(ArenaHeader, carve) == 64);
static_assert(offsetof(ArenaHeader, segment_count) == 72);
static_assert(offsetof(ArenaHeader, segment_bytes) == 80);
static_assert(offsetof(ArenaHeader, counters) == 640);
static_assert(offsetof(ArenaHeader, space) == 1728);
static_assert(offsetof(ArenaHeader, attached_holders) == 1736);
static_assert(offsetof(ArenaHeader, reclaimed_blocks) == 1744);
static_assert(offsetof(ArenaHeader, holders) == 1792);
static_assert(offsetof(ArenaHeader, node_free) == 9984);
static_assert(offsetof(ArenaHeader, free_lists) == 10048);
static_assert(offsetof(ArenaHeader, segment_nonce) == 15936);
static_assert(offsetof(ArenaHeader, holders) == kHolderTableOffset);
// Section sizes: a field that grows moves everything after it, which the offsets above catch;
// these say which section it was.
static_assert(sizeof(ArenaHeader::segment_bytes) == kMaxSegments * 8 && kMaxSegments == 64);
static_assert(sizeof(ArenaHeader::counters) == 1088);
static_assert(sizeof(ArenaHeader::space) == 8);
static_assert(sizeof(ArenaHeader::attached_holders) == 8);  // its count is the u32 at 1736 (little endian)
static_assert(sizeof(ArenaHeader::holders) == kMaxHolders * 64);
static_assert(sizeof(ArenaHeader::free_lists) == kNumClasses * 64 && kNumClasses == 92);
static_assert(sizeof(ArenaHeader::segment_nonce) == kMaxSegments * 4);
static_assert(sizeof(ArenaHeader) == 16192);  // + 1 KiB: the 17 KiB smallest arena still fits
static_assert(alignof(ArenaHeader) == kCacheLine);
static_assert(sizeof(ArenaHeader) % kCacheLine == 0);

// Whether a header another process wrote is one this build may read past its first 16 bytes:
// the magic, then the layout version and header size. Every reader of a foreign arena (attach,
// the abandoned-arena scan, cleanup) asks this before anything else.
inline bool arena_header_compatible(const ArenaHeader& h) {
  return h.magic == kArenaMagic && h.version == kArenaLayoutVersion &&
         h.header_bytes == ((sizeof(ArenaHeader) + kUnit - 1) & ~(kUnit - 1));
}

}  // namespace memchannel
