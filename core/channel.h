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
//   ChannelHeader (in a block of arena memory)
//   +-------------------------------+ 0    identity (immutable after create)
//   | magic, version, maxsize,      |
//   | maxbytes, channel id          |
//   +-------------------------------+ 64   head (consumer-owned, own cache line)
//   +-------------------------------+ 128  tail (producer-owned, own cache line)
//   +-------------------------------+ 192  count (closed bit | messages), bytes
//   +-------------------------------+ 256  not_empty EventCount (receivers sleep here)
//   +-------------------------------+ 320  not_full EventCount (senders sleep here)
//   +-------------------------------+ 384  totals: messages sent / received, attached handles
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "core/arena.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kChannelMagic = 0x314c4e4843434d4dull;  // "MMCCHNL1"
inline constexpr uint32_t kChannelLayoutVersion = 1;
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
  alignas(kCacheLine) std::atomic<uint64_t> tail;   // tagged ref of the last node; senders
  alignas(kCacheLine) std::atomic<uint64_t> count;  // kClosedBit | messages queued or in flight
  std::atomic<uint64_t> bytes;                      // payload bytes queued or in flight
  alignas(kCacheLine) EventCount not_empty;
  alignas(kCacheLine) EventCount not_full;
  alignas(kCacheLine) std::atomic<uint64_t> sent;       // messages ever sent
  std::atomic<uint64_t> received;                       // messages ever received
  std::atomic<uint32_t> attached;                       // Channel objects using this header
  uint32_t reserved2_;
};
static_assert(std::is_standard_layout_v<ChannelHeader>);
static_assert(offsetof(ChannelHeader, head) == 64);
static_assert(offsetof(ChannelHeader, tail) == 128);
static_assert(offsetof(ChannelHeader, count) == 192);
static_assert(offsetof(ChannelHeader, not_empty) == 256);
static_assert(offsetof(ChannelHeader, not_full) == 320);
static_assert(offsetof(ChannelHeader, sent) == 384);

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
  Status enqueue(BlockRef node_ref);
  Result<BlockHandle> try_dequeue(bool* empty);
  void drain_and_free();

  std::shared_ptr<Arena> arena_;
  ChannelHeader* header_;  // in arena memory
  Offset offset_;
  uint64_t maxsize_;       // private copies of the limits, read once at open
  uint64_t maxbytes_;
};

}  // namespace memchannel
