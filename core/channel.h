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
// another reads valid memory and fails its tagged CAS.
//
// Counting: nodes carry a sequence number and a running byte position (arena.h), written by
// the sender before its link CAS. Messages queued = last.seq - dummy.seq, their bytes the
// difference of positions. The counts therefore change only with the queue's own CASes (a
// link, a head advance), and a process killed anywhere in a send or a receive cannot leave
// them wrong: a node it never linked was never counted, a message it claimed stops counting
// when anyone advances the head past it. (A separate admission counter, as this channel had
// before, is two words changed by two CASes; the 1-hour soak found it one too high after a
// receiver was killed between them, which left a closed channel never drained.)
// Admission (maxsize, maxbytes) is checked at the link: a sender links only if the channel has
// room counted from the node it links after, and only one sender's link after a given node
// succeeds, so the bound is exact. Close is a link too: close() seals the last node's link
// (kLinkClosed), so no sender links after it and a receiver that finds the sealed link at the
// dummy knows the channel is closed and drained; nothing is ever "in flight".
//
// Send:  node = allocate_node (kNodeHeld) and fill {block, generation + 1, length};
//        node -> kNodeLinked(channel, sender); block -> kSending; with room, set seq and
//        position from the last node and link after it (CAS); swing the tail; block -> kQueued.
//        While the channel is full the sender waits with its block kSending and node unlinked.
// Recv:  claim the node after the dummy (kNodeLinked -> kNodeClaimed, by CAS: the claimer owns
//        the message); block -> kReceived; advance the head onto the claimed node (anyone may,
//        so a stalled or dead claimer blocks nobody); whoever advances frees the old dummy and
//        wakes senders waiting for room. The claimed node is the new dummy.
// Freeing an old dummy claimed by holder X whose block is still kQueued/kSending at the node's
// generation (X is slow, or died between its claim and kReceived) first hands the message to X:
// block -> kTransferred(X). X's mark_received takes it; X's reclaimer frees it (advance()).
// Every step records who is doing it (node and block states name holders), so the reclaimer
// of a dead process finishes or undoes its half-done send or receive (recover_queues below).
//
// Trust: a node reached through a link must be a node of this channel in the state its place
// implies (the dummy kNodeClaimed, messages kNodeLinked, the next one possibly kNodeClaimed by a
// receiver in progress), and the expected successor: its seq one more than the node linking to
// it (a link forged to another node of the same queue skips numbers, so it is caught too). A violation seen while the head (or tail) is unchanged cannot be an
// honest race, so it is corruption: it is counted and the queue repaired (repair() below),
// losing only the messages past the bad link. Sequence numbers or positions no honest queue
// holds (the last below the dummy, more than maxsize queued) are counted as corruption, and
// the counts are then taken by walking the queue until the forged node has left it.
//
//   ChannelHeader (in a block of arena memory)
//   +-------------------------------+ 0    identity (immutable after create)
//   | magic, version, maxsize,      |
//   | maxbytes, channel id          |
//   +-------------------------------+ 64   head (consumer-owned, own cache line)
//   +-------------------------------+ 128  tail (producer-owned, own cache line)
//   +-------------------------------+ 192  closed (set by close(); the sealed link is the truth),
//   |                               |      fd wait-list keys 0..13 at 200 (core/fd_wait.h)
//   +-------------------------------+ 256  not_empty WakeOneCount (receivers sleep here),
//   |                               |      fd_readers at 264: slots armed for "readable",
//   |                               |      receivers_spin_until at 272 (a spinner's announcement)
//   +-------------------------------+ 320  not_full EventCount (senders sleep here),
//   |                               |      fd_writers at 328: slots armed for "writable"
//   +-------------------------------+ 384  attached handles, fd wait-list keys 14..27 at 392
//   +-------------------------------+ 448
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>

