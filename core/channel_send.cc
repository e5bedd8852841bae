// Channel's send side: room at the link, enqueue (one node, a chain), and send / send_many,
// whose messages travel in a block or, up to kInlineBytes of plain bytes, inline in their node
// (channel.h; docs/design.md, "Small messages inline").
#include "core/channel.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "core/channel_internal.h"
#include "core/queue_walk.h"

namespace memchannel {
namespace {

using namespace channel_internal;  // NOLINT: the waits and as_flow

// Tail swings one enqueue may help with before it suspects a cycle among linked nodes (each
// honest swing is another sender's completed link, so this many in one call does not happen).
constexpr uint64_t kMaxTailHelps = 1u << 12;

// The last node as the tail names it, read while the tail is unchanged (so the node was not
// freed meanwhile: the head passes a node only after the tail has). enqueue and enqueue_chain
// start every attempt here.
struct TailSnapshot {
  uint64_t tail;
  QueueNode* last;  // nullptr: the tail names no node
  uint64_t last_state, next, seq, position;
};

[[gnu::always_inline]] inline bool read_tail_of(ChannelHeader* header, Arena& arena, TailSnapshot* t) {
  t->tail = header->tail.load(std::memory_order_acquire);
  t->last = arena.find_node(tagged_ref(t->tail));
  QueueNode* last = t->last;
  t->last_state = last != nullptr ? last->state.load(std::memory_order_acquire) : 0;
  t->next = last != nullptr ? last->next.load(std::memory_order_acquire) : 0;
  t->seq = last != nullptr ? last->seq.load(std::memory_order_relaxed) : 0;
  t->position = last != nullptr ? last->position_bytes.load(std::memory_order_relaxed) : 0;
  return t->tail == header->tail.load(std::memory_order_acquire);
}

}  // namespace


// What is queued after the last node at (seq, position), from the dummy's numbers read while
// the head names it (a dummy's seq never changes while it is one, and the head moves on before
// the node is freed). kOk with *queued and *bytes; kInterrupted when the queue moved meanwhile;
// kEmpty for a bad head (the receivers' side repairs it: the caller admits). Numbers no honest
// queue holds (the last node below the dummy, more than maxsize queued, more bytes than
// maxbytes or one message allow) are a forgery: counted, and the messages walked instead.
Status Channel::queued_after(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                             uint64_t* queued, uint64_t* bytes) const {
  const uint64_t head = header_->head.load(std::memory_order_acquire);
  QueueNode* first = arena_->find_node(tagged_ref(head));
  if (first == nullptr) return Status::kEmpty;
  const uint64_t head_seq = first->seq.load(std::memory_order_relaxed);
  const uint64_t head_position = first->position_bytes.load(std::memory_order_relaxed);
  if (header_->head.load(std::memory_order_acquire) != head) return Status::kInterrupted;
  *queued = seq - head_seq;
  *bytes = position - head_position;
  const bool impossible = seq < head_seq || position < head_position || (maxsize_ != 0 && *queued > maxsize_) ||
                          (*queued == 0 && *bytes != 0) ||
                          (maxbytes_ != 0 && *bytes > maxbytes_ && *bytes > arena_->max_payload());
  if (impossible) {
    // Unless the queue moved meanwhile (the head passed the node read as last, which then had a
    // successor), a forged number: count the messages by walking instead.
    if (header_->tail.load(std::memory_order_acquire) != tail ||
        last->next.load(std::memory_order_acquire) != next) {
      return Status::kInterrupted;
    }
    arena_->note_corruption();
    const Counts walked = walk_counts(head, maxsize_ != 0 ? maxsize_ : kMaxQueueSteps);
    *queued = walked.queued;
    *bytes = walked.bytes;
  } else {
    seen_head_seq_.store(head_seq, std::memory_order_relaxed);
    seen_head_position_.store(head_position, std::memory_order_relaxed);
  }
  return Status::kOk;
}

// Senders asleep on a full channel (not_full), after a claim: woken once the channel has room
// for a quarter of its limit (the low water), not for every message taken. A sender woken for
// one slot links one message and sleeps again, so a fast sender feeding slow receivers paid a
// futex wake-up, a context switch and a spin per message, on a CPU its receivers needed; woken
// at the low water it links a quarter of the channel in one go (docs/design.md, "Senders on a
// full channel: the low water"). What is queued is counted as room_after counts it
// (queued_after, from the current head and tail). A wake-up declined here is owed by a later
// claim: every claim at or below the low water wakes, and so does one whose look at the queue
// fails (it moved, or its numbers are not an honest queue's: waking is never wrong). A channel
// whose receivers stop short of the low water leaves the sender to its own re-check
// (kRoomRecheckNs, backing off), the one case where room can wait: bounded by about as long as
// the sender has waited already.
void Channel::notify_room() {
  notify_all_if(header_->not_full, [&] {
    TailSnapshot t;
    uint64_t queued = 0, bytes = 0;
    if (!read_tail_of(header_, *arena_, &t) || t.last == nullptr ||
        queued_after(t.tail, t.last, t.next, t.seq, t.position, &queued, &bytes) != Status::kOk) {
      return true;
    }
    return at_low_water(queued, bytes);
  });
}

Status Channel::room_after(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                           uint64_t length, bool at_mark) const {
  const auto fits = [&](uint64_t queued, uint64_t bytes) {
    if (at_mark && !at_low_water(queued, bytes)) return false;
    if (maxsize_ != 0 && queued >= maxsize_) return false;
    // An empty channel admits one message, however large, so nothing deadlocks.
    return maxbytes_ == 0 || bytes == 0 || (length <= maxbytes_ && bytes <= maxbytes_ - length);
  };
  {
    const uint64_t seen_seq = seen_head_seq_.load(std::memory_order_relaxed);
    const uint64_t seen_position = seen_head_position_.load(std::memory_order_relaxed);
    if (seq >= seen_seq && position >= seen_position && fits(seq - seen_seq, position - seen_position)) {
      return Status::kOk;  // room even by an old copy of the dummy's numbers (see channel.h)
    }
  }
  uint64_t queued = 0, bytes = 0;
  const Status s = queued_after(tail, last, next, seq, position, &queued, &bytes);
  if (s == Status::kEmpty) return Status::kOk;  // a bad head: the receivers' side repairs it
  if (s != Status::kOk) return s;
  return fits(queued, bytes) ? Status::kOk : Status::kFull;
}

Status Channel::room_count(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                           const uint64_t* lengths, size_t n, size_t* fit, bool at_mark) const {
  // room_after's rule, message after message: how long a prefix of the batch fits (none short
  // of the low water when at_mark).
  const auto count = [&](uint64_t queued, uint64_t bytes) {
    size_t k = 0;
    if (at_mark && !at_low_water(queued, bytes)) return k;
    for (; k < n; ++k) {
      const uint64_t length = lengths[k];
      if (maxsize_ != 0 && queued >= maxsize_) break;
      if (maxbytes_ != 0 && bytes != 0 && (length > maxbytes_ || bytes > maxbytes_ - length)) break;
      ++queued;
      bytes += length;
    }
    return k;
  };
  {
    const uint64_t seen_seq = seen_head_seq_.load(std::memory_order_relaxed);
    const uint64_t seen_position = seen_head_position_.load(std::memory_order_relaxed);
    if (seq >= seen_seq && position >= seen_position && count(seq - seen_seq, position - seen_position) == n) {
      *fit = n;  // all of it fits even by an old copy of the dummy's numbers
      return Status::kOk;
    }
  }
  uint64_t queued = 0, bytes = 0;
  const Status s = queued_after(tail, last, next, seq, position, &queued, &bytes);
  if (s == Status::kEmpty) {  // a bad head: the receivers' side repairs it
    *fit = n;
    return Status::kOk;
  }
  if (s != Status::kOk) return s;
  *fit = count(queued, bytes);
  return Status::kOk;
}

Status Channel::enqueue(BlockRef node_ref, uint64_t length, bool at_mark) {
  QueueNode* node = arena_->find_node(node_ref);
  if (node == nullptr) return Status::kCorruptedIndex;
  const bool bounded = maxsize_ != 0 || maxbytes_ != 0;
  uint64_t helps = 0;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    TailSnapshot t_;
    if (!read_tail_of(header_, *arena_, &t_)) continue;
    const uint64_t tail = t_.tail, last_state = t_.last_state, next = t_.next, seq = t_.seq, position = t_.position;
    QueueNode* last = t_.last;
    // With the tail unchanged its node cannot have been freed (the head passes a node only
    // after the tail has): a tail that is not a node of this queue is corruption. Its seq and
    // position were written before it was linked and are this incarnation's.
    if (last == nullptr || !node_in_channel(last_state)) {
      if (repair() == Repair::kFailed) return Status::kCorruptedIndex;
      continue;
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (link_sealed(next)) return Status::kClosed;
      if (bounded) {
        const Status room = room_after(tail, last, next, seq, position, length, at_mark);
        if (room == Status::kInterrupted) continue;
        if (room != Status::kOk) return room;
      }
      node->seq.store(seq + 1, std::memory_order_relaxed);
      node->position_bytes.store(position + length, std::memory_order_relaxed);
      // release: the node's fields and the message payload happen-before the receiver's
      // acquire load of this link in try_dequeue.
      uint64_t expected = next;
      if (last->next.compare_exchange_weak(expected, next_link(next, node_ref), std::memory_order_release,
                                           std::memory_order_relaxed)) {
        MEMCHANNEL_CRASH_POINT(kSendLinked);
        uint64_t t = tail;
        header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, node_ref),
                                              std::memory_order_release, std::memory_order_relaxed);
        MEMCHANNEL_CRASH_POINT(kSendTailSwung);
        return Status::kOk;
      }
      continue;
    }
    // The tail lags (a sender linked its node but has not swung the tail yet): help it, once
    // the node it links to is known to be a message of this channel.
    QueueNode* successor = arena_->find_node(next_ref);
    const uint64_t successor_state =
        successor != nullptr ? successor->state.load(std::memory_order_acquire) : 0;
    if (successor == nullptr || next_ref == tagged_ref(tail) || !node_in_channel(successor_state) ||
        successor->seq.load(std::memory_order_relaxed) != seq + 1 || ++helps > kMaxTailHelps) {
      if (tail != header_->tail.load(std::memory_order_acquire) ||
          last->next.load(std::memory_order_acquire) != next) {
        continue;  // moved on meanwhile: an honest race
      }
      // A link that leaves the queue, or (after this many helps) a suspected cycle.
      if (repair() == Repair::kFailed) return Status::kCorruptedIndex;
      helps = 0;
      continue;
    }
    uint64_t t = tail;
    header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                          std::memory_order_release, std::memory_order_relaxed);
  }
  arena_->note_corruption();
  return Status::kCorruptedIndex;
}

