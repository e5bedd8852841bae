// Arena: the memory every channel of a group shares, and its block allocator.
//
// Segment 0 starts with the ArenaHeader:
//
//   +-------------------------------+ 0
//   | identity: magic, version,     |    written once by the creator; `ready` published last
//   | capacity, arena id, ready     |
//   +-------------------------------+ 64
//   | carve cursor, segment table   |    growth: segment_bytes[i] == 0 absent,
//   |                               |    kSegmentCreating while one party creates it
//   +-------------------------------+
//   | counters (own cache line)     |    blocks/bytes in use, bytes copied, corruption
//   +-------------------------------+
//   | space EventCount              |    senders waiting for a block to be freed
//   +-------------------------------+
//   | holder slots[kMaxHolders]     |    processes attached (shm): identity, state
//   +-------------------------------+
//   | node free list                |    64-byte queue nodes
//   +-------------------------------+
//   | free lists[kNumClasses]       |    one cache line each (no false sharing)
//   +-------------------------------+ header_bytes, then carved blocks
//
// Allocation: pop the size class's lock-free free list (Treiber stack with a tag in the head
// word against ABA); if empty, carve fresh memory by CAS on the carve cursor, adding a segment
// when the current one is full (up to `capacity` bytes in all); if capacity is exhausted, take
// a free block of a larger class. Freed blocks go back to the list of their own class (blocks
// are never split or merged, so their memory stays type-stable: a stale reader of a freed block
// reads valid memory and fails its CAS). Memory is never unmapped while the arena lives.
//
// Trust: every reference, length and state read from arena memory is checked against the
// mapping sizes this process holds privately; failures return a typed Status and bump
// `corruption_count`, and the arena keeps serving valid traffic.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <type_traits>

#include "core/backend.h"
#include "core/block.h"
#include "core/layout.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kArenaMagic = 0x314e524148434d4dull;  // "MMCHARN1"
inline constexpr uint32_t kArenaLayoutVersion = 1;
inline constexpr uint32_t kArenaReady = 0x52454459u;            // "REDY"
inline constexpr uint64_t kSegmentCreating = ~0ull;
inline constexpr uint32_t kNodeMagic = 0x4d434e44u;             // "MCND"

// Processes that may hold blocks. Holder id = slot index + 1 (0 = untracked, heap backend).
inline constexpr uint32_t kMaxHolders = 128;
enum HolderSlotState : uint32_t { kSlotFree = 0, kSlotClaiming = 1, kSlotActive = 2, kSlotReclaiming = 3 };

struct alignas(kCacheLine) HolderSlot {
  std::atomic<uint32_t> state;             // HolderSlotState; identity valid while kSlotActive
  uint32_t reserved0_;
  std::atomic<uint64_t> identity[2];       // backend-defined (pid, start time)
  std::atomic<uint64_t> reclaimed_blocks;  // blocks freed on behalf of a dead occupant
};
static_assert(sizeof(HolderSlot) == kCacheLine);

struct alignas(kCacheLine) FreeList {
  std::atomic<uint64_t> head;  // tagged: (pop/push count << 32) | BlockRef of the top block
};

struct ArenaCounters {
  std::atomic<uint64_t> blocks_in_use;     // data blocks allocated and not yet freed
  std::atomic<uint64_t> bytes_in_use;      // their class sizes
  std::atomic<uint64_t> bytes_copied;      // payload bytes copied by senders (0 on zero-copy)
  std::atomic<uint64_t> corruption_count;  // validation failures of arena memory
  std::atomic<uint64_t> carved_bytes;      // memory handed out by the carve cursor
  std::atomic<uint64_t> nodes_in_use;      // queue nodes and channel headers
};

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
  std::atomic<uint32_t> attached_holders;                   // live holder slots; 0 = torn down
  std::atomic<uint64_t> reclaimed_blocks;                   // blocks freed for dead holders
  HolderSlot holders[kMaxHolders];
  alignas(kCacheLine) std::atomic<uint64_t> node_free;      // tagged free list of QueueNodes
  FreeList free_lists[kNumClasses];
};
static_assert(std::is_standard_layout_v<ArenaHeader>);
static_assert(offsetof(ArenaHeader, carve) == 64);
static_assert(alignof(ArenaHeader) == kCacheLine);
static_assert(sizeof(ArenaHeader) % kCacheLine == 0);