#include "core/arena.h"
#include "core/fd_wait.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kChannelMagic = 0x314c4e4843434d4dull;  // "MMCCHNL1"
inline constexpr uint32_t kChannelLayoutVersion = 8;  // 2: node states, claim protocol; 3: sent/received on the tail/head lines; 4: counts from node seq, sealed link; 5: links checked by seq, messages_lost, repair epoch; 6: fd wait-list; 7: wake-one not_empty, receivers' spin announcement; 8: truncation_adjust, limits_check, two-halved attach word
// The largest maxsize (a count that fits in 63 bits, as earlier layouts had it).
inline constexpr uint64_t kMaxChannelSize = (1ull << 63) - 1;
// A node's `next` link with this tag bit set is sealed: the channel is closed after that node.
inline constexpr uint32_t kLinkClosed = 1u << 31;
constexpr bool link_sealed(uint64_t link) { return (tagged_tag(link) & kLinkClosed) != 0; }
// The next value of a link that held `old`: its tag bumped (within 31 bits), naming `ref`.
constexpr uint64_t next_link(uint64_t old, BlockRef ref, bool sealed = false) {
  return make_tagged(((tagged_tag(old) + 1) & ~kLinkClosed) | (sealed ? kLinkClosed : 0), ref);
}
static_assert(!link_sealed(next_link(make_tagged(kLinkClosed - 1, 0), 0)));
static_assert(link_sealed(next_link(0, 0, true)));

// The attach count's word: the count in the low half, its complement in the high half, so a
// forged half is seen (the halves disagree). Which half is true cannot be told, so such a word
// is replaced by kAttachPinned: the count is given up, opens go on, and nobody ever frees the
// channel (it leaks when the last user leaves; nobody frees it under another).
constexpr uint64_t attach_word(uint32_t count) { return (static_cast<uint64_t>(~count) << 32) | count; }
constexpr bool attach_word_valid(uint64_t w) { return static_cast<uint32_t>(w >> 32) == ~static_cast<uint32_t>(w); }
constexpr uint32_t attach_count(uint64_t w) { return static_cast<uint32_t>(w); }
inline constexpr uint64_t kAttachPinned = ~0ull;
static_assert(!attach_word_valid(kAttachPinned) && attach_word_valid(attach_word(0)) &&
              attach_count(attach_word(7)) == 7);
// A digest of the limits and id (ChannelHeader::limits_check): a single forged limit is seen by
// an opener, which refuses the channel until a party holding private copies restores them.
constexpr uint32_t limits_digest(uint64_t maxsize, uint64_t maxbytes, uint64_t channel_id) {
  const uint64_t x = (maxsize * 0x9e3779b97f4a7c15ull) ^ (maxbytes * 0xc2b2ae3d27d4eb4full) ^
                     (channel_id * 0x165667b19e3779f9ull) ^ 0x314c4e4843434d4dull;
  return static_cast<uint32_t>(x ^ (x >> 32));
}

