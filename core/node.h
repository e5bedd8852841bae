// QueueNode: the 64-byte cell of a channel's descriptor queue, and its state word.
//
// Trust: every field is read from shared memory a peer may have written. A node reached
// through a link is checked (magic, state kind, channel tag) before its descriptor is used;
// `seq` and `position_bytes` are checked against what an honest queue can hold before a count
// is derived from them (core/channel.cc, room_after and counts).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/block.h"
#include "core/layout.h"

namespace memchannel {

inline constexpr uint32_t kNodeMagic = 0x4d434e44u;             // "MCND"

// A 128-byte cell of a channel's descriptor queue (see channel.h): this 64-byte QueueNode, then
// kInlineBytes of inline payload. A message of up to kInlineBytes of plain bytes travels in its
// node (block == 0: docs/design.md, "Small messages inline"), with no data block; larger or typed
// messages name a block. The receiver copies an inline payload out before its claim CAS, which
// proves the copy is of the linked incarnation (a node is never written while linked).
//
//   0       8      12     16      24     28      32      40      48       64
//   +-------+------+------+-------+------+-------+-------+-------+--------+
//   | next  |block | gen  |length |free_ |magic  | state | seq   |position|
//   |tagged |      |      |       |next  |       |       |       | bytes  | (+8 reserved)
//   +-------+------+------+-------+------+-------+-------+-------+--------+
//
// `seq` and `position_bytes` number a channel's messages: a message linked after node L has
// seq = L.seq + 1 and position_bytes = L.position_bytes + length, written by its sender before
// the link CAS publishes the node and never changed while the node is in the queue. So the
// number of messages queued is last.seq - dummy.seq and their bytes the difference of
// position_bytes: counts that follow from the queue itself, which a killed sender or receiver
// cannot leave wrong (see channel.h).
//
// Node state (one 64-bit word, changed by CAS or by its exclusive owner):
//
//    63               32 31        16 15      8 7       0
//   +-------------------+------------+---------+---------+
//   | channel tag       | generation |  holder |  kind   |
//   +-------------------+------------+---------+---------+
//
//   kNodeFree --allocate_node--> kNodeHeld(holder) --send-----> kNodeLinked(channel, sender)
//      ^                             |                                      | a receiver claims it
//      +--------- free_node ---------+                                      v
//      +<------- advanced past as the queue's dummy ---------- kNodeClaimed(channel, receiver)
//
// The generation is bumped by every allocation, so a stale claim or free of a recycled node
// fails its CAS. A queue holds a kNodeClaimed dummy at its head, then kNodeLinked messages; a
// link to a node in any other state, or of another channel, is corruption. The holder field
// lets a reclaimer find what a dead process held or was sending (Arena::reap_dead_holders).
struct QueueNode {
  std::atomic<uint64_t> next;        // tagged link to the next node; ref 0 = end
  std::atomic<uint32_t> block;       // BlockRef of the message
  std::atomic<uint32_t> generation;  // the block's generation when queued
  std::atomic<uint64_t> length;      // payload bytes, for the channel's byte count
  std::atomic<uint32_t> free_next;   // node free-list link
  uint32_t magic;                    // kNodeMagic
  std::atomic<uint64_t> state;       // node state, see above
  std::atomic<uint64_t> seq;         // messages linked into the channel up to this one
  std::atomic<uint64_t> position_bytes;  // their payload bytes
  uint64_t reserved_;
};
static_assert(sizeof(QueueNode) == 64);
// A node cell: the QueueNode and its inline payload.
inline constexpr uint64_t kInlineBytes = 64;
inline constexpr uint64_t kNodeBytes = sizeof(QueueNode) + kInlineBytes;
inline constexpr uint64_t kNodeUnits = kNodeBytes / kUnit;
static_assert(kNodeBytes % kUnit == 0);
// The descriptor of an inline message: block 0 and this generation (no block generation
// exceeds 16 bits), so a forged ref 0 alone is caught as the forged descriptor it is.
inline constexpr uint32_t kInlineMark = 0x4e4c4e49u;  // "INLN"
inline uint8_t* node_payload(QueueNode* n) { return reinterpret_cast<uint8_t*>(n) + sizeof(QueueNode); }

// A message received inline: its bytes, copied out of the node (Channel::recv with a slot).
struct SmallMessage {
  uint64_t length = 0;
  BlockRef node = 0;  // the node it came in (its segment is checked for truncation)
  alignas(16) uint8_t bytes[kInlineBytes];
};
// An inline payload copied in and out by 8-byte relaxed atomic words: a receiver may read a node
// a peer is recycling (its claim CAS then fails and the copy is discarded), which must not be a
// data race. Whole words straight from the source; the last partial word through a local.
inline void store_inline(QueueNode* n, const void* data, uint64_t length) {
  if (length > kInlineBytes) length = kInlineBytes;
  auto* dst = reinterpret_cast<uint64_t*>(node_payload(n));
  const auto* src = static_cast<const uint8_t*>(data);
  const size_t whole = length / 8;
  for (size_t i = 0; i < whole; ++i) {
    uint64_t w;
    __builtin_memcpy(&w, src + 8 * i, 8);
    __atomic_store_n(dst + i, w, __ATOMIC_RELAXED);
  }
  if (const size_t rest = length % 8; rest != 0) {
    uint64_t w = 0;
    __builtin_memcpy(&w, src + 8 * whole, rest);
    __atomic_store_n(dst + whole, w, __ATOMIC_RELAXED);
  }
}
inline void load_inline(QueueNode* n, uint64_t length, SmallMessage* out) {
  if (length > kInlineBytes) length = kInlineBytes;
  const auto* src = reinterpret_cast<const uint64_t*>(node_payload(n));
  const size_t whole = length / 8;
  for (size_t i = 0; i < whole; ++i) {
    const uint64_t w = __atomic_load_n(src + i, __ATOMIC_RELAXED);
    __builtin_memcpy(out->bytes + 8 * i, &w, 8);
  }
  if (const size_t rest = length % 8; rest != 0) {
    const uint64_t w = __atomic_load_n(src + whole, __ATOMIC_RELAXED);
    __builtin_memcpy(out->bytes + 8 * whole, &w, rest);
  }
  out->length = length;
}
static_assert(std::is_standard_layout_v<QueueNode>);
static_assert(offsetof(QueueNode, free_next) == kCellWordOffset);
static_assert(offsetof(QueueNode, magic) == kCellMagicOffset);
static_assert(offsetof(QueueNode, state) == 32);
static_assert(offsetof(QueueNode, seq) == 40);
static_assert(offsetof(QueueNode, next) == 0);
static_assert(offsetof(QueueNode, block) == 8);
static_assert(offsetof(QueueNode, generation) == 12);
static_assert(offsetof(QueueNode, length) == 16);
static_assert(offsetof(QueueNode, position_bytes) == 48);

enum NodeKind : uint32_t { kNodeFree = 0, kNodeHeld = 1, kNodeLinked = 2, kNodeClaimed = 3 };

constexpr uint64_t make_node_state(uint32_t channel, uint32_t generation, uint32_t holder, NodeKind kind) {
  return (static_cast<uint64_t>(channel) << 32) | (static_cast<uint64_t>(generation & 0xffff) << 16) |
         (static_cast<uint64_t>(holder & 0xff) << 8) | kind;
}
constexpr NodeKind node_kind(uint64_t s) { return static_cast<NodeKind>(s & 0xff); }
constexpr uint32_t node_holder(uint64_t s) { return static_cast<uint32_t>(s >> 8) & 0xff; }
constexpr uint32_t node_generation(uint64_t s) { return static_cast<uint32_t>(s >> 16) & 0xffff; }
constexpr uint32_t node_channel(uint64_t s) { return static_cast<uint32_t>(s >> 32); }
constexpr uint64_t with_node_kind(uint64_t s, uint32_t channel, uint32_t holder, NodeKind kind) {
  return make_node_state(channel, node_generation(s), holder, kind);
}

}  // namespace memchannel
