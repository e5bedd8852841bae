// Block header and payload metadata: the first bytes of every block handed out by an Arena.
//
//   block offset (64-byte aligned)
//   +---------------------------+  0
//   | BlockHeader (64 B)        |     state word, refcount, free-list link, class, length
//   +---------------------------+  64
//   | BlockMeta (meta_bytes)    |     optional: itemsize, ndim, shape[ndim], format chars,
//   |                           |     padded to 64 B; absent (meta_bytes == 0) for plain bytes
//   +---------------------------+  64 + meta_bytes
//   | payload (length bytes)    |     64-byte aligned, as numpy and SIMD code like it
//   +---------------------------+
//
// States and who may move a block between them. The state word is
// (generation << 16) | (holder << 8) | state, so a transition and the holder it names change in
// one CAS (a reclaimer of a dead holder can never free a block another holder just took):
//
//   kFree --allocate--> kReserved --send--> kSending --linked--> kQueued --recv--> kReceived
//     ^                    |                   |                     |   (claimer)    |    |
//     +----release---------+                   +------recv (early)---+--------------->+    |
//     +<------------------------------------------------release--------------------------+
//                                                                     kReceived --send--> kSending
//   kQueued/kSending --an old dummy freed before its claimer took it--> kTransferred(claimer)
//   kTransferred(claimer) --the claimer's recv--> kReceived; its reclaimer frees it
//
// A block has one owner at a time: the allocating holder (kReserved), the sending holder while
// its descriptor is being linked into a queue (kSending: the holder is named, so a reclaimer
// can tell a send interrupted by a crash), the queue (kQueued), one receiving holder
// (kReceived), or the receiver that claimed it before it took it (kTransferred: see
// Channel::advance). Allocation and send bump the generation, so a (ref, generation) pair names
// one message: a stale reference to a recycled or forwarded block is detected by comparing
// generations. Every transition is a CAS from the exact expected word; a mismatch is reported
// (kDoubleRelease, kCorruptedState), never ignored. Holder 0 means "no tracked holder" (heap
// backend); shm holders are slot + 1.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/layout.h"