struct ChannelHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t limits_check;  // limits_digest(maxsize, maxbytes, channel_id), written at create
  uint64_t maxsize;     // 0 = unbounded
  uint64_t maxbytes;    // 0 = unbounded
  uint64_t channel_id;
  // Written only by repair() (rare), read by every send and recv from the identity line, which
  // nothing else writes after create: no cost on the data path.
  std::atomic<uint64_t> messages_lost;   // messages a repair cut off past a forged link
  std::atomic<uint64_t> repair_epoch;    // bumped by every repair: each Channel's next call reports it
  // Written only once the arena is found truncated (Channel::truncation_loss): messages taken by
  // a receiver that then found the truncation (+1 each: lost, though no longer queued) less
  // messages linked by a sender that was then told its send failed (-1 each: queued, not lost).
  std::atomic<uint64_t> truncation_adjust;
  alignas(kCacheLine) std::atomic<uint64_t> head;    // tagged ref of the dummy node; receivers
  alignas(kCacheLine) std::atomic<uint64_t> tail;    // tagged ref of the last node; senders
  alignas(kCacheLine) std::atomic<uint64_t> closed;  // 1 once close() began (a hint: see seal())
  // The fd wait-list (core/fd_wait.h): slot i names a listener socket by its 32-bit key, 0 =
  // free; in the spare words of two lines senders read anyway (closed) or rarely (attached).
  // Any value is a valid key (it only names an abstract socket), so nothing read here can send
  // a sender out of bounds; a key whose socket is gone is freed by the sender that finds it so
  // (docs/design.md, "Waiting on several channels: fd readiness").
  std::atomic<uint32_t> fd_keys_a[kFdSlots / 2];
  // Receivers wait here, one wake-up per message (core/waiter.h, "Wake-one waiting"): the
  // sleepers not yet woken, and the end of a spinning receiver's spin (monotonic ns, 0 = none;
  // believed only up to kMaxSpinLease ahead). A sender reads the line after every link.
  alignas(kCacheLine) WakeOneCount not_empty;
  std::atomic<uint64_t> fd_readers;  // bit i: slot i waits for "readable" (sender: one load)
  std::atomic<int64_t> receivers_spin_until;
  alignas(kCacheLine) EventCount not_full;
  std::atomic<uint64_t> fd_writers;  // bit i: slot i waits for "writable"
  alignas(kCacheLine) std::atomic<uint64_t> attached;  // Channel objects using this header: attach_word
  std::atomic<uint32_t> fd_keys_b[kFdSlots / 2];

  // Slot i of the fd wait-list, 0 <= i < kFdSlots.
  std::atomic<uint32_t>& fd_key(int i) { return i < kFdSlots / 2 ? fd_keys_a[i] : fd_keys_b[i - kFdSlots / 2]; }
};
static_assert(std::is_standard_layout_v<ChannelHeader>);
static_assert(offsetof(ChannelHeader, messages_lost) == 40);
static_assert(offsetof(ChannelHeader, repair_epoch) == 48);
static_assert(offsetof(ChannelHeader, truncation_adjust) == 56);
static_assert(offsetof(ChannelHeader, limits_check) == 12);
static_assert(offsetof(ChannelHeader, head) == 64);
static_assert(offsetof(ChannelHeader, tail) == 128);
static_assert(offsetof(ChannelHeader, closed) == 192);
static_assert(offsetof(ChannelHeader, not_empty) == 256);
static_assert(offsetof(ChannelHeader, receivers_spin_until) == 272);
static_assert(offsetof(ChannelHeader, not_full) == 320);
static_assert(offsetof(ChannelHeader, attached) == 384);
static_assert(offsetof(ChannelHeader, fd_readers) == 264);
static_assert(offsetof(ChannelHeader, fd_writers) == 328);
static_assert(offsetof(ChannelHeader, fd_keys_a) == 200);
static_assert(offsetof(ChannelHeader, fd_keys_b) == 392);
static_assert(sizeof(ChannelHeader) == 448);  // as before the wait-list: no more arena memory
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::atomic<int64_t>::is_always_lock_free);