Status Channel::enqueue_chain(const BlockRef* refs, QueueNode* const* nodes, const uint64_t* states,
                              const uint64_t* lengths, size_t n, size_t* linked, bool at_mark) {
  *linked = 0;
  if (n == 0 || n > kMaxChain) return Status::kInvalidArgument;
  const bool bounded = maxsize_ != 0 || maxbytes_ != 0;
  uint64_t helps = 0;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    // As enqueue(): the last node, read while the tail names it.
    TailSnapshot t_;
    if (!read_tail_of(header_, *arena_, &t_)) continue;
    const uint64_t tail = t_.tail, last_state = t_.last_state, next = t_.next, seq = t_.seq, position = t_.position;
    QueueNode* last = t_.last;
    if (last == nullptr || !node_in_channel(last_state)) {
      if (repair() == Repair::kFailed) return Status::kCorruptedIndex;
      continue;
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (link_sealed(next)) return Status::kClosed;
      size_t k = n;
      if (bounded) {
        const Status room = room_count(tail, last, next, seq, position, lengths, n, &k, at_mark);
        if (room == Status::kInterrupted) continue;
        if (room != Status::kOk) return room;
        if (k == 0) return Status::kFull;
      }
      // The chain, numbered on from the last node and linked node to node, while it is ours
      // alone: every link in it is what a send of each message in turn would have made, so
      // receivers, repair and recovery see k messages linked one after another.
      uint64_t s = seq;
      uint64_t p = position;
      for (size_t i = 0; i < k; ++i) {
        p += lengths[i];
        nodes[i]->seq.store(++s, std::memory_order_relaxed);
        nodes[i]->position_bytes.store(p, std::memory_order_relaxed);
        nodes[i]->next.store(next_link(nodes[i]->next.load(std::memory_order_relaxed), i + 1 < k ? refs[i + 1] : 0),
                             std::memory_order_relaxed);
      }
      // release: every node of the chain and every payload happen-before a receiver's acquire
      // of this link (and, through it, of the links inside the chain).
      uint64_t expected = next;
      if (last->next.compare_exchange_weak(expected, next_link(next, refs[0]), std::memory_order_release,
                                           std::memory_order_relaxed)) {
        MEMCHANNEL_CRASH_POINT(kSendLinked);
        swing_tail_over_chain(tail, refs, states, nodes, k);
        MEMCHANNEL_CRASH_POINT(kSendTailSwung);
        *linked = k;
        return Status::kOk;
      }
      continue;
    }
    // The tail lags: help it, as enqueue() does.
    QueueNode* successor = arena_->find_node(next_ref);
    const uint64_t successor_state =
        successor != nullptr ? successor->state.load(std::memory_order_acquire) : 0;
    if (successor == nullptr || next_ref == tagged_ref(tail) || !node_in_channel(successor_state) ||
        successor->seq.load(std::memory_order_relaxed) != seq + 1 || ++helps > kMaxTailHelps) {
      if (tail != header_->tail.load(std::memory_order_acquire) ||
          last->next.load(std::memory_order_acquire) != next) {
        continue;
      }
      if (repair() == Repair::kFailed) return Status::kCorruptedIndex;
      helps = 0;
      continue;
    }
    uint64_t t = tail;
    header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                          std::memory_order_release, std::memory_order_relaxed);
  }
  arena_->note_corruption();
  return Status::kCorruptedIndex;
}

