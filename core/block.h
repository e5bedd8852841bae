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
//   kFree --allocate--> kReserved --send--> kQueued --recv--> kReceived
//     ^                    |                                   |    |
//     +----release---------+<-------------release--------------+    +--send--> kQueued ...
//
// A block has one owner at a time: the allocating holder (kReserved), the queue (kQueued), or
// one receiving holder (kReceived). Allocation bumps the generation, so a stale reference to a
// recycled block is detected by comparing generations. Every transition is a CAS from the
// exact expected word; a mismatch is reported (kDoubleRelease, kCorruptedState), never
// ignored. Holder 0 means "no tracked holder" (heap backend); shm holders are slot + 1.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/layout.h"

namespace memchannel {

enum BlockState : uint32_t { kBlockFree = 0, kBlockReserved = 1, kBlockQueued = 2, kBlockReceived = 3 };

inline constexpr uint32_t kBlockMagic = 0x4d43424bu;  // "MCBK"
// A block that belongs to the arena itself (a channel header), not to any holder: never
// reclaimed when a process dies, only freed when the structure is destroyed.
inline constexpr uint32_t kBlockFlagArena = 1;

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
  uint32_t reserved_[7];            // keeps the payload 64-byte aligned
};
static_assert(sizeof(BlockHeader) == 64);
static_assert(std::is_standard_layout_v<BlockHeader>);
static_assert(offsetof(BlockHeader, length) == 16);
static_assert(offsetof(BlockHeader, magic) == 28);  // kCellMagicOffset, shared with QueueNode
inline constexpr uint32_t kCellMagicOffset = 28;
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