// A 64-byte cell of a channel's descriptor queue (see channel.h).
struct QueueNode {
  std::atomic<uint64_t> next;        // tagged link to the next node; ref 0 = end
  std::atomic<uint32_t> block;       // BlockRef of the message
  std::atomic<uint32_t> generation;  // the block's generation when queued
  std::atomic<uint64_t> length;      // payload bytes, for the channel's byte count
  std::atomic<uint32_t> free_next;   // node free-list link
  uint32_t magic;                    // kNodeMagic
  std::atomic<uint64_t> sender;      // sender tag (process slot), for diagnostics
  uint64_t reserved_[3];
};
static_assert(sizeof(QueueNode) == 64);
static_assert(std::is_standard_layout_v<QueueNode>);

// A reference to a block by one holder: the ref plus the generation it was handed out with.
struct BlockHandle {
  BlockRef ref = 0;
  uint32_t generation = 0;
  bool valid() const { return ref != 0; }
};

// PEP 3118 description of a payload; format/shape pointers are only read during the call.
struct PayloadLayout {
  uint32_t itemsize = 1;
  uint32_t ndim = 1;
  const int64_t* shape = nullptr;   // nullptr: one dimension of length/itemsize
  std::string_view format = "B";
};

// A validated, private copy of a block's description.
struct BlockView {
  // shape/format stay uninitialised until filled (only ndim / format_len entries are valid):
  // zeroing 1.3 KB per message showed up in the per-message cost.
  BlockView() {}  // NOLINT: user-provided on purpose, so value-initialisation skips the arrays
  uint8_t* data = nullptr;
  uint64_t length = 0;
  uint32_t itemsize = 1;
  uint32_t ndim = 1;
  std::array<int64_t, kMaxNdim> shape;
  std::array<char, kMaxFormatLen> format;
  uint32_t format_len = 1;
  std::string_view format_view() const { return {format.data(), format_len}; }
};

struct ArenaStats {
  uint64_t capacity, mapped_bytes, carved_bytes, blocks_in_use, bytes_in_use, bytes_copied,
      corruption_count, segments, nodes_in_use, attached_holders, reclaimed_blocks;
};

// What a full walk of arena memory found (crash tests' invariant checker).
struct ArenaCensus {
  uint64_t blocks = 0, free_blocks = 0, reserved = 0, queued = 0, received = 0, nodes = 0;
  uint64_t arena_cells = 0;      // blocks holding arena structures (channel headers)
  uint64_t free_listed = 0;      // blocks reachable from the free lists
  uint64_t bad_cells = 0;        // cells with an unknown magic before the carve end
  bool free_lists_consistent = true;  // every listed block is free and listed once
};

// Concurrency: every member may be called from any thread (and, on a shared backend, any
// process) at once, unless it says otherwise.
class Arena {
 public:
  // Creates a new arena of at most `capacity` bytes over `backend`.
  static Result<std::shared_ptr<Arena>> create(std::unique_ptr<MemoryBackend> backend,
                                               uint64_t capacity, uint64_t arena_id);
  // Attaches to an arena whose segment 0 (`segment0_bytes` long) another party created.
  static Result<std::shared_ptr<Arena>> attach(std::unique_ptr<MemoryBackend> backend,
                                               uint64_t segment0_bytes);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  // Detaches this process's holder slot; the last holder removes the segments.
  ~Arena();
  // The same, ahead of destruction (process exit); later calls do nothing. The memory stays
  // mapped until the Arena is destroyed. Concurrency: any thread.
  void detach();
  // In a child created by fork(): take a holder slot of its own (the inherited one is the
  // parent's). Concurrency: the forking thread of the child, before other threads exist.
  void reattach_after_fork();

  // A writable block able to hold `layout` and `payload_bytes`, state kReserved, refcount 1,
  // held by this process. kTooLarge if it could never fit; kOutOfCapacity if not now.
  Result<BlockHandle> allocate(uint64_t payload_bytes, const PayloadLayout& layout);
  // Drops one reference of a holder (kReserved or kReceived). At zero the block is free.
  Status release(BlockHandle h);
  // Adds a reference for another holder of the same block (e.g. a second reader).
  Status retain(BlockHandle h);
  // Validated description of a block the caller holds.
  Result<BlockView> view(BlockHandle h);
  // Payload length of a block the caller holds (validated against its class).
  Result<uint64_t> held_length(BlockHandle h);
  // Payload pointer of a block the caller holds (validated; nullptr on corruption).
  uint8_t* payload(BlockHandle h, uint64_t* length_out = nullptr);

