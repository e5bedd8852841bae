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
//   +-------------------------------+ header_bytes, then carved blocks up to the segment's bytes
//   | sentinel tail (64 B)          |    shm files only, past every segment's bytes: never
//   +-------------------------------+    allocated, read by intact() (core/backend.h)
//
// Allocation: pop the size class's lock-free free list (Treiber stack with a tag in the head
// word against ABA); if empty, carve fresh memory by CAS on the carve cursor, adding a segment
// when the current one is full (up to `capacity` bytes in all); if capacity is exhausted, take
// a free block of a larger class. Freed blocks go back to the list of their own class (blocks
// are never split or merged, so their memory stays type-stable: a stale reader of a freed block
// reads valid memory and fails its CAS). Memory is never unmapped while the arena lives.
//
// Fresh memory is carved in two CAS steps (a carving word in the cell, then the cursor; see
// block.h), so a carver that dies leaves a cell of known size that walkers skip and reclaimers
// finish. Once the capacity is carved, a queue node can still be had: a free data block is cut
// into 64-byte nodes (blocks are never merged back, so converted memory stays nodes).
//
// Trust: every reference, length and state read from arena memory is checked against the
// mapping sizes this process holds privately; failures return a typed Status and bump
// `corruption_count`, and the arena keeps serving valid traffic. A free-list entry is checked
// before it is popped (it must be free, of the list's class, with the head unchanged since it
// was read); a list found corrupted is detached whole: its blocks leak, none is handed out twice.
//
// Crash points (test builds, MEMCHANNEL_TEST_HOOKS): named steps of the data path where a test
// may kill the process (see CrashPoint below and tests/cpp/test_crash_points.cc).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/arena_layout.h"
#include "core/backend.h"
#include "core/block.h"
#include "core/crash_points.h"
#include "core/node.h"
#include "core/layout.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {




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
  bool readonly = false;  // a share token's view of its shared block (core/shares.cc)
  std::string_view format_view() const { return {format.data(), format_len}; }
};

struct ArenaStats {
  uint64_t capacity, mapped_bytes, carved_bytes, blocks_in_use, bytes_in_use, bytes_copied,
      corruption_count, segments, nodes_in_use, attached_holders, reclaimed_blocks;
};

// What a full walk of arena memory found (crash tests' invariant checker; see also
// core/invariants.h for the full cross-check of lists, queues and holders).
struct ArenaCensus {
  uint64_t blocks = 0, free_blocks = 0, reserved = 0, queued = 0, received = 0, nodes = 0;
  uint64_t arena_cells = 0;      // blocks holding arena structures (channel headers)
  uint64_t free_listed = 0;      // blocks reachable from the free lists
  uint64_t bad_cells = 0;        // cells with an unknown magic before the carve end
  bool free_lists_consistent = true;  // every listed block is free and listed once
  uint64_t sending = 0;          // blocks kSending
  uint64_t transferred = 0;      // blocks kTransferred (claimed messages their claimer has not taken)
  uint64_t shared = 0;           // blocks kBlockShared (owned by their share tokens)
  uint64_t pooled = 0;           // free blocks idle in a buffer pool (on the pool's list)
  uint64_t carving_cells = 0;    // cells whose carver has not finished (or died)
  uint64_t nodes_free = 0, nodes_held = 0, nodes_linked = 0, nodes_claimed = 0;
  uint64_t nodes_free_listed = 0;     // nodes reachable from the node free list
  bool node_list_consistent = true;   // every listed node is free and listed once
};

// One carved cell, as Arena::for_each_cell reports it.
struct CellInfo {
  enum Kind { kBlock, kNode, kCarving } kind;
  Offset offset;
  uint64_t bytes;             // cell size (a block's class size; 64 for a node)
  BlockHeader* block;         // kBlock
  QueueNode* node;            // kNode
  uint64_t carving_word;      // kCarving
};