struct ChannelStats {
  uint64_t queued, bytes_queued, sent, received, maxsize, maxbytes, messages_lost;
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
  // `payload_out`: as Arena::allocate's (the payload's address on kOk).
  Result<BlockHandle> allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                               const WaitSpec& wait, uint8_t** payload_out = nullptr);
  // Queues a copy of `length` <= kInlineBytes bytes inline in a queue node, with no data block
  // (docs/design.md, "Small messages inline"). Waits and statuses as send(); kInvalidArgument
  // when longer.
  Status send_inline(const void* data, uint64_t length, const WaitSpec& wait);
  // Takes the oldest message; the caller becomes its holder. kEmpty (non-blocking),
  // kTimedOut, kInterrupted, kClosed (closed and drained). An inline message is copied into
  // *small and returned as ref 0; with no `small`, it is copied into a block allocated for it
  // (if the arena has no room for one, the message is lost: counted, and kOutOfCapacity).
  Result<BlockHandle> recv(const WaitSpec& wait, SmallMessage* small = nullptr);

  // Batches (docs/design.md, "Batches"). send_many queues blocks[0..n), in order, as n send()s
  // would, but links each run of up to kMaxChain of them as one pre-built chain of nodes (one
  // link CAS, one tail swing, one wake). A bounded channel takes what fits, then waits for room
  // for the rest. *queued is how many were queued (always a prefix): on kOk all n, otherwise the
  // status of the first that was not, as send() reports it; blocks[*queued..n) stay the caller's.
  // Concurrency: any thread, as send(); a chain is linked whole or not at all, so messages of
  // other senders never interleave inside it.
  static constexpr size_t kMaxChain = 64;
  Status send_many(const BlockHandle* blocks, size_t n, const WaitSpec& wait, size_t* queued);
  // A message of a batch: a block the caller holds, or (block.ref == 0) a copy of `length` <=
  // kInlineBytes bytes at `data`, to travel inline.
  struct Outgoing {
    BlockHandle block;
    const void* data;
    uint64_t length;
  };
  Status send_many(const Outgoing* msgs, size_t n, const WaitSpec& wait, size_t* queued);
  // Takes up to `max` messages into out[]: waits per `wait` for the first, then takes what is
  // queued, without waiting. The count (>= 1) on kOk; errors as recv(). An error met after the
  // first message ends the batch (the messages taken are returned; the next call reports it).
  // Inline messages as recv(): out[i].ref == 0 names smalls[i] (or, with no smalls, a block).
  Result<size_t> recv_many(BlockHandle* out, size_t max, const WaitSpec& wait, SmallMessage* smalls = nullptr);

  // Counts one message lost to corruption found after the queue let go of it (a descriptor or
  // metadata a peer forged): stats().messages_lost; with `report`, every Channel's next call
  // is told as after a repair. Concurrency: any thread.
  void note_message_lost(bool report);

  void close();
  bool closed() const;

  // Readiness and the fd wait-list (core/channel_wait.cc, core/fd_wait.h). readable(): a
  // message is queued or the channel is closed; writable(): a send would find room (or the
  // channel is closed). Both are snapshots. Concurrency: any thread, any process.
  bool readable() const;
  bool writable() const;
  // Puts the listener `key` in a free slot of the wait-list (a slot whose listener socket is
  // gone counts as free) and returns the slot; kFull when all kFdSlots are taken by live ones.
  Result<int> fd_register(uint32_t key);
  // Frees `slot` if it still names `key`, and disarms it.
  void fd_unregister(int slot, uint32_t key);
  // Arms `slot` for kind (kFdReadable / kFdWritable) and returns whether the channel is ready
  // for it now (then the caller need not wait; the slot may stay armed: a spurious datagram
  // later is harmless). A sender that makes it ready after this sends the slot's socket one
  // datagram {arena id, channel offset} and disarms it (one shot).
  bool fd_arm(int slot, FdKind kind);
  void fd_disarm(int slot, FdKind kind);
  ChannelStats stats() const;
  uint64_t queued() const;

  Offset offset() const { return offset_; }
  uint64_t channel_id() const { return header_->channel_id; }
  const std::shared_ptr<Arena>& arena() const { return arena_; }

 private:
  Channel(std::shared_ptr<Arena> arena, ChannelHeader* header, Offset offset);
  // The counts of the queue as seen from its dummy and its last node.
  struct Counts {
    uint64_t queued = 0, bytes = 0, sent = 0, received = 0;
  };
  Counts counts() const;
  // Messages and bytes linked after the dummy of `head`, by walking (for counts that cannot
  // be right: see the header comment). Stops after `limit` messages.
  Counts walk_counts(uint64_t head, uint64_t limit) const;
  // Whether a message of `length` bytes may be linked after a last node at (seq, position):
  // kOk, kFull, or kRetry when the queue moved while it looked.
  // at_mark: only at the low water (at_low_water: a blocked sender's wait, see notify_room).
  Status room_after(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                    uint64_t length, bool at_mark) const;
  // The send steps shared by send(), send_inline() and send_many(): a node (waiting for arena
  // space per `wait`), the descriptor written into it and the node named kNodeLinked for this
  // channel and sender (its state returned), and the single send itself.
  Result<BlockRef> take_node(const WaitSpec& wait, QueueNode** found);
  uint64_t name_node(QueueNode* n, BlockHandle message, const void* data, uint64_t length);
  Status send_one(BlockHandle block, const void* data, uint64_t length, bool small, const WaitSpec& wait);
  // A message taken inline by a caller with no SmallMessage: copied into a block of its own.
  Result<BlockHandle> materialize(const SmallMessage& small);
  // One attempt at each step; the waits loop around them. enqueue links `node_ref` if the
  // channel has room: kOk, kFull, kClosed (sealed), or a corruption status.
  Status enqueue(BlockRef node_ref, uint64_t length, bool at_mark = false);
  // The same for a chain: links the longest prefix of nodes[0..n) (their states as named for
  // the send, lengths[]) that has room, with one link CAS and one tail swing, and says how many
  // in *linked (0 with kFull).
  Status enqueue_chain(const BlockRef* refs, QueueNode* const* nodes, const uint64_t* states,
                       const uint64_t* lengths, size_t n, size_t* linked, bool at_mark = false);
  // After a chain's link: the tail from `tail` (the node linked after) to the chain's last node.
  void swing_tail_over_chain(uint64_t tail, const BlockRef* refs, const uint64_t* states, QueueNode* const* nodes,
                             size_t k);
  // After a claim: wakes senders asleep on a full channel once it is down to its low water
  // (channel_send.cc).
  void notify_room();
  // After messages left a bounded channel: notify_room and the fd "writable" hook.
  void notify_room_if_bounded() {
    if (maxsize_ != 0 || maxbytes_ != 0) {
      notify_room();
      notify_fd(FdKind::kWritable);
    }
  }
  // The low water of a bounded channel: at most maxsize - max(1, maxsize / 4) messages and
  // maxbytes - maxbytes / 4 bytes queued (room for a quarter of the limit).
  bool at_low_water(uint64_t queued, uint64_t bytes) const {
    return (maxsize_ == 0 || queued + (maxsize_ / 4 > 1 ? maxsize_ / 4 : 1) <= maxsize_) &&
           (maxbytes_ == 0 || bytes <= maxbytes_ - maxbytes_ / 4);
  }
  // The messages and bytes queued after a last node at (seq, position), as room_after and
  // room_count need them (see channel_send.cc).
  Status queued_after(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                      uint64_t* queued, uint64_t* bytes) const;
  // How many of the messages lengths[0..n) fit, in order, after a last node at (seq,
  // position); kInterrupted when the queue moved while it looked (room_after's rules).
  Status room_count(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                    const uint64_t* lengths, size_t n, size_t* fit, bool at_mark) const;
  // Truncation (docs/shm.md, "Truncated segments"). A send that linked its message and then
  // found the arena truncated: kCorruptedLength unless a receiver has taken the message already
  // (then kOk: the receiver accounts for it); adjusts the count of messages lost.
  [[gnu::noinline]] Status linked_into_truncated(QueueNode* node, uint64_t linked_state);
  // A receive that took a message and then found the arena truncated: counted lost.
  [[gnu::noinline]] Status taken_from_truncated();
  // stats().messages_lost once the arena is truncated: exact (repairs' losses + what is queued
  // + truncation_adjust) while the channel header and the nodes at both ends of the queue
  // survive, else an upper bound from this process's private copies.
  [[gnu::noinline]] uint64_t truncation_loss(const Counts& c, uint64_t lost) const;
  // Seals the last node's link (close()).
  void seal();
  // kEmpty with *drained when the dummy's link is sealed (closed, nothing left).
  // `stash` (recv_many's batch): old dummies freed into it and given back at once, else one by
  // one; with a stash, the node after the one claimed is prefetched, and advance leaves telling
  // blocked senders to the batch's end.
  Result<BlockHandle> try_dequeue(bool* empty, bool* drained, SmallMessage* small, Arena::NodeStash* stash = nullptr);
  // Moves the head from `head` (node `first`, whose state is `head_state`) onto `next`; the
  // party that succeeds frees the old dummy (into `stash`: see try_dequeue).
  void advance(uint64_t head, QueueNode* first, uint64_t head_state, BlockRef next, Arena::NodeStash* stash = nullptr);
  // Repairs a queue found (or, with `suspected`, feared) corrupted: see the header comment and
  // channel.cc. kRepaired when it changed something (counted as corruption), kIntact when a
  // walk found nothing to repair (someone else repaired it, or the suspicion was wrong),
  // kFailed when it could not (no node for a fresh dummy, or the head kept moving).
  enum class Repair { kRepaired, kIntact, kFailed };
  Repair repair();
  bool node_in_channel(uint64_t state) const;
  void drain_and_free();
  // The send/close/advance hook: one relaxed load of the armed mask (after the fence the
  // EventCount notify already made) while nobody waits on an fd.
  void notify_fd(FdKind kind) {
    std::atomic<uint64_t>& armed = kind == FdKind::kReadable ? header_->fd_readers : header_->fd_writers;
    if (armed.load(std::memory_order_relaxed) != 0) fire_fd(armed);
  }
  [[gnu::noinline]] void fire_fd(std::atomic<uint64_t>& armed);

  std::shared_ptr<Arena> arena_;
  ChannelHeader* header_;  // in arena memory
  Offset offset_;
  uint32_t tag_;           // this channel's tag in node states: offset_ / 64
  uint64_t maxsize_;       // private copies of the limits, read once at open
  uint64_t maxbytes_;
  uint64_t channel_id_;    // and of the id and the limits' digest
  uint32_t limits_check_;
  // Writes the private copies back over forged limits (counted as corruption).
  [[gnu::noinline]] void restore_limits();
  // Takes one attach of the header (open, reattach_after_fork): false while it is torn down.
  static bool take_attach(Arena& arena, ChannelHeader* header);
  // The dummy's numbers as this object last read them. The dummy's seq and position only grow,
  // so counting room from an old copy overstates what is queued: a send that fits by the copy
  // fits, and only one that does not reads the shared head (room_after). Process-local hints.
  mutable std::atomic<uint64_t> seen_head_seq_{0};
  mutable std::atomic<uint64_t> seen_head_position_{0};
  // The repair epoch this object last reported (a repair by anyone makes its next send or recv
  // fail once with kCorruptedIndex, so both sides learn of the loss; stats()["messages_lost"]).
  std::atomic<uint64_t> seen_repair_epoch_{0};
  // kCorruptedIndex once per repair since this object last reported one; kOk otherwise. Also
  // puts back limits a peer forged (the identity line, which this reads anyway).
  Status repair_reported() {
    if (header_->maxsize != maxsize_ || header_->maxbytes != maxbytes_ || header_->limits_check != limits_check_)
        [[unlikely]] {
      restore_limits();
    }
    const uint64_t epoch = header_->repair_epoch.load(std::memory_order_relaxed);
    if (epoch == seen_repair_epoch_.load(std::memory_order_relaxed)) [[likely]] return Status::kOk;
    seen_repair_epoch_.store(epoch, std::memory_order_relaxed);
    return Status::kCorruptedIndex;
  }
  // Cuts a link found forged (repair()): seals the end of the part cut off, counts its messages.
  bool cut_after(QueueNode* last, BlockRef last_ref, uint64_t link, uint64_t tail);
  // Counts a repair: `lost` messages, the arena's corruption count, the epoch; wakes waiters.
  void note_repair(uint64_t lost);
  // The dummy a forged head hid (a claimed node of this channel leading to the tail, or with
  // the tail forged too, to the end of the queue), or 0.
  BlockRef find_dummy(uint64_t tail);
  // Messages of this channel still linked anywhere in the arena (a repair's loss; arena walk).
  uint64_t count_linked();
  // The first message of a chain whose dummy was forged away (see channel_repair.cc), or 0.
  BlockRef find_orphaned_start(QueueNode** node);
  // Messages of this channel numbered in (base, end_seq] (a repair's loss; arena walk).
  uint64_t count_linked_between(uint64_t base, uint64_t end_seq);
  // Gives back the blocks and nodes of the messages a cut left behind (see channel.cc).
  void free_cut_off(uint64_t base, uint64_t end_seq, BlockRef end_ref);
  std::atomic<uint64_t> fork_generation_{fork_generation()};  // process image of the attach
  std::atomic<bool> attached_{true};              // this object still holds its attach
  std::atomic<bool> inherited_{false};            // attach taken by reattach_after_fork
  std::mutex reattach_mutex_;                     // serialises reattach_after_fork (rare)
};

// The channel tag nodes of the channel whose header is at `offset` carry (node_channel()).
constexpr uint32_t channel_tag(Offset offset) { return offset_to_ref(offset); }


}  // namespace memchannel
