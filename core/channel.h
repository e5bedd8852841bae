// Channel: a many-sender, many-receiver FIFO of blocks, living in arena memory.
//
// Guarantees: each message is received exactly once; messages from one sender arrive in the
// order that sender sent them (the queue is linearizable); the queue is unbounded unless
// `maxsize` (messages) or `maxbytes` (payload bytes) is set; close() stops new sends, wakes
// every waiter, and leaves queued messages receivable until drained.
//
// Algorithm: the descriptor queue is the Michael-Scott lock-free queue with counted (tagged)
// links over 64-byte QueueNodes drawn from the arena. A node carries {block, generation,
// length}; the queue always holds one dummy node at the head. Nodes are recycled through the
// arena's node free list and never unmapped, so a receiver that reads a node just recycled by
// another reads valid memory and fails its tagged CAS. Admission is a separate counter:
// `count` holds the number of messages queued or being pushed plus a closed bit, so a sender
// takes a slot (respecting maxsize) with one CAS, and a receiver that sees closed with count 0
// knows the channel is drained even while another sender's push is still in flight.
//
// Send:  node = allocate_node (kNodeHeld) and fill {block, generation + 1, length};
//        admit (count, bytes); node -> kNodeLinked(channel, sender);
//        block -> kSending; link after the last node (CAS); swing the tail; block -> kQueued.
// Recv:  claim the node after the dummy (kNodeLinked -> kNodeClaimed, by CAS: the claimer owns
//        the message); count and bytes -= 1 / length; block -> kReceived; advance the head onto
//        the claimed node (anyone may, so a stalled or dead claimer blocks nobody); whoever
//        advances frees the old dummy. The claimed node is the new dummy.
// Freeing an old dummy claimed by holder X whose block is still kQueued/kSending at the node's
// generation (X is slow, or died between its claim and kReceived) first hands the message to X:
// block -> kTransferred(X). X's mark_received takes it; X's reclaimer frees it (advance()).
// Every step records who is doing it (node and block states name holders), so the reclaimer
// of a dead process finishes or undoes its half-done send or receive (recover_queues below).
//
// Trust: a node reached through a link must be a node of this channel in the state its place
// implies (the dummy kNodeClaimed, messages kNodeLinked, the next one possibly kNodeClaimed by a
// receiver in progress). A violation seen while the head (or tail) is unchanged cannot be an
// honest race, so it is corruption: it is counted and the queue repaired (repair() below),
// losing only the messages past the bad link. A count that exceeds maxsize, or bytes that
// exceed what maxbytes allows, are recounted from the queue.
//
//   ChannelHeader (in a block of arena memory)
//   +-------------------------------+ 0    identity (immutable after create)
//   | magic, version, maxsize,      |
//   | maxbytes, channel id          |
//   +-------------------------------+ 64   head, received (consumer-owned, own cache line)
//   +-------------------------------+ 128  tail, sent (producer-owned, own cache line)
//   +-------------------------------+ 192  count (closed bit | messages), bytes
//   +-------------------------------+ 256  not_empty EventCount (receivers sleep here)
//   +-------------------------------+ 320  not_full EventCount (senders sleep here)
//   +-------------------------------+ 384  attached handles
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>

#include "core/arena.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kChannelMagic = 0x314c4e4843434d4dull;  // "MMCCHNL1"
inline constexpr uint32_t kChannelLayoutVersion = 3;  // 2: node states, claim protocol; 3: sent/received on the tail/head lines
inline constexpr uint64_t kClosedBit = 1ull << 63;

struct ChannelHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved0_;
  uint64_t maxsize;     // 0 = unbounded
  uint64_t maxbytes;    // 0 = unbounded
  uint64_t channel_id;
  uint64_t reserved1_[3];
  alignas(kCacheLine) std::atomic<uint64_t> head;   // tagged ref of the dummy node; receivers
  std::atomic<uint64_t> received;                   // messages ever received (receivers' line)
  alignas(kCacheLine) std::atomic<uint64_t> tail;   // tagged ref of the last node; senders
  std::atomic<uint64_t> sent;                       // messages ever sent (senders' line)
  alignas(kCacheLine) std::atomic<uint64_t> count;  // kClosedBit | messages queued or in flight
  std::atomic<uint64_t> bytes;                      // payload bytes queued or in flight
  alignas(kCacheLine) EventCount not_empty;
  alignas(kCacheLine) EventCount not_full;
  alignas(kCacheLine) std::atomic<uint32_t> attached;                       // Channel objects using this header
  uint32_t reserved2_;
};
static_assert(std::is_standard_layout_v<ChannelHeader>);
static_assert(offsetof(ChannelHeader, head) == 64);
static_assert(offsetof(ChannelHeader, tail) == 128);
static_assert(offsetof(ChannelHeader, count) == 192);
static_assert(offsetof(ChannelHeader, not_empty) == 256);
static_assert(offsetof(ChannelHeader, not_full) == 320);
static_assert(offsetof(ChannelHeader, attached) == 384);

struct ChannelStats {
  uint64_t queued, bytes_queued, sent, received, maxsize, maxbytes;
  bool closed;
};