// How many fork()s led to this process image: 0 in a process that was not forked since the
// library was loaded, bumped in the child of each fork (pthread_atfork). Objects that hold a
// count in shared memory record it, so a child never gives back a count its parent took.
namespace detail {
extern std::atomic<uint64_t> g_fork_generation;
}  // namespace detail
inline uint64_t fork_generation() { return detail::g_fork_generation.load(std::memory_order_relaxed); }

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

  // How long allocate / allocate_node may wait for another live party that is creating the
  // segment they need (a creator that died is replaced at once, never waited for). Callers
  // with a deadline of their own pass kNoCreatorWait and wait on space() instead: the creator
  // wakes it when the segment is published (Channel::allocate and Channel::send do).
  static constexpr int64_t kDefaultCreatorWaitNs = 2'000'000'000;
  static constexpr int64_t kNoCreatorWait = 0;
  // A writable block able to hold `layout` and `payload_bytes`, state kReserved, refcount 1,
  // held by this process. kTooLarge if it could never fit; kOutOfCapacity if not now.
  // `payload_out` (optional) receives the payload's address on kOk, computed from this
  // process's own values (the cell it claimed, checked to span its class, and the meta size
  // of `layout`), so a caller filling a block it just allocated reads no shared field for it
  // (payload() re-reads and re-checks the header, as for a block from elsewhere).
  Result<BlockHandle> allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                               int64_t creator_wait_ns = kDefaultCreatorWaitNs,
                               uint8_t** payload_out = nullptr);
  // Drops one reference of a holder (kReserved or kReceived). At zero the block is free.
  // kNotHolder (nothing changed) when the block is held by another holder: a forked child
  // releasing a block it inherited from its parent. held_length and begin_send refuse such a
  // block the same way, so a child cannot send its parent's block either.
  Status release(BlockHandle h);
  // Adds a reference for another holder of the same block (e.g. a second reader).
  Status retain(BlockHandle h);
  // Validated description of a block the caller holds.
  Result<BlockView> view(BlockHandle h);
  // Payload length of a block the caller holds (validated against its class).
  Result<uint64_t> held_length(BlockHandle h);
  // Payload pointer of a block the caller holds (validated; nullptr on corruption).
  uint8_t* payload(BlockHandle h, uint64_t* length_out = nullptr);

  // Used by Channel: kQueued or kSending with h's generation, or kTransferred to this holder
  // at that generation -> kReceived by this holder.
  Status mark_received(BlockHandle h);
  // Used by Channel when it frees an old dummy whose claimer `claimer` may not have taken the
  // message yet: kQueued or kSending with the message's generation -> kTransferred(claimer).
  // False when the state is anything else (taken, reclaimed, recycled): nothing to do.
  bool transfer_message(BlockHandle message, uint32_t claimer);
  // The send protocol (Channel::send): a block this process holds alone (kReserved or
  // kReceived, refcount 1, not an arena cell) -> kSending(generation + 1, this holder).
  // *previous receives the word abort_send restores; the message's handle is
  // {h.ref, sending_generation(h)}.
  Status begin_send(BlockHandle h, uint32_t* previous);
  static uint32_t sending_generation(BlockHandle h) { return (h.generation + 1) & kGenerationMask; }
  // Undoes begin_send (the message was never linked): kSending -> `previous`.
  Status abort_send(BlockHandle message, uint32_t previous);
  // kSending -> kQueued once the message is linked; a receiver may have taken it already.
  void finish_send(BlockHandle message);

  // Queue nodes and other small fixed cells (64 bytes each). A node is handed out kNodeHeld by
  // this holder with a fresh generation; it is freed by the party that owns it.
  // *found (if given) gets the node the ref names, as find_node would.
  Result<BlockRef> allocate_node(int64_t creator_wait_ns = kDefaultCreatorWaitNs, QueueNode** found = nullptr);
  // Frees a node in any state but kNodeFree (a second free is counted and refused).
  void free_node(BlockRef ref);
  // Frees a node only if its state word is still `expected`; false otherwise (counted as
  // corruption unless `count_refusal` is false: a caller that may lose an honest race).
  bool free_node_from(BlockRef ref, uint64_t expected, bool count_refusal = true);
  // Nodes a caller frees one by one and gives to the node free list together: one CAS on the
  // list's head for all of them (a receive batch frees an old dummy per message). Each node is
  // marked free as it is stashed; a crash before push_stash loses the stashed nodes (census:
  // lost_nodes), as free_node's window loses one.
  struct NodeStash {
    BlockRef first = 0;
    std::atomic<uint32_t>* last_link = nullptr;
    uint32_t count = 0;
  };
  bool free_node_into(QueueNode* n, BlockRef ref, uint64_t expected, NodeStash* stash);
  void push_stash(NodeStash* stash);
  // The same for a node the caller has found already (n == find_node(ref)).
  bool free_node_at(QueueNode* n, BlockRef ref, uint64_t expected, bool count_refusal = true);
  QueueNode* node(BlockRef ref);               // nullptr (and a corruption count) if invalid
  QueueNode* find_node(BlockRef ref);          // the same without counting (caller confirms)
  // A block header in arena memory (in bounds, block magic), or nullptr; no counting.
  BlockHeader* find_block(BlockRef ref) { return block_cell(ref); }
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

  // A hint that the node cell `ref` names (both lines: the QueueNode, then its inline payload)
  // is about to be read and written: the cache misses of the next node of a chain overlap the
  // work on this one. Only the bounds check runs (a prefetch reads nothing and never faults);
  // whoever uses the node still finds and checks it.
  void prefetch_node(BlockRef ref) {
    if (ref == 0) return;
    if (uint8_t* cell = translate(ref_to_offset(ref), kNodeBytes)) {
      __builtin_prefetch(cell, 1, 3);
      __builtin_prefetch(cell + sizeof(QueueNode), 0, 3);
    }
  }

  // Holders. holder() is this process's id (0 when the backend does not track holders).
  uint32_t holder() const { return holder_; }
  // The incarnation of this process's holder slot occupancy (with holder(), its owner identity).
  uint32_t incarnation() const { return incarnation_; }
  // Whether the holder that wrote creating word `w` into the segment table still runs (the
  // same occupant of its slot). Untracked holders (heap) are always alive.
  bool creator_alive(uint64_t w);
  // Whether slot `holder` is still occupied, by a live process, in the occupancy whose
  // incarnation is `incarnation` (compared under `mask`).
  bool occupant_alive(uint32_t holder, uint32_t incarnation, uint32_t mask);
  // Frees the blocks held by holders whose process has died; returns how many. Also finishes
  // what a dead process left half done: cells it was carving, nodes it held, sends it had
  // linked (completed) or not (rolled back), messages it had claimed, dummies it had advanced
  // past (see recover_queues in channel.h).
  // Concurrency: any thread, any process; at most one party reclaims a given dead holder.
  uint64_t reap_dead_holders();
  // Clears a slot's identity, then frees it.
  static void free_slot(HolderSlot& slot);
  // Walks every carved cell; counts states and checks the free lists (for tests and tools).
  ArenaCensus census();
  // Calls visit for every carved cell in carve order (blocks, nodes, unfinished carves); stops
  // at a cell it cannot size. Returns the number of such unknown cells (0 or 1 per segment).
  // Concurrency: any thread; cells may change state while visited.
  uint64_t for_each_cell(const std::function<void(const CellInfo&)>& visit);
  // Release tracking (memchannel.Tracker; core/tracking.cc, docs/design.md "Release
  // tracking"). track_block marks a block this holder owns (kReserved or kReceived, of h's
  // generation) and returns its ticket; the tracking ends when the block is next freed, by
  // any party in any process (a receiver's release, the reaper of a dead holder, a closed
  // channel's drop). Concurrency: any thread, any process.
  Result<uint32_t> track_block(BlockHandle h);
  // Whether the tracking `ticket` of block `ref` has ended (an invalid ref: true, counted).
  bool tracking_ended(BlockRef ref, uint32_t ticket);
  // Sleeps until the tracking ended (kOk), spec's deadline passed (kTimedOut) or its slice
  // ran out (kInterrupted: call again); sweeps for dead holders between sleeps.
  Status wait_tracking(BlockRef ref, uint32_t ticket, const WaitSpec& spec);
  // Asks whoever ends the tracking to send listener `key` the event {arena id, offset of the
  // block}; true when it has ended already (then nothing will be sent).
  bool arm_tracking(BlockRef ref, uint32_t ticket, uint32_t key);
  // Shares (memchannel.share; core/shares.cc, docs/design.md "Shares"). share() turns the block
  // `h` this holder owns into `n` share tokens, returned kReserved by this holder: plain
  // messages to send, each giving its receiver a read-only view of the block (view()). A
  // normal block becomes kBlockShared; a token (a received share) is replaced by the n new
  // ones. The block is freed when the last token is, wherever. kInvalidArgument when n is 0
  // or the block's 42 token indices are used up; kOutOfCapacity when no token fits now.
  Result<std::vector<BlockHandle>> share(BlockHandle h, uint32_t n);
  // Buffer pools (core/pools.cc, docs/design.md "Buffer pools"): create_pool makes a pool of
  // `count` blocks like `prototype` (a block this holder reserved: its class, format, shape
  // and length; the prototype itself becomes one of them), idle in a pool whose header is an
  // arena cell (it lives until the arena is removed); returns the pool's offset. pool_reserve hands out an
  // idle one (kReserved by this holder; kEmpty while all are out, waiting per `wait`;
  // kClosed once closed). A pooled block freed anywhere goes back to its pool; after
  // pool_close, to the arena, as do the idle ones at once.
  Result<Offset> create_pool(BlockHandle prototype, uint32_t count);
  Result<BlockHandle> pool_reserve(Offset pool, const WaitSpec& wait);
  void pool_close(Offset pool);
  // Idle blocks now (a snapshot) and blocks the pool still has (idle or out).
  uint32_t pool_idle(Offset pool);
  uint32_t pool_count(Offset pool);
  // Whether `h` is a share token (its Buffers are read-only).
  bool is_share_token(BlockHandle h);
  // Frees a block whose state word is still exactly `expected` (recovery of a dead holder's
  // block; refcount ignored). kDoubleRelease if the state moved on.
  Status reclaim_block(BlockRef ref, uint32_t expected);
  // kSending(expected) -> kQueued for a dead sender whose message is linked.
  bool complete_send(BlockRef ref, uint32_t expected);
  // Whether holder id `holder` names a live process (always true for untracked holders).
  bool holder_alive(uint32_t holder);
  // Prompt reclamation: if this process has not swept this arena for dead holders in the last
  // sweep interval (kSweepIntervalNs), do it now (reap_dead_holders). Called by every entry
  // point of the core (allocate, Channel::send/recv/allocate and their waits, stats), so what a
  // dead peer held comes back within about one interval of any call by any survivor, with no
  // allocation pressure and no explicit reap. The common case is one coarse clock read (vDSO,
  // no system call) and one process-local load; a sweep costs one liveness check per attached
  // peer, and the full reclamation of a dead one happens once, by whoever claims its slot.
  // Concurrency: any thread; one thread of the process sweeps at a time.
  void maybe_reap() {
    if (!sweeps_) return;
    if (coarse_now_ns() < next_sweep_ns_.load(std::memory_order_relaxed)) return;
    sweep_slow();
  }
  // Sets the sweep interval of this process's view (negative: never sweep; tests that need a
  // dead holder to stay unreaped until they reap it). Inherited by fork() children.
  void set_sweep_interval(int64_t ns);
  bool sweeps() const { return sweeps_; }
  int64_t sweep_interval() const { return sweep_interval_ns_.load(std::memory_order_relaxed); }

  void note_corruption() { header_->counters.corruption_count.fetch_add(1, std::memory_order_relaxed); }
  void add_bytes_copied(uint64_t n) { stripe().bytes_copied.fetch_add(n, std::memory_order_relaxed); }
  EventCount& space() { return header_->space; }
  // The counters, after a sweep for dead holders if one is due (maybe_reap).
  ArenaStats stats();
  // The counters as they are (no sweep): for checkers and tools that must not write.
  ArenaStats counters() const;
  uint64_t capacity() const { return capacity_; }
  uint64_t arena_id() const { return arena_id_; }  // private copy, read at create/attach
  // Checks every word of the shared header against this process's private copies and bounds
  // and repairs what it can prove (docs/shm.md, "Threat model"): the identity words, the segment
  // table of mapped segments, the segment count, the carve cursor (re-derived by walking the
  // cells), the attach count (never below the active holder slots). Returns the words
  // repaired (each counted as corruption). Called by every sweep (maybe_reap) and by carve
  // when the cursor makes no sense. Concurrency: any thread.
  uint64_t check_header();
  // Whether a segment of this arena was found truncated (by this process's sweep, or another
  // party's, through `ready`): every later allocate, send and recv fails with kCorruptedLength.
  bool truncated() const { return truncated_.load(std::memory_order_relaxed); }
  // The data path's truncation check (docs/shm.md, "Truncated segments"): whether the arena is
  // still whole as far as the segments of offsets a, b and c go. A few loads: `ready` (on the
  // header's identity line, which nothing writes after creation) and the sentinel word at the
  // end of each of the three segments (core/backend.h; never written either). Anything else
  // goes to confirm_intact, which decides. Concurrency: any thread.
  bool intact(Offset a, Offset b, Offset c) {
    if (header_->ready.load(std::memory_order_relaxed) == kArenaReady && segment_intact(segment_of(a)) &&
        segment_intact(segment_of(b)) && segment_intact(segment_of(c))) [[likely]] {
      return true;
    }
    return confirm_intact();
  }
  // Whether segment `seg`'s sentinel still reads right (true for a segment this process has
  // not mapped, or a backend without sentinels). One or two loads.
  bool segment_intact(uint32_t seg) const {
    const std::atomic<uint64_t>* s = sentinels_[seg % kMaxSegments].load(std::memory_order_relaxed);
    return s == nullptr || s->load(std::memory_order_relaxed) == kSegmentSentinel;
  }
  // The slow half of intact(): false once a segment is found truncated (`ready` says
  // kArenaTruncated, or the backend finds a mapping cut or its pages lost: check_mappings).
  // The first party to find it marks the arena truncated for every party (mark_truncated). A
  // wrong `ready` or sentinel while the backend finds every segment whole is a forgery:
  // restored and counted as corruption, and the arena goes on. Also run by every sweep
  // (check_header). Concurrency: any thread.
  [[gnu::noinline]] bool confirm_intact();
  uint64_t max_payload() const;
  // The largest payload this arena can still serve: max_payload() bounded by the segments that
  // exist and the room left for new ones. Segments are never removed and blocks never merged,
  // so a request above it can never be served (allocate reports kTooLarge, not kOutOfCapacity).
  uint64_t reachable_payload() const;
  MemoryBackend& backend() { return *backend_; }

 private:
  Arena(std::unique_ptr<MemoryBackend> backend, ArenaHeader* header, uint64_t capacity);
  BlockHeader* block_header(BlockRef ref);
  // This party's counter stripe: its holder slot and thread pick one of kCounterStripes.
  CounterStripe& stripe() {
    return header_->counters.stripes[(holder_ * 5 + thread_stripe()) % kCounterStripes];
  }
  static uint32_t thread_stripe();
  Status grow(uint32_t current_segment, uint64_t at_least);
  // Creates segment `index` under a fresh recorded nonce (Arena::grow has claimed the index);
  // `taken_over`: a dead creator's file may sit under the nonce recorded before.
  Result<uint8_t*> create_named_segment(uint32_t index, uint64_t bytes, bool taken_over);
  // This process's mapping of segment `index`, mapped on first use; nullptr if it cannot be.
  uint8_t* segment_base(uint32_t index) {
    uint8_t* base = bases_[index].load(std::memory_order_acquire);
    return base != nullptr ? base : map_segment_slow(index);
  }
  uint8_t* map_segment_slow(uint32_t index);
  // Pops the top entry of a free list after checking it (see the header comment); *word gets
  // the entry's state word as checked, from which the caller claims it.
  // *cell gets the entry's memory (a BlockHeader or QueueNode).
  Result<BlockRef> pop_free(std::atomic<uint64_t>& head, bool nodes, uint32_t cls, uint64_t* word,
                            void** cell);
  // Pushes `ref`, whose free-list link is `link` (the caller has validated the cell).
  void push_free(std::atomic<uint64_t>& head, BlockRef ref, std::atomic<uint32_t>* link);
  // Pops and claims (kFree -> kReserved by this holder) a free block of class `cls`.
  Result<BlockRef> take_free_block(uint32_t cls, uint32_t* generation, BlockHeader** hdr);
  // The header of a block for a state transition: in bounds with the block magic (its size
  // class is not checked: only the 64-byte header is touched). nullptr otherwise.
  BlockHeader* block_cell(BlockRef ref) {
    if (ref == 0) return nullptr;
    auto* hdr = translate_as<BlockHeader>(ref_to_offset(ref));
    return hdr != nullptr && load_cell_magic(hdr) == kBlockMagic ? hdr : nullptr;
  }
  Status free_block(BlockRef ref, BlockHeader* hdr, uint32_t expected_state);
  // The pool a pooled block names, validated (nullptr: not a pool cell of this arena).
  PoolHeader* pool_of(BlockHeader* hdr);
  PoolHeader* pool_at(Offset pool);
  // Takes the pool's idle blocks back into the arena (a closed pool).
  void drain_pool(PoolHeader* pool);
  void notify_pool(PoolHeader* pool);
  // A share token counts as a queue node in the arena's counters, not as a data block (sharing
  // leaves blocks_in_use as it was): moves one block's counts to the nodes and back.
  void count_as_token(BlockHeader* hdr, bool token);
  // Drops the share a token names (free_block, before the token is marked free); idempotent.
  void drop_share(BlockHeader* token);
  // A token's shared block, validated (nullptr if the token is not a live share of it).
  BlockHeader* shared_of(BlockHeader* token, uint32_t* generation, BlockRef* ref);
  // Ends a block's release tracking (free_block, before the block is marked free).
  void end_tracking(BlockRef ref, BlockHeader* hdr, uint32_t word);
  // Carves `bytes` of fresh memory. The cell is returned still holding this holder's carving
  // word: the caller initialises it and publishes its magic (publish_cell).
  Result<Offset> carve(uint64_t bytes, bool node, int64_t creator_wait_ns);
  void publish_cell(uint8_t* cell, uint32_t magic);
  // Moves the carve cursor past a cell a carver claimed at `cursor` (helping a slow carver).
  void help_carve(uint64_t cursor, uint64_t carving_word);
  Result<BlockRef> convert_block_to_nodes();
  // Claims a free holder slot (left kSlotClaiming, with this process's identity and lock).
  Status claim_holder_slot();
  // Joins the holders: a slot claimed, then counted in attached_holders, then kSlotActive
  // ("The attach window", core/recovery.cc). kNotFound if the arena was torn down meanwhile.
  Status join_holders();
  // The last party by the count removes the segments (unless live active slots say the count
  // was forged low). release_if_abandoned: the same when others are still counted but none of
  // them is alive (units of parties that died in their attach window).
  void tear_down();
  void release_if_abandoned();
  void remove_segments();
  uint64_t reclaim_holder(uint32_t holder_id);
  // Calls the visitor for each carved cell in carve order; stops a segment at an unknown cell.
  template <typename Visit>
  void walk_cells(Visit&& visit, uint64_t* bad_cells);

  std::unique_ptr<MemoryBackend> backend_;
  ArenaHeader* header_;                                       // in segment 0
  const uint64_t capacity_;                                   // private copy, bounds growth
  uint64_t arena_id_ = 0;                                     // private copy (check_header)
  std::atomic<bool> truncated_{false};
  // Re-derives the carve cursor from the cells (the first never-carved cell of the last
  // segment) and installs it in place of `bad`. True if it did.
  bool repair_carve(uint64_t bad);
  // Other parties' kSlotActive slots (each counted in attached_holders, live or not yet
  // reaped), and how many of them their party's liveness lock says are alive.
  uint32_t active_slots(uint32_t* live = nullptr);
  uint32_t holder_ = 0;                                       // our slot + 1; 0 = untracked
  uint32_t incarnation_ = 0;                                  // of our slot, when we claimed it
  uint64_t fork_generation_ = fork_generation();              // process image that attached
  std::atomic<bool> detached_{false};
  // Prompt reclamation (maybe_reap): this process's next sweep time and interval.
  bool sweeps_ = false;                                       // the backend tracks holders
  std::atomic<int64_t> next_sweep_ns_{0};
  std::atomic<int64_t> sweep_interval_ns_{kSweepIntervalNs};
  void sweep_slow();
  static int64_t coarse_now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  std::array<std::atomic<uint8_t*>, kMaxSegments> bases_{};   // this process's mappings
  // The sentinel of each mapped segment (MemoryBackend::sentinel; nullptr: none), set with bases_.
  std::array<std::atomic<std::atomic<uint64_t>*>, kMaxSegments> sentinels_{};
  void note_mapped(uint32_t index) {
    sentinels_[index].store(backend_->sentinel(index), std::memory_order_relaxed);
  }
  // Marks the arena truncated for every party (`ready` = kArenaTruncated) and this process.
  void mark_truncated();
  std::array<std::atomic<uint64_t>, kMaxSegments> sizes_{};   // private sizes, bound every access
  std::mutex map_mutex_;                                      // serialises lazy mapping (rare)
};

}  // namespace memchannel