void Channel::swing_tail_over_chain(uint64_t tail, const BlockRef* refs, const uint64_t* states, QueueNode* const* nodes,
                                    size_t k) {
  const BlockRef end = refs[k - 1];
  uint64_t t = tail;
  if (header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, end), std::memory_order_release,
                                            std::memory_order_relaxed)) {
    return;
  }
  // Another party moved the tail first: a sender or receiver helping it one node at a time,
  // perhaps onto a node of this chain. Carry it on to the chain's end from there. While the
  // tail names chain node i, the head cannot pass node i (a receiver helps the tail before it
  // advances past it), so nodes i..k-1 are still this incarnation, linked; a tail that names a
  // node of the chain by ref but not this incarnation of it (the node was received, freed and
  // reused) has a different generation in its state.
  for (size_t tries = 0; tries < k; ++tries) {
    t = header_->tail.load(std::memory_order_acquire);
    const BlockRef at = tagged_ref(t);
    size_t i = 0;
    while (i + 1 < k && refs[i] != at) ++i;
    if (i + 1 >= k) return;  // at the chain's end already, or past it
    const uint64_t s = nodes[i]->state.load(std::memory_order_acquire);
    if (!node_in_channel(s) || node_generation(s) != node_generation(states[i])) return;
    if (header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(t) + 1, end), std::memory_order_release,
                                              std::memory_order_relaxed)) {
      return;
    }
  }
}
Result<BlockHandle> Channel::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                      const WaitSpec& wait, uint8_t** payload_out) {
  Result<BlockHandle> got;
  const Status s = wait_sweeping(*arena_, arena_->space(), wait, [&] {
    got = arena_->allocate(payload_bytes, layout, Arena::kNoCreatorWait, payload_out);  // the wait is ours
    return got.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return {as_flow(s, Status::kFull), {}};
  if (got.status == Status::kOutOfCapacity) return {Status::kClosed, {}};
  return got;
}

Status Channel::send(BlockHandle block, const WaitSpec& wait) { return send_one(block, nullptr, 0, false, wait); }

Status Channel::send_inline(const void* data, uint64_t length, const WaitSpec& wait) {
  if (length > kInlineBytes) return Status::kInvalidArgument;
  if (data == nullptr && length != 0) return Status::kInvalidArgument;
  return send_one(BlockHandle{0, 0}, data, length, true, wait);
}

Result<BlockRef> Channel::take_node(const WaitSpec& wait, QueueNode** found) {
  // A queue node first: if the arena is full we wait for space before taking a slot.
  Result<BlockRef> node;
  const Status s = wait_sweeping(*arena_, arena_->space(), wait, [&] {
    node = arena_->allocate_node(Arena::kNoCreatorWait, found);  // the wait is ours, to its deadline
    return node.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return {as_flow(s, Status::kFull), 0};
  if (!node.ok()) return {node.status == Status::kOutOfCapacity ? Status::kClosed : node.status, 0};
  return node;
}

uint64_t Channel::name_node(QueueNode* n, BlockHandle message, const void* data, uint64_t length) {
  const uint64_t held_state = n->state.load(std::memory_order_relaxed);
  // The descriptor, while the node is ours alone: a block at its next generation (begin_send
  // bumps it, so a stale handle to the block cannot pass for it), or ref 0 and the payload.
  n->block.store(message.ref, std::memory_order_relaxed);
  n->generation.store(message.generation, std::memory_order_relaxed);
  n->length.store(length, std::memory_order_relaxed);
  if (message.ref == 0) store_inline(n, data, length);
  n->next.store(next_link(n->next.load(std::memory_order_relaxed), 0), std::memory_order_relaxed);
  MEMCHANNEL_CRASH_POINT(kSendNodeAllocated);
  // The node names its channel and sender before anything else is shared: a reclaimer of this
  // process finds it, and frees it if it never got linked.
  const uint64_t linked_state = with_node_kind(held_state, tag_, arena_->holder(), kNodeLinked);
  n->state.store(linked_state, std::memory_order_relaxed);  // published by the link CAS (release)
  MEMCHANNEL_CRASH_POINT(kSendNamed);
  return linked_state;
}

// send() and send_inline(): a block the caller holds (block.ref != 0), or `length` bytes at
// `data` to travel inline in the node (block.ref == 0, no block states to move).
inline Status Channel::send_one(BlockHandle block, const void* data, uint64_t length, bool small,
                                const WaitSpec& wait) {
  arena_->maybe_reap();
  // A repair since this object's last call lost messages: say so once (nothing is sent).
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return r;
  if (arena_->truncated()) [[unlikely]] return Status::kCorruptedLength;  // docs/shm.md, Truncation
  if (small) {
    if (!arena_->intact(offset_, offset_, offset_)) [[unlikely]] return Status::kCorruptedLength;
  } else {
    if (!arena_->intact(ref_to_offset(block.ref), offset_, offset_)) [[unlikely]] return Status::kCorruptedLength;
    const auto held = arena_->held_length(block);
    if (!held.ok()) return held.status;
    length = held.value;
  }
  QueueNode* n = nullptr;
  const Result<BlockRef> node = take_node(wait, &n);
  if (!node.ok()) return node.status;
  const BlockHandle message{block.ref, small ? kInlineMark : Arena::sending_generation(block)};
  const uint64_t linked_state = name_node(n, message, data, length);
  uint32_t previous = 0;
  if (!small) {
    const Status s = arena_->begin_send(block, &previous);
    if (s != Status::kOk) {
      arena_->free_node_from(node.value, linked_state);
      return s;
    }
    MEMCHANNEL_CRASH_POINT(kSendMarkedSending);
  }
  // Linked when the channel has room (checked at the link: see channel.h), waiting for it.
  Status linked = Status::kFull;
  // A full channel is waited on down to its low water (notify_room), unless its room is all
  // that is left to wait for (the first look, re-checks, the deadline: wait_until_low_water).
  const auto link = [&](bool at_mark) {
    linked = enqueue(node.value, length, at_mark);
    if (linked == Status::kFull && arena_->truncated()) [[unlikely]] linked = Status::kCorruptedLength;
    return linked != Status::kFull;
  };
  const Status s = wait_sweeping_low_water(
      *arena_, header_->not_full, wait, [&] { return link(true); }, [&] { return link(false); });
  if (s != Status::kOk || linked != Status::kOk) {
    // Not linked: everything goes back as it was, the block to its sender.
    if (!small) arena_->abort_send(message, previous);
    arena_->free_node_from(node.value, linked_state);
    return s != Status::kOk ? as_flow(s, Status::kFull) : linked;
  }
  if (!small) {
    arena_->finish_send(message);
    MEMCHANNEL_CRASH_POINT(kSendMarkedQueued);
  }
  // Linked into memory that is still there: never reported sent into a truncated segment.
  if (!arena_->intact(ref_to_offset(small ? node.value : block.ref), ref_to_offset(node.value), offset_))
      [[unlikely]] {
    return linked_into_truncated(n, linked_state);
  }
  notify_one(header_->not_empty, header_->receivers_spin_until);  // one message: one receiver
  notify_fd(FdKind::kReadable);  // after notify_one's fence: see core/fd_wait.h
  MEMCHANNEL_CRASH_POINT(kSendNotified);
  return Status::kOk;
}

Status Channel::send_many(const BlockHandle* blocks, size_t n, const WaitSpec& wait, size_t* queued) {
  *queued = 0;
  while (*queued < n) {
    std::array<Outgoing, kMaxChain> chunk;
    const size_t k = std::min(n - *queued, kMaxChain);
    for (size_t i = 0; i < k; ++i) chunk[i] = Outgoing{blocks[*queued + i], nullptr, 0};
    size_t q = 0;
    const Status s = send_many(chunk.data(), k, wait, &q);
    *queued += q;
    if (s != Status::kOk) return s;
  }
  return Status::kOk;
}

Status Channel::send_many(const Outgoing* msgs, size_t n, const WaitSpec& wait, size_t* queued) {
  *queued = 0;
  if (n == 0) return Status::kOk;
  arena_->maybe_reap();
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return r;
  if (arena_->truncated() || !arena_->intact(offset_, offset_, offset_)) [[unlikely]] {
    return Status::kCorruptedLength;  // docs/shm.md, Truncation
  }
  while (*queued < n) {
    // A chain: each message exactly as send() prepares it (node named for this channel and
    // sender, block kSending), so a reclaimer of this process treats every node of a chain
    // not yet linked as an unlinked send, and every linked one as a linked send.
    const size_t want = std::min(n - *queued, kMaxChain);
    std::array<BlockRef, kMaxChain> refs;
    std::array<QueueNode*, kMaxChain> nodes;  // the nodes refs[] name, found once
    std::array<uint64_t, kMaxChain> states;
    std::array<uint64_t, kMaxChain> lengths;
    std::array<BlockHandle, kMaxChain> messages;
    std::array<uint32_t, kMaxChain> previous;
    size_t built = 0;
    Status failed = Status::kOk;
    for (; built < want; ++built) {
      const Outgoing& m = msgs[*queued + built];
      const bool small = m.block.ref == 0;
      uint64_t length = m.length;
      if (small) {
        if ((m.data == nullptr && length != 0) || length > kInlineBytes) {
          failed = Status::kInvalidArgument;
          break;
        }
      } else {
        const auto held = arena_->held_length(m.block);
        if (!held.ok()) {
          failed = held.status;
          break;
        }
        length = held.value;
      }
      Result<BlockRef> node;
      QueueNode* nd = nullptr;
      if (built == 0) {  // waits for arena space as send() does
        node = take_node(wait, &nd);
        if (!node.ok()) {
          failed = node.status;
          break;
        }
      } else {
        node = arena_->allocate_node(Arena::kNoCreatorWait, &nd);
        if (!node.ok()) break;  // link the chain so far; the next one waits for a node
      }
      const BlockHandle message{m.block.ref, small ? kInlineMark : Arena::sending_generation(m.block)};
      const uint64_t linked_state = name_node(nd, message, m.data, length);
      uint32_t was = 0;
      if (!small) {
        const Status begun = arena_->begin_send(m.block, &was);
        if (begun != Status::kOk) {
          arena_->free_node_from(node.value, linked_state);
          failed = begun;
          break;
        }
        MEMCHANNEL_CRASH_POINT(kSendMarkedSending);
      }
      refs[built] = node.value;
      nodes[built] = nd;
      states[built] = linked_state;
      lengths[built] = length;
      messages[built] = message;
      previous[built] = was;
    }
    if (built == 0) return failed;
    // Linked as room allows: a bounded channel takes the prefix that fits, then waits.
    size_t done = 0;
    Status link_failed = Status::kOk;
    while (done < built) {
      size_t linked = 0;
      Status attempt = Status::kFull;
      // As send_one: what fits now, then the rest from the low water on.
      const auto link = [&](bool at_mark) {
        attempt = enqueue_chain(refs.data() + done, nodes.data() + done, states.data() + done, lengths.data() + done,
                                built - done, &linked, at_mark);
        return attempt != Status::kFull;
      };
      const Status s = wait_sweeping_low_water(
          *arena_, header_->not_full, wait, [&] { return link(true); }, [&] { return link(false); });
      if (s != Status::kOk || attempt != Status::kOk) {
        link_failed = s != Status::kOk ? as_flow(s, Status::kFull) : attempt;
        break;
      }
      bool whole = true;
      for (size_t i = done; i < done + linked; ++i) {
        if (messages[i].ref != 0) arena_->finish_send(messages[i]);
        const BlockRef in = messages[i].ref != 0 ? messages[i].ref : refs[i];
        whole &= arena_->intact(ref_to_offset(in), ref_to_offset(refs[i]), offset_);
      }
      MEMCHANNEL_CRASH_POINT(kSendMarkedQueued);
      if (!whole) [[unlikely]] {
        // Linked into a truncated arena: queued are only those a receiver has claimed already
        // (a prefix: claims go in order), found from the chain's end (linked_into_truncated).
        size_t taken = linked;
        while (taken > 0 && linked_into_truncated(arena_->find_node(refs[done + taken - 1]),
                                                  states[done + taken - 1]) != Status::kOk) {
          --taken;
        }
        *queued += taken;
        return Status::kCorruptedLength;
      }
      notify_n(header_->not_empty, header_->receivers_spin_until, linked);  // a sleeper per message
      notify_fd(FdKind::kReadable);    // after notify_n's fence: see core/fd_wait.h
      MEMCHANNEL_CRASH_POINT(kSendNotified);
      done += linked;
      *queued += linked;
    }
    if (link_failed != Status::kOk) {
      // Not linked: everything goes back as it was, the blocks to their sender.
      for (size_t i = done; i < built; ++i) {
        if (messages[i].ref != 0) arena_->abort_send(messages[i], previous[i]);
        arena_->free_node_from(refs[i], states[i]);
      }
      return link_failed;
    }
    if (failed != Status::kOk) return failed;
  }
  return Status::kOk;
}

}  // namespace memchannel