  // Moves a held block to kQueued / a queued block to kReceived (used by Channel).
  Status mark_queued(BlockHandle h);
  Status mark_received(BlockHandle h);

  // Queue nodes and other small fixed cells (64 bytes each).
  Result<BlockRef> allocate_node();
  void free_node(BlockRef ref);
  QueueNode* node(BlockRef ref);               // nullptr (and a corruption count) if invalid
  // Cells of `bytes` for long-lived structures (channel headers); freed with free_cells.
  Result<Offset> allocate_cells(uint64_t bytes);
  void free_cells(Offset off);

  // Translates an arena offset of `len` bytes into a pointer, or nullptr if out of bounds.
  // Inline: every queue and block access goes through it (several times per message).
  uint8_t* translate(Offset off, uint64_t len) {
    const uint32_t seg = segment_of(off);
    if (seg >= kMaxSegments) return nullptr;
    uint8_t* base = segment_base(seg);
    if (base == nullptr) return nullptr;
    const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
    const uint64_t within = within_segment(off);
    if (within > size || len > size - within) return nullptr;
    return base + within;
  }
  template <typename T>
  T* translate_as(Offset off) { return reinterpret_cast<T*>(translate(off, sizeof(T))); }

  // Holders. holder() is this process's id (0 when the backend does not track holders).
  uint32_t holder() const { return holder_; }
  // Frees the blocks held by holders whose process has died; returns how many.
  // Concurrency: any thread, any process; at most one party reclaims a given dead holder.
  uint64_t reap_dead_holders();
  // Walks every carved cell; counts states and checks the free lists (for tests and tools).
  ArenaCensus census();

  void note_corruption() { header_->counters.corruption_count.fetch_add(1, std::memory_order_relaxed); }
  void add_bytes_copied(uint64_t n) { header_->counters.bytes_copied.fetch_add(n, std::memory_order_relaxed); }
  EventCount& space() { return header_->space; }
  ArenaStats stats() const;
  uint64_t capacity() const { return capacity_; }
  uint64_t arena_id() const { return header_->arena_id; }
  uint64_t max_payload() const;
  MemoryBackend& backend() { return *backend_; }

 private:
  Arena(std::unique_ptr<MemoryBackend> backend, ArenaHeader* header, uint64_t capacity);
  BlockHeader* block_header(BlockRef ref);
  Result<Offset> carve(uint64_t bytes);
  Status grow(uint32_t current_segment, uint64_t at_least);
  // This process's mapping of segment `index`, mapped on first use; nullptr if it cannot be.
  uint8_t* segment_base(uint32_t index) {
    uint8_t* base = bases_[index].load(std::memory_order_acquire);
    return base != nullptr ? base : map_segment_slow(index);
  }
  uint8_t* map_segment_slow(uint32_t index);
  Result<BlockRef> pop_free(std::atomic<uint64_t>& head, bool nodes);
  void push_free(std::atomic<uint64_t>& head, BlockRef ref, bool nodes);
  Status free_block(BlockRef ref, BlockHeader* hdr, uint32_t expected_state);
  Status claim_holder_slot();
  uint64_t reclaim_holder(uint32_t holder_id);
  // Calls visit(offset, header) for each block (nodes skipped) in carve order.
  template <typename Visit>
  void walk_blocks(Visit&& visit, uint64_t* nodes, uint64_t* bad_cells);

  std::unique_ptr<MemoryBackend> backend_;
  ArenaHeader* header_;                                       // in segment 0
  const uint64_t capacity_;                                   // private copy, bounds growth
  uint32_t holder_ = 0;                                       // our slot + 1; 0 = untracked
  std::atomic<bool> detached_{false};
  std::array<std::atomic<uint8_t*>, kMaxSegments> bases_{};   // this process's mappings
  std::array<std::atomic<uint64_t>, kMaxSegments> sizes_{};   // private sizes, bound every access
  std::mutex map_mutex_;                                      // serialises lazy mapping (rare)
};

}  // namespace memchannel