// Concurrency: every member may be called from any thread (and, over a shared backend, any
// process) at once. The Channel object is this process's view; the state lives in the arena.
class Channel {
 public:
  static Result<std::shared_ptr<Channel>> create(std::shared_ptr<Arena> arena, uint64_t maxsize,
                                                 uint64_t maxbytes, uint64_t channel_id);
  // Opens the channel whose header is at `offset` of `arena` (validated).
  static Result<std::shared_ptr<Channel>> open(std::shared_ptr<Arena> arena, Offset offset);

  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  // The last Channel object of a header (across the process for heap) drains and frees it.
  ~Channel();
  // Gives back this object's attach now (the last one drains and frees the channel); the
  // destructor then does nothing. Idempotent. In a forked child that did not re-attach
  // (reattach_after_fork) it gives back nothing: the attach it inherited is its parent's.
  // Concurrency: any thread, but no operation of this object may follow it.
  void detach();
  // Whether this object's attach (if any) was taken by this process image: false in a forked
  // child until reattach_after_fork. One relaxed load: callers check it on every use.
  bool held_here() const { return fork_generation_.load(std::memory_order_relaxed) == fork_generation(); }
  // In a child created by fork(): take an attach of this process's own on a shared channel
  // the child inherited (its Arena must have re-attached first), so the child can use it and
  // its exit gives back only what it took. The bindings call it on the child's first use of
  // the channel (a child that never uses it, e.g. fork + exec, takes nothing). Idempotent.
  // False if the channel was being torn down (the object then holds no attach).
  // Concurrency: any thread.
  bool reattach_after_fork();
  // Whether this object's attach was taken by reattach_after_fork (a channel the process
  // inherited rather than opened).
  bool inherited() const { return inherited_.load(std::memory_order_acquire); }

  // Queues a block the caller holds; on kOk ownership has moved to the queue. Waits per
  // `wait` while full. kFull (non-blocking), kTimedOut, kInterrupted, kClosed.
  Status send(BlockHandle block, const WaitSpec& wait);
  // Allocates room for a message, waiting per `wait` while the arena is out of capacity.
  Result<BlockHandle> allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                               const WaitSpec& wait);
  // Takes the oldest message; the caller becomes its holder. kEmpty (non-blocking),
  // kTimedOut, kInterrupted, kClosed (closed and drained).
  Result<BlockHandle> recv(const WaitSpec& wait);

  void close();
  bool closed() const;
  ChannelStats stats() const;
  uint64_t queued() const;

  Offset offset() const { return offset_; }
  uint64_t channel_id() const { return header_->channel_id; }
  const std::shared_ptr<Arena>& arena() const { return arena_; }

 private:
  Channel(std::shared_ptr<Arena> arena, ChannelHeader* header, Offset offset);
  // One attempt at each step; the waits loop around them.
  enum class Admit { kAdmitted, kFull, kClosed };
  Admit try_admit(uint64_t length);
  // Gives back an admission (a send that failed after it was admitted).
  void unadmit(uint64_t length);
  Status enqueue(BlockRef node_ref);
  Result<BlockHandle> try_dequeue(bool* empty);
  // Moves the head from `head` (node `first`, whose state is `head_state`) onto `next`; the
  // party that succeeds frees the old dummy.
  void advance(uint64_t head, QueueNode* first, uint64_t head_state, BlockRef next);
  // Repairs a queue found (or, with `suspected`, feared) corrupted: see the header comment and
  // channel.cc. kRepaired when it changed something (counted as corruption), kIntact when a
  // walk found nothing to repair (someone else repaired it, or the suspicion was wrong),
  // kFailed when it could not (no node for a fresh dummy, or the head kept moving).
  enum class Repair { kRepaired, kIntact, kFailed };
  Repair repair();
  // Re-derives count and bytes from the queue (they were found impossible).
  void recount();
  bool node_in_channel(uint64_t state) const;
  void drain_and_free();

  std::shared_ptr<Arena> arena_;
  ChannelHeader* header_;  // in arena memory
  Offset offset_;
  uint32_t tag_;           // this channel's tag in node states: offset_ / 64
  uint64_t maxsize_;       // private copies of the limits, read once at open
  uint64_t maxbytes_;
  std::atomic<uint64_t> fork_generation_{fork_generation()};  // process image of the attach
  std::atomic<bool> attached_{true};              // this object still holds its attach
  std::atomic<bool> inherited_{false};            // attach taken by reattach_after_fork
  std::mutex reattach_mutex_;                     // serialises reattach_after_fork (rare)
};

// The channel tag nodes of the channel whose header is at `offset` carry (node_channel()).
constexpr uint32_t channel_tag(Offset offset) { return offset_to_ref(offset); }

// Crash recovery of every queue of `arena` after holder `dead` died; Arena::reap_dead_holders
// calls it before it frees the dead holder's blocks. For each channel (found by walking arena
// cells), with a consistent view of its queue (the head unchanged across the walk):
//  - a node the dead holder had admitted but not linked: rolled back (count, bytes, node,
//    and its block if kSending); a node it had linked: its block kSending -> kQueued, so the
//    message is delivered;
//  - a node the dead holder had claimed whose block it had not taken: the block is freed (the
//    receiver died holding the message); if the node was freed first, the party that freed it
//    made the block kTransferred to the dead holder, and the holder pass frees it;
//  - a claimed node behind the head (an old dummy its advancer died before freeing): freed.
// Returns the blocks freed. Concurrency: any thread; one caller per dead holder.
uint64_t recover_queues(Arena& arena, uint32_t dead);

}  // namespace memchannel