namespace memchannel {

enum BlockState : uint32_t {
  kBlockFree = 0,
  kBlockReserved = 1,
  kBlockQueued = 2,
  kBlockReceived = 3,
  kBlockSending = 4,  // linked (or being linked) into a queue by the holder it names
  // A message whose node was claimed by the holder it names, handed to that holder by the
  // party that freed the node (the claimer had not marked it kReceived yet): the claimer
  // takes it (-> kReceived), or the reclaimer of the claimer frees it.
  kBlockTransferred = 5,
  // A block shared read-only with several holders (memchannel.share; core/shares.cc): owned by
  // its share tokens, none of which is it; holder 0. Freed when the last token is.
  kBlockShared = 6,
};

inline constexpr uint32_t kBlockMagic = 0x4d43424bu;  // "MCBK"
// A block that belongs to the arena itself (a channel header), not to any holder: never
// reclaimed when a process dies, only freed when the structure is destroyed.
inline constexpr uint32_t kBlockFlagArena = 1;
// A share token (core/shares.cc): its payload is a ShareToken naming a kBlockShared block, and
// freeing it drops that share.
inline constexpr uint32_t kBlockFlagShare = 2;

inline constexpr uint32_t kGenerationMask = 0xffff;

constexpr uint32_t make_state(uint32_t generation, uint32_t holder, BlockState s) {
  return ((generation & kGenerationMask) << 16) | ((holder & 0xff) << 8) | s;
}
constexpr uint32_t state_generation(uint32_t word) { return word >> 16; }
constexpr uint32_t state_holder(uint32_t word) { return (word >> 8) & 0xff; }
constexpr BlockState state_kind(uint32_t word) { return static_cast<BlockState>(word & 0xff); }

struct BlockHeader {
  std::atomic<uint32_t> state;      // generation | holder | BlockState; CAS-only transitions
  std::atomic<uint32_t> refcount;   // holders of this block; the block is freed at 0
  std::atomic<uint32_t> next_free;  // free-list link (BlockRef) while kBlockFree
  std::atomic<uint32_t> size_class; // written when carved; validated on every read
  std::atomic<uint64_t> length;     // payload bytes, written by the owner before publishing
  std::atomic<uint32_t> meta_bytes; // bytes of BlockMeta (multiple of 64), 0 = plain bytes
  uint32_t magic;                   // kBlockMagic; same offset as QueueNode::magic (cell walk)
  std::atomic<uint32_t> flags;      // kBlockFlagArena: holds arena structures (channel headers)
  // Release tracking (memchannel.Tracker; core/tracking.cc): (ticket << 1) | active. Set by the
  // owner before a tracked send; its active bit is cleared by whoever frees the block.
  std::atomic<uint32_t> track;
  std::atomic<uint32_t> track_key;  // a listener socket's key to signal when tracking ends; 0 = none
  uint32_t reserved_;
  // While kBlockShared: generation (16) | next token index (6) | outstanding tokens (42 bits).
  std::atomic<uint64_t> shares;
  uint32_t reserved2_[2];           // keeps the payload 64-byte aligned
};
static_assert(sizeof(BlockHeader) == 64);
static_assert(std::is_standard_layout_v<BlockHeader>);
static_assert(offsetof(BlockHeader, length) == 16);
static_assert(offsetof(BlockHeader, magic) == 28);  // kCellMagicOffset, shared with QueueNode
static_assert(offsetof(BlockHeader, track) == 36);
static_assert(offsetof(BlockHeader, track_key) == 40);
static_assert(offsetof(BlockHeader, shares) == 48);

// The payload of a share token (kBlockFlagShare).
inline constexpr uint32_t kShareTokenMagic = 0x4d435348u;  // "MCSH"
inline constexpr uint32_t kMaxShareTokens = 42;           // token indices per shared lifetime
struct ShareToken {
  uint32_t magic;       // kShareTokenMagic
  BlockRef shared;      // the kBlockShared block
  uint32_t generation;  // its generation while shared
  uint32_t index;       // this token's bit in BlockHeader::shares
};
static_assert(sizeof(ShareToken) == 16);

constexpr uint64_t make_shares(uint32_t generation, uint32_t next, uint64_t bits) {
  return (static_cast<uint64_t>(generation & kGenerationMask) << 48) | (static_cast<uint64_t>(next & 63) << 42) |
         (bits & ((uint64_t{1} << kMaxShareTokens) - 1));
}
constexpr uint32_t shares_generation(uint64_t w) { return static_cast<uint32_t>(w >> 48); }
constexpr uint32_t shares_next(uint64_t w) { return static_cast<uint32_t>(w >> 42) & 63; }
constexpr uint64_t shares_bits(uint64_t w) { return w & ((uint64_t{1} << kMaxShareTokens) - 1); }
inline constexpr uint32_t kCellMagicOffset = 28;

// Carving (Arena::carve): fresh memory is claimed in two steps, a CAS on the cell's 64-bit word
// at kCellWordOffset (BlockHeader's meta_bytes + magic, QueueNode's free_next + magic) from 0 to
// a carving word, then a CAS on the arena's carve cursor. Anyone who meets a carving word at the
// cursor moves the cursor on the carver's behalf, so a carver that dies never blocks others; a
// walker skips the `units` cells it names, and a reclaimer finishes the cell of a dead carver as
// a free block. The carver replaces the word with the final magic when the cell is initialised.
//
//     63            32 31      24 23                  0
//    +----------------+----------+---------------------+
//    | kCarvingMagic  |  holder  |      units - 1      |
//    +----------------+----------+---------------------+
inline constexpr uint32_t kCellWordOffset = 24;
inline constexpr uint32_t kCarvingMagic = 0x4d434356u;  // "MCCV"
inline constexpr uint64_t kCarvingMaxUnits = 1ull << 24;  // 1 GiB in 64-byte units

constexpr uint64_t make_carving_word(uint32_t holder, uint64_t units) {
  return (static_cast<uint64_t>(kCarvingMagic) << 32) | (static_cast<uint64_t>(holder & 0xff) << 24) |
         ((units - 1) & (kCarvingMaxUnits - 1));
}
constexpr bool is_carving_word(uint64_t w) { return static_cast<uint32_t>(w >> 32) == kCarvingMagic; }
constexpr uint32_t carving_holder(uint64_t w) { return static_cast<uint32_t>(w >> 24) & 0xff; }
constexpr uint64_t carving_units(uint64_t w) { return (w & (kCarvingMaxUnits - 1)) + 1; }
static_assert(carving_units(make_carving_word(3, kCarvingMaxUnits)) == kCarvingMaxUnits);

// The magic of a cell (BlockHeader::magic / QueueNode::magic), read atomically: the word it is
// part of is written by the carving CAS and publish (release) while others may look at the cell.
inline uint32_t load_cell_magic(const void* cell) {
  const auto* magic = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(cell) + kCellMagicOffset);
  return __atomic_load_n(magic, __ATOMIC_ACQUIRE);  // pairs with the release that published the cell
}
static_assert(carving_holder(make_carving_word(128, 1)) == 128);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// Typed payload description (PEP 3118): itemsize, shape and struct-module format.
inline constexpr uint32_t kMaxNdim = 32;
inline constexpr uint32_t kMaxFormatLen = 1024;

struct BlockMetaPrefix {
  uint32_t itemsize;
  uint16_t ndim;
  uint16_t format_len;
  // followed by int64_t shape[ndim], then char format[format_len]
};
static_assert(sizeof(BlockMetaPrefix) == 8);

constexpr uint64_t meta_bytes_for(uint32_t ndim, uint32_t format_len) {
  const uint64_t raw = sizeof(BlockMetaPrefix) + 8ull * ndim + format_len;
  return (raw + kUnit - 1) & ~(kUnit - 1);
}

}  // namespace memchannel
