#include "core/channel.h"

#include <algorithm>
#include <array>
#include <new>
#include <utility>

#include "core/queue_walk.h"

namespace memchannel {
namespace {


// Tail swings one enqueue may help with before it suspects a cycle among linked nodes (each
// honest swing is another sender's completed link, so this many in one call does not happen).
constexpr uint64_t kMaxTailHelps = 1u << 12;

// The node whose message this thread took last (its ref and its state word as claimed). When
// the same thread later frees that node as an old dummy (one receiver: always), it knows the
// block is kReceived already and does not touch the block header, which a sender on another
// core may be reusing by then. A thread-local of trivial type: no guard, no sharing.
struct LastTaken {
  const void* channel;
  BlockRef node;
  uint64_t state;
};
thread_local LastTaken t_last_taken{nullptr, 0, 0};

// wait(spec), which waits as wait_until does, and on a backend with holders a wake-up at least
// every sweep interval to reclaim dead peers (a wait in progress counts as a call:
// Arena::maybe_reap). The caller's own slice, or a signal, still ends the wait with
// kInterrupted. The first attempt is inline; the waiting is out of line, so a call that
// succeeds at once costs what it did before.
template <typename Wait>
[[gnu::noinline]] Status wait_sweeping_slow(Arena& arena, const WaitSpec& spec, Wait& wait) {
  if (spec.deadline_ns == 0) return Status::kTimedOut;  // non-blocking: ready() just said no
  const int64_t interval = arena.sweep_interval();
  if (!arena.sweeps() || interval <= 0 || spec.slice_ns <= interval) return wait(spec);
  const int64_t start = monotonic_ns();
  const int64_t caller_slice_end =
      spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  WaitSpec w = spec;
  w.slice_ns = interval;
  for (;;) {
    const int64_t begun = monotonic_ns();
    const Status s = wait(w);
    if (s != Status::kInterrupted) return s;
    const int64_t now = monotonic_ns();
    if (now < begun + w.slice_ns || now >= caller_slice_end) return s;  // a signal, or the caller's slice
    arena.maybe_reap();
    w.spin_ns = 0;  // spun already
    if (caller_slice_end != WaitSpec::kForever) w.slice_ns = std::min(interval, caller_slice_end - now);
  }
}

template <typename Ready>
inline Status wait_sweeping(Arena& arena, EventCount& ec, const WaitSpec& spec, Ready&& ready) {
  if (ready()) return Status::kOk;
  auto wait = [&](const WaitSpec& w) { return wait_until(ec, w, ready); };
  return wait_sweeping_slow(arena, spec, wait);
}

// The same for receivers: wake-one waiting; more() counts what is left for the others when a
// spinner stops (core/waiter.h, "Wake-one waiting").
template <typename Ready, typename More>
inline Status wait_sweeping(Arena& arena, WakeOneCount& ec, std::atomic<int64_t>& spin_until,
                            const WaitSpec& spec, Ready&& ready, More&& more) {
  if (ready()) return Status::kOk;
  auto wait = [&](const WaitSpec& w) { return wait_until(ec, spin_until, w, ready, more); };
  return wait_sweeping_slow(arena, spec, wait);
}

// Flow-control statuses as the API reports them: a wait that ran out means full / empty.
Status as_flow(Status s, Status when_out_of_time) {
  return s == Status::kTimedOut ? when_out_of_time : s;
}

}  // namespace

Channel::Channel(std::shared_ptr<Arena> arena, ChannelHeader* header, Offset offset)
    : arena_(std::move(arena)),
      header_(header),
      offset_(offset),
      tag_(channel_tag(offset)),
      maxsize_(header->maxsize),
      maxbytes_(header->maxbytes),
      channel_id_(header->channel_id),
      limits_check_(header->limits_check),
      seen_repair_epoch_(header->repair_epoch.load(std::memory_order_relaxed)) {}

Result<std::shared_ptr<Channel>> Channel::create(std::shared_ptr<Arena> arena, uint64_t maxsize,
                                                 uint64_t maxbytes, uint64_t channel_id) {
  if (maxsize > kMaxChannelSize) return {Status::kInvalidArgument, nullptr};
  auto cells = arena->allocate_cells(sizeof(ChannelHeader));
  if (!cells.ok()) return {cells.status, nullptr};
  auto dummy = arena->allocate_node();
  if (!dummy.ok()) {
    arena->free_cells(cells.value);
    return {dummy.status, nullptr};
  }
  make_dummy(arena->find_node(dummy.value), channel_tag(cells.value));
  void* mem = arena->translate(cells.value, sizeof(ChannelHeader));
  auto* header = new (mem) ChannelHeader{};
  header->magic = kChannelMagic;
  header->version = kChannelLayoutVersion;
  header->maxsize = maxsize;
  header->maxbytes = maxbytes;
  header->channel_id = channel_id;
  header->limits_check = limits_digest(maxsize, maxbytes, channel_id);
  header->head.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->tail.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->attached.store(attach_word(1), std::memory_order_release);
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, cells.value))};
}

Result<std::shared_ptr<Channel>> Channel::open(std::shared_ptr<Arena> arena, Offset offset) {
  // Channel headers sit 64 bytes into a block: an offset off the grid is forged, and its
  // atomics would be misaligned.
  auto* header = (offset % kUnit) == 0 ? arena->translate_as<ChannelHeader>(offset) : nullptr;
  if (header == nullptr) {
    arena->note_corruption();
    return {Status::kCorruptedOffset, nullptr};
  }
  if (header->magic != kChannelMagic) {
    arena->note_corruption();
    return {Status::kBadMagic, nullptr};
  }
  if (header->version != kChannelLayoutVersion) {
    arena->note_corruption();
    return {Status::kVersionMismatch, nullptr};
  }
  // A limit or id a peer forged (the digest disagrees): refused until a party that holds the
  // true values puts them back (its next send or recv: repair_reported).
  if (header->maxsize > kMaxChannelSize ||
      header->limits_check != limits_digest(header->maxsize, header->maxbytes, header->channel_id)) {
    arena->note_corruption();
    return {Status::kCorruptedLength, nullptr};
  }
  if (!take_attach(*arena, header)) return {Status::kNotFound, nullptr};  // already being torn down
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, offset))};
}

bool Channel::take_attach(Arena& arena, ChannelHeader* header) {
  uint64_t w = header->attached.load(std::memory_order_acquire);
  for (;;) {
    if (w == kAttachPinned) return true;  // the count was given up: nobody frees the channel
    if (!attach_word_valid(w) || attach_count(w) >= 0xfffffff0u) {
      // Forged (see attach_word): pinned, counted once by the party that pins it.
      if (header->attached.compare_exchange_weak(w, kAttachPinned, std::memory_order_acq_rel)) {
        arena.note_corruption();
        return true;
      }
      continue;
    }
    if (attach_count(w) == 0) return false;
    if (header->attached.compare_exchange_weak(w, attach_word(attach_count(w) + 1), std::memory_order_acq_rel)) {
      return true;
    }
  }
}

void Channel::restore_limits() {
  header_->maxsize = maxsize_;
  header_->maxbytes = maxbytes_;
  header_->channel_id = channel_id_;
  header_->limits_check = limits_check_;
  arena_->note_corruption();
}

Channel::~Channel() { detach(); }

void Channel::detach() {
  if (!attached_.exchange(false, std::memory_order_acq_rel)) return;
  // Inherited across fork() and not re-attached: the count is the parent's (shared memory) or
  // a private copy nobody else uses (heap). Either way this process gives back nothing.
  if (!held_here()) return;
  uint64_t w = header_->attached.load(std::memory_order_acquire);
  for (;;) {
    if (w == kAttachPinned) return;  // nobody frees a channel whose count was given up
    if (!attach_word_valid(w) || attach_count(w) == 0) {  // forged: this object held one
      if (header_->attached.compare_exchange_weak(w, kAttachPinned, std::memory_order_acq_rel)) {
        arena_->note_corruption();
        return;
      }
      continue;
    }
    const uint32_t left = attach_count(w) - 1;
    if (header_->attached.compare_exchange_weak(w, attach_word(left), std::memory_order_acq_rel)) {
      if (left == 0) drain_and_free();
      return;
    }
  }
}

bool Channel::reattach_after_fork() {
  std::lock_guard<std::mutex> lock(reattach_mutex_);
  if (held_here()) return attached_.load(std::memory_order_acquire);
  const uint64_t now = fork_generation();
  if (!attached_.load(std::memory_order_acquire)) {
    fork_generation_.store(now, std::memory_order_relaxed);
    return false;
  }
  if (!arena_->backend().tracks_holders()) {
    fork_generation_.store(now, std::memory_order_relaxed);  // heap: the child's own copy
    return true;
  }
  if (!take_attach(*arena_, header_)) {  // the parent was tearing it down as it forked
    attached_.store(false, std::memory_order_release);
    fork_generation_.store(now, std::memory_order_relaxed);
    return false;
  }
  inherited_.store(true, std::memory_order_release);
  fork_generation_.store(now, std::memory_order_relaxed);
  return true;
}

void Channel::drain_and_free() {
  // A repair reports itself once (a corruption status) and the queue then serves again.
  for (int failures = 0; failures < 16;) {
    bool empty = false;
    auto got = try_dequeue(&empty);
    if (got.ok()) {
      arena_->release(got.value);
      continue;
    }
    if (empty) break;
    ++failures;
  }
  const uint64_t head = header_->head.load(std::memory_order_acquire);
  if (QueueNode* dummy = arena_->find_node(tagged_ref(head))) {
    const uint64_t s = dummy->state.load(std::memory_order_acquire);
    if (node_channel(s) == tag_ && node_kind(s) == kNodeClaimed) arena_->free_node_from(tagged_ref(head), s);
  }
  header_->magic = 0;
  arena_->free_cells(offset_);
}

bool Channel::node_in_channel(uint64_t state) const {
  return node_channel(state) == tag_ &&
         (node_kind(state) == kNodeLinked || node_kind(state) == kNodeClaimed);
}

Channel::Counts Channel::walk_counts(uint64_t head, uint64_t limit) const {
  Counts c;
  QueueNode* first = arena_->find_node(tagged_ref(head));
  if (first == nullptr) return c;
  walk_queue(
      *arena_, first, tagged_ref(head), tag_, [](uint64_t s, bool) { return node_state_in_queue(s); },
      [&](BlockRef, QueueNode* n, uint64_t s) {
        if (node_kind(s) == kNodeLinked) {  // a claimed one has been received
          ++c.queued;
          c.bytes += n->length.load(std::memory_order_relaxed);
        }
        return c.queued < limit;
      });
  return c;
}

Status Channel::room_after(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                           uint64_t length) const {
  const auto fits = [&](uint64_t queued, uint64_t bytes) {
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
  // The dummy's numbers, read while the head names it (a dummy's seq never changes while it
  // is one, and the head moves on before the node is freed).
  const uint64_t head = header_->head.load(std::memory_order_acquire);
  QueueNode* first = arena_->find_node(tagged_ref(head));
  if (first == nullptr) return Status::kOk;  // a bad head: the receivers' side repairs it
  const uint64_t head_seq = first->seq.load(std::memory_order_relaxed);
  const uint64_t head_position = first->position_bytes.load(std::memory_order_relaxed);
  if (header_->head.load(std::memory_order_acquire) != head) return Status::kInterrupted;
  uint64_t queued = seq - head_seq;
  uint64_t bytes = position - head_position;
  // What no honest queue holds: the last node numbered below the dummy, more than maxsize
  // queued (the link admits at most maxsize), more bytes than maxbytes or one message allow.
  const bool impossible = seq < head_seq || position < head_position || (maxsize_ != 0 && queued > maxsize_) ||
                          (queued == 0 && bytes != 0) ||
                          (maxbytes_ != 0 && bytes > maxbytes_ && bytes > arena_->max_payload());
  if (impossible) {
    // Unless the queue moved meanwhile (the head passed the node read as last, which then had a
    // successor), a forged number: count the messages by walking instead.
    if (header_->tail.load(std::memory_order_acquire) != tail ||
        last->next.load(std::memory_order_acquire) != next) {
      return Status::kInterrupted;
    }
    arena_->note_corruption();
    const Counts walked = walk_counts(head, maxsize_ != 0 ? maxsize_ : kMaxQueueSteps);
    queued = walked.queued;
    bytes = walked.bytes;
  }
  if (!impossible) {
    seen_head_seq_.store(head_seq, std::memory_order_relaxed);
    seen_head_position_.store(head_position, std::memory_order_relaxed);
  }
  return fits(queued, bytes) ? Status::kOk : Status::kFull;
}

Status Channel::room_count(uint64_t tail, const QueueNode* last, uint64_t next, uint64_t seq, uint64_t position,
                           const uint64_t* lengths, size_t n, size_t* fit) const {
  // room_after's rule, message after message: how long a prefix of the batch fits.
  const auto count = [&](uint64_t queued, uint64_t bytes) {
    size_t k = 0;
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
  const uint64_t head = header_->head.load(std::memory_order_acquire);
  QueueNode* first = arena_->find_node(tagged_ref(head));
  if (first == nullptr) {  // a bad head: the receivers' side repairs it
    *fit = n;
    return Status::kOk;
  }
  const uint64_t head_seq = first->seq.load(std::memory_order_relaxed);
  const uint64_t head_position = first->position_bytes.load(std::memory_order_relaxed);
  if (header_->head.load(std::memory_order_acquire) != head) return Status::kInterrupted;
  uint64_t queued = seq - head_seq;
  uint64_t bytes = position - head_position;
  const bool impossible = seq < head_seq || position < head_position || (maxsize_ != 0 && queued > maxsize_) ||
                          (queued == 0 && bytes != 0) ||
                          (maxbytes_ != 0 && bytes > maxbytes_ && bytes > arena_->max_payload());
  if (impossible) {
    if (header_->tail.load(std::memory_order_acquire) != tail ||
        last->next.load(std::memory_order_acquire) != next) {
      return Status::kInterrupted;
    }
    arena_->note_corruption();
    const Counts walked = walk_counts(head, maxsize_ != 0 ? maxsize_ : kMaxQueueSteps);
    queued = walked.queued;
    bytes = walked.bytes;
  } else {
    seen_head_seq_.store(head_seq, std::memory_order_relaxed);
    seen_head_position_.store(head_position, std::memory_order_relaxed);
  }
  *fit = count(queued, bytes);
  return Status::kOk;
}

Status Channel::enqueue(BlockRef node_ref, uint64_t length) {
  QueueNode* node = arena_->find_node(node_ref);
  if (node == nullptr) return Status::kCorruptedIndex;
  const bool bounded = maxsize_ != 0 || maxbytes_ != 0;
  uint64_t helps = 0;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* last = arena_->find_node(tagged_ref(tail));
    const uint64_t last_state = last != nullptr ? last->state.load(std::memory_order_acquire) : 0;
    const uint64_t next = last != nullptr ? last->next.load(std::memory_order_acquire) : 0;
    const uint64_t seq = last != nullptr ? last->seq.load(std::memory_order_relaxed) : 0;
    const uint64_t position = last != nullptr ? last->position_bytes.load(std::memory_order_relaxed) : 0;
    if (tail != header_->tail.load(std::memory_order_acquire)) continue;
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
        const Status room = room_after(tail, last, next, seq, position, length);
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

Status Channel::enqueue_chain(const BlockRef* refs, const uint64_t* states, const uint64_t* lengths, size_t n,
                              size_t* linked) {
  *linked = 0;
  if (n == 0 || n > kMaxChain) return Status::kInvalidArgument;
  std::array<QueueNode*, kMaxChain> nodes;
  for (size_t i = 0; i < n; ++i) {
    nodes[i] = arena_->find_node(refs[i]);
    if (nodes[i] == nullptr) return Status::kCorruptedIndex;
  }
  const bool bounded = maxsize_ != 0 || maxbytes_ != 0;
  uint64_t helps = 0;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    // As enqueue(): the last node, read while the tail names it.
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* last = arena_->find_node(tagged_ref(tail));
    const uint64_t last_state = last != nullptr ? last->state.load(std::memory_order_acquire) : 0;
    const uint64_t next = last != nullptr ? last->next.load(std::memory_order_acquire) : 0;
    const uint64_t seq = last != nullptr ? last->seq.load(std::memory_order_relaxed) : 0;
    const uint64_t position = last != nullptr ? last->position_bytes.load(std::memory_order_relaxed) : 0;
    if (tail != header_->tail.load(std::memory_order_acquire)) continue;
    if (last == nullptr || !node_in_channel(last_state)) {
      if (repair() == Repair::kFailed) return Status::kCorruptedIndex;
      continue;
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (link_sealed(next)) return Status::kClosed;
      size_t k = n;
      if (bounded) {
        const Status room = room_count(tail, last, next, seq, position, lengths, n, &k);
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
        swing_tail_over_chain(tail, refs, states, nodes.data(), k);
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

void Channel::seal() {
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* last = arena_->find_node(tagged_ref(tail));
    const uint64_t last_state = last != nullptr ? last->state.load(std::memory_order_acquire) : 0;
    const uint64_t next = last != nullptr ? last->next.load(std::memory_order_acquire) : 0;
    if (tail != header_->tail.load(std::memory_order_acquire)) continue;
    if (last == nullptr || !node_in_channel(last_state)) {
      if (repair() == Repair::kFailed) return;  // the closed flag still refuses new sends
      continue;
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (link_sealed(next)) return;
      uint64_t expected = next;
      if (last->next.compare_exchange_weak(expected, next_link(next, 0, true), std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
        return;
      }
      continue;
    }
    QueueNode* successor = arena_->find_node(next_ref);
    if (successor == nullptr || !node_in_channel(successor->state.load(std::memory_order_acquire)) ||
        successor->seq.load(std::memory_order_relaxed) != last->seq.load(std::memory_order_relaxed) + 1) {
      if (tail != header_->tail.load(std::memory_order_acquire) ||
          last->next.load(std::memory_order_acquire) != next) {
        continue;
      }
      if (repair() == Repair::kFailed) return;
      continue;
    }
    uint64_t t = tail;
    header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                          std::memory_order_release, std::memory_order_relaxed);
  }
  arena_->note_corruption();
}

void Channel::advance(uint64_t head, QueueNode* first, uint64_t head_state, BlockRef next) {
  uint64_t expected = head;
  if (header_->head.compare_exchange_strong(expected, make_tagged(tagged_tag(head) + 1, next),
                                            std::memory_order_acq_rel, std::memory_order_relaxed)) {
    MEMCHANNEL_CRASH_POINT(kRecvHeadAdvanced);
    const BlockRef first_ref = tagged_ref(head);
    const uint32_t claimer = node_holder(head_state);
    const LastTaken& mine = t_last_taken;
    if (claimer != 0 && !(mine.node == first_ref && mine.state == head_state && mine.channel == header_)) {
      // The old dummy is a message node claimed by `claimer` (holder 0: a dummy made as one, or
      // an untracked holder that cannot die apart from us). Its claimer may not have taken the
      // block yet: it is slow, or it was killed between its claim and mark_received. Freeing
      // the node would then leave the block kQueued with nothing naming it (the soak's leak),
      // so the message goes to the claimer first: kQueued/kSending at the node's generation ->
      // kTransferred(claimer). The claimer's mark_received takes it from there, or the
      // reclaimer of the claimer frees it as a block the claimer held. A reclaimer that freed
      // the block first makes the CAS fail (the state moved on); so does the claimer's own
      // mark_received. The descriptor is read while the state still names this incarnation.
      const BlockHandle message{first->block.load(std::memory_order_relaxed),
                                first->generation.load(std::memory_order_relaxed)};
      std::atomic_thread_fence(std::memory_order_acquire);
      if (message.ref != 0 && first->state.load(std::memory_order_relaxed) == head_state &&
          arena_->transfer_message(message, claimer)) {
        MEMCHANNEL_CRASH_POINT(kRecvTransferred);
      }
    }
    // Refused only if a crash reclaimer freed this old dummy first (recover_queues).
    arena_->free_node_at(first, first_ref, head_state, /*count_refusal=*/false);
    MEMCHANNEL_CRASH_POINT(kRecvOldHeadFreed);
    if (maxsize_ != 0 || maxbytes_ != 0) {  // one message fewer counted
      notify_all(header_->not_full);
      notify_fd(FdKind::kWritable);
    }
  }
}

Result<BlockHandle> Channel::try_dequeue(bool* empty, bool* drained) {
  *empty = false;
  if (drained != nullptr) *drained = false;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    const uint64_t head = header_->head.load(std::memory_order_acquire);
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* first = arena_->find_node(tagged_ref(head));
    const uint64_t head_state = first != nullptr ? first->state.load(std::memory_order_acquire) : 0;
    // acquire: pairs with enqueue's link CAS (release), so the successor's state and descriptor
    // written before the link are visible.
    const uint64_t next = first != nullptr ? first->next.load(std::memory_order_acquire) : 0;
    QueueNode* second = arena_->find_node(tagged_ref(next));
    const uint64_t second_state = second != nullptr ? second->state.load(std::memory_order_acquire) : 0;
    // The successor's number: one past the dummy's in an honest queue (see channel.h, Trust).
    const bool numbered = second != nullptr && first != nullptr &&
                          second->seq.load(std::memory_order_relaxed) == first->seq.load(std::memory_order_relaxed) + 1;
    // Everything above was read while the head named `first` (same tag: no dequeue between):
    // `first` was the dummy, `second` its successor, and second_state the state of that very
    // incarnation of the node (nothing frees or reuses a node before the head passes it). A
    // claim from second_state therefore claims the first message, never a recycled node.
    if (head != header_->head.load(std::memory_order_acquire)) continue;
    // The head, unchanged, is this channel's dummy: nothing frees it before the head moves.
    if (first == nullptr || node_channel(head_state) != tag_ || node_kind(head_state) != kNodeClaimed) {
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (tagged_ref(head) == tagged_ref(tail)) {
        *empty = true;
        if (drained != nullptr) *drained = link_sealed(next);
        return {Status::kEmpty, {}};
      }
      // The head is before the tail, so the dummy has a successor: unless the tail is not in
      // the queue at all (the head was unchanged across both reads).
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    if (second == nullptr || next_ref == tagged_ref(head) || !node_in_channel(second_state) || !numbered) {
      // Nodes after the dummy are freed only after the head passed them: with the head and
      // its link unchanged, this link leads outside the queue (out of bounds, a free or held
      // node, another channel's node, a cycle).
      if (head != header_->head.load(std::memory_order_acquire) ||
          first->next.load(std::memory_order_acquire) != next) {
        continue;
      }
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    if (tagged_ref(head) == tagged_ref(tail)) {
      // The tail lags behind a linked node: help it before moving the head past it.
      uint64_t t = tail;
      header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                            std::memory_order_release, std::memory_order_relaxed);
      continue;
    }
    if (node_kind(second_state) == kNodeClaimed) {
      advance(head, first, head_state, next_ref);  // another receiver owns it: move the head for it
      continue;
    }
    // Read the message before claiming it: once claimed, others may move the head onto the
    // node and past it, and free it, before this thread reads on. A claim that succeeds proves
    // the node is still the incarnation these fields were read from (its generation is in the
    // state word).
    const BlockHandle block{second->block.load(std::memory_order_relaxed),
                            second->generation.load(std::memory_order_relaxed)};
    // Claim the message: whoever turns the node kNodeClaimed owns it.
    const uint64_t claimed = with_node_kind(second_state, tag_, arena_->holder(), kNodeClaimed);
    uint64_t expected = second_state;
    if (!second->state.compare_exchange_strong(expected, claimed, std::memory_order_acq_rel)) continue;
    MEMCHANNEL_CRASH_POINT(kRecvClaimed);
    const Status taken = arena_->mark_received(block);
    MEMCHANNEL_CRASH_POINT(kRecvTaken);
    advance(head, first, head_state, next_ref);  // frees `first`, most often the node taken last
    if (taken == Status::kOk && node_holder(claimed) != 0) t_last_taken = {header_, next_ref, claimed};
    if (taken != Status::kOk) [[unlikely]] {
      note_message_lost(true);  // a forged descriptor: the message is gone; serve the next
      continue;
    }
    return {Status::kOk, block};
  }
  arena_->note_corruption();
  return {Status::kCorruptedIndex, {}};
}

// Repair (counted as corruption when it changes something). With the head unchanged from the start of a
// walk to its end, the walk sees the queue as it is: the dummy, then messages, each link stable
// (links change only from 0, at the end). The walk follows links while they lead to this
// channel's nodes in the right state, and stops at the first that does not, or at a node seen
// before (a cycle). Then:
//  - the link out of the last good node is cut (CAS from the bad value to 0), so senders link
//    after it again; the messages past the break were unreachable already and are lost (their
//    blocks stay kQueued and their nodes are not freed: a crash reclaimer frees such nodes only
//    when they are claimed ones);
//  - a tail that was not on the walk is pointed at the last good node (CAS from the value read
//    before the walk);
//  - a head that is not this channel's dummy is replaced by a fresh dummy (CAS), the tail
//    pointed at it, and everything the old head led to is lost;
//  - a cut link of a closed channel is sealed (kLinkClosed) rather than cleared.
// Every change is a CAS from a value the walk saw, so an honest operation that raced the repair
// is never undone: the repair retries instead. Senders that had already read a tail in the lost
// part link after it and their messages are lost too. The counts need no repair: they follow
// from the nodes' numbers (a fresh dummy continues the numbering of the tail it replaces).
Result<BlockHandle> Channel::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                      const WaitSpec& wait) {
  Result<BlockHandle> got;
  const Status s = wait_sweeping(*arena_, arena_->space(), wait, [&] {
    got = arena_->allocate(payload_bytes, layout, Arena::kNoCreatorWait);  // the wait is ours
    return got.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return {as_flow(s, Status::kFull), {}};
  if (got.status == Status::kOutOfCapacity) return {Status::kClosed, {}};
  return got;
}

Status Channel::send(BlockHandle block, const WaitSpec& wait) {
  arena_->maybe_reap();
  // A repair since this object's last call lost messages: say so once (nothing is sent).
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return r;
  if (arena_->truncated()) [[unlikely]] return Status::kCorruptedLength;  // docs/shm.md, Truncation
  if (!arena_->intact(ref_to_offset(block.ref), offset_, offset_)) [[unlikely]] return Status::kCorruptedLength;
  const auto held = arena_->held_length(block);
  if (!held.ok()) return held.status;
  const uint64_t length = held.value;
  // A queue node first: if the arena is full we wait for space before taking a slot.
  Result<BlockRef> node;
  Status s = wait_sweeping(*arena_, arena_->space(), wait, [&] {
    node = arena_->allocate_node(Arena::kNoCreatorWait);  // the wait is ours, to its deadline
    return node.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return as_flow(s, Status::kFull);
  if (!node.ok()) return node.status == Status::kOutOfCapacity ? Status::kClosed : node.status;
  QueueNode* n = arena_->find_node(node.value);
  const uint64_t held_state = n->state.load(std::memory_order_relaxed);
  // The descriptor, while the node is ours alone. The message is the block at its next
  // generation (begin_send bumps it): a stale handle to the block cannot pass for it.
  const BlockHandle message{block.ref, Arena::sending_generation(block)};
  n->block.store(message.ref, std::memory_order_relaxed);
  n->generation.store(message.generation, std::memory_order_relaxed);
  n->length.store(length, std::memory_order_relaxed);
  n->next.store(next_link(n->next.load(std::memory_order_relaxed), 0), std::memory_order_relaxed);
  MEMCHANNEL_CRASH_POINT(kSendNodeAllocated);
  // The node names its channel and sender before anything else is shared: a reclaimer of this
  // process finds it, and frees it if it never got linked.
  const uint64_t linked_state = with_node_kind(held_state, tag_, arena_->holder(), kNodeLinked);
  n->state.store(linked_state, std::memory_order_relaxed);  // published by the link CAS (release)
  MEMCHANNEL_CRASH_POINT(kSendNamed);
  uint32_t previous = 0;
  s = arena_->begin_send(block, &previous);
  if (s != Status::kOk) {
    arena_->free_node_from(node.value, linked_state);
    return s;
  }
  MEMCHANNEL_CRASH_POINT(kSendMarkedSending);
  // Linked when the channel has room (checked at the link: see channel.h), waiting for it.
  Status linked = Status::kFull;
  s = wait_sweeping(*arena_, header_->not_full, wait, [&] {
    linked = enqueue(node.value, length);
    if (linked == Status::kFull && arena_->truncated()) [[unlikely]] linked = Status::kCorruptedLength;
    return linked != Status::kFull;
  });
  if (s != Status::kOk || linked != Status::kOk) {
    // Not linked: everything goes back as it was, the block to its sender.
    arena_->abort_send(message, previous);
    arena_->free_node_from(node.value, linked_state);
    return s != Status::kOk ? as_flow(s, Status::kFull) : linked;
  }
  arena_->finish_send(message);
  MEMCHANNEL_CRASH_POINT(kSendMarkedQueued);
  // Linked into memory that is still there: never reported sent into a truncated segment.
  if (!arena_->intact(ref_to_offset(block.ref), ref_to_offset(node.value), offset_)) [[unlikely]] {
    return linked_into_truncated(n, linked_state);
  }
  notify_one(header_->not_empty, header_->receivers_spin_until);  // one message: one receiver
  notify_fd(FdKind::kReadable);  // after notify_one's fence: see core/fd_wait.h
  MEMCHANNEL_CRASH_POINT(kSendNotified);
  return Status::kOk;
}

Status Channel::send_many(const BlockHandle* blocks, size_t n, const WaitSpec& wait, size_t* queued) {
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
    std::array<uint64_t, kMaxChain> states;
    std::array<uint64_t, kMaxChain> lengths;
    std::array<BlockHandle, kMaxChain> messages;
    std::array<uint32_t, kMaxChain> previous;
    size_t built = 0;
    Status failed = Status::kOk;
    for (; built < want; ++built) {
      const BlockHandle block = blocks[*queued + built];
      const auto held = arena_->held_length(block);
      if (!held.ok()) {
        failed = held.status;
        break;
      }
      Result<BlockRef> node;
      if (built == 0) {  // waits for arena space as send() does
        const Status s = wait_sweeping(*arena_, arena_->space(), wait, [&] {
          node = arena_->allocate_node(Arena::kNoCreatorWait);
          return node.status != Status::kOutOfCapacity || closed();
        });
        if (s != Status::kOk) {
          failed = as_flow(s, Status::kFull);
          break;
        }
        if (!node.ok()) {
          failed = node.status == Status::kOutOfCapacity ? Status::kClosed : node.status;
          break;
        }
      } else {
        node = arena_->allocate_node(Arena::kNoCreatorWait);
        if (!node.ok()) break;  // link the chain so far; the next one waits for a node
      }
      QueueNode* nd = arena_->find_node(node.value);
      const uint64_t held_state = nd->state.load(std::memory_order_relaxed);
      const BlockHandle message{block.ref, Arena::sending_generation(block)};
      nd->block.store(message.ref, std::memory_order_relaxed);
      nd->generation.store(message.generation, std::memory_order_relaxed);
      nd->length.store(held.value, std::memory_order_relaxed);
      nd->next.store(next_link(nd->next.load(std::memory_order_relaxed), 0), std::memory_order_relaxed);
      MEMCHANNEL_CRASH_POINT(kSendNodeAllocated);
      const uint64_t linked_state = with_node_kind(held_state, tag_, arena_->holder(), kNodeLinked);
      nd->state.store(linked_state, std::memory_order_relaxed);  // published by the link CAS (release)
      MEMCHANNEL_CRASH_POINT(kSendNamed);
      uint32_t was = 0;
      const Status begun = arena_->begin_send(block, &was);
      if (begun != Status::kOk) {
        arena_->free_node_from(node.value, linked_state);
        failed = begun;
        break;
      }
      MEMCHANNEL_CRASH_POINT(kSendMarkedSending);
      refs[built] = node.value;
      states[built] = linked_state;
      lengths[built] = held.value;
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
      const Status s = wait_sweeping(*arena_, header_->not_full, wait, [&] {
        attempt = enqueue_chain(refs.data() + done, states.data() + done, lengths.data() + done, built - done,
                                &linked);
        return attempt != Status::kFull;
      });
      if (s != Status::kOk || attempt != Status::kOk) {
        link_failed = s != Status::kOk ? as_flow(s, Status::kFull) : attempt;
        break;
      }
      bool whole = true;
      for (size_t i = done; i < done + linked; ++i) {
        arena_->finish_send(messages[i]);
        whole &= arena_->intact(ref_to_offset(messages[i].ref), ref_to_offset(refs[i]), offset_);
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
        arena_->abort_send(messages[i], previous[i]);
        arena_->free_node_from(refs[i], states[i]);
      }
      return link_failed;
    }
    if (failed != Status::kOk) return failed;
  }
  return Status::kOk;
}

Result<BlockHandle> Channel::recv(const WaitSpec& wait) {
  arena_->maybe_reap();
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return {r, {}};
  if (arena_->truncated() || !arena_->intact(offset_, offset_, offset_)) [[unlikely]] {
    return {Status::kCorruptedLength, {}};
  }
  Result<BlockHandle> got;
  bool drained = false;
  const Status s = wait_sweeping(
      *arena_, header_->not_empty, header_->receivers_spin_until, wait,
      [&] {
        bool empty = false;
        got = try_dequeue(&empty, &drained);  // drained: the dummy's link is sealed
        return got.ok() || !empty || drained || arena_->truncated();  // a sweep found a truncation
      },
      [&] { return counts().queued; });  // messages left for other receivers
  if (s != Status::kOk) return {as_flow(s, Status::kEmpty), {}};
  if (got.ok()) {
    // The message's block and the channel are still there (else the message is lost, counted).
    if (!arena_->intact(ref_to_offset(got.value.ref), offset_, offset_)) [[unlikely]] return {taken_from_truncated(), {}};
    return got;
  }
  if (arena_->truncated()) [[unlikely]] return {Status::kCorruptedLength, {}};
  if (drained) return {Status::kClosed, {}};
  return got;
}

Result<size_t> Channel::recv_many(BlockHandle* out, size_t max, const WaitSpec& wait) {
  arena_->maybe_reap();
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return {r, 0};
  if (arena_->truncated() || !arena_->intact(offset_, offset_, offset_)) [[unlikely]] {
    return {Status::kCorruptedLength, 0};
  }
  if (max == 0) return {Status::kInvalidArgument, 0};
  size_t got = 0;
  bool drained = false;
  Status first = Status::kOk;
  const Status s = wait_sweeping(
      *arena_, header_->not_empty, header_->receivers_spin_until, wait,
      [&] {
        while (got < max) {
          bool empty = false;
          auto taken = try_dequeue(&empty, &drained);  // drained: the dummy's link is sealed
          if (taken.ok()) {
            out[got++] = taken.value;
            continue;
          }
          if (got != 0) return true;  // what there is; an error is met again by the next call
          first = taken.status;
          return !empty || drained || arena_->truncated();  // a sweep found a truncation
        }
        return true;
      },
      [&] { return counts().queued; });  // messages left for other receivers
  if (got != 0) {
    // Every block taken, and the channel, still there (else all of them are lost, counted).
    bool whole = true;
    for (size_t i = 0; i < got; ++i) whole &= arena_->intact(ref_to_offset(out[i].ref), offset_, offset_);
    if (!whole) [[unlikely]] {
      for (size_t i = 0; i < got; ++i) (void)taken_from_truncated();
      return {Status::kCorruptedLength, 0};
    }
    return {Status::kOk, got};
  }
  if (arena_->truncated()) [[unlikely]] return {Status::kCorruptedLength, 0};
  if (s != Status::kOk) return {as_flow(s, Status::kEmpty), 0};
  if (drained) return {Status::kClosed, 0};
  return {first, 0};
}

void Channel::close() {
  // The flag first: senders check it before they take a node, and a repair seals what it cuts.
  header_->closed.store(1, std::memory_order_seq_cst);
  seal();
  notify_all(header_->not_empty);
  notify_all(header_->not_full);
  notify_all(arena_->space());
  notify_fd(FdKind::kReadable);
  notify_fd(FdKind::kWritable);
}

bool Channel::closed() const { return header_->closed.load(std::memory_order_acquire) != 0; }

Channel::Counts Channel::counts() const {
  Counts c;
  for (int attempt = 0; attempt < kRepairAttempts; ++attempt) {
    const uint64_t head = header_->head.load(std::memory_order_acquire);
    const QueueNode* first = arena_->find_node(tagged_ref(head));
    if (first == nullptr) return c;
    const uint64_t head_seq = first->seq.load(std::memory_order_relaxed);
    const uint64_t head_position = first->position_bytes.load(std::memory_order_relaxed);
    // The last node: the tail, or the few nodes a lagging tail has not reached yet.
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    const QueueNode* last = arena_->find_node(tagged_ref(tail));
    if (last == nullptr) return c;
    uint64_t seq = last->seq.load(std::memory_order_relaxed);
    uint64_t position = last->position_bytes.load(std::memory_order_relaxed);
    for (int steps = 0; steps < 8; ++steps) {
      const QueueNode* n = arena_->find_node(tagged_ref(last->next.load(std::memory_order_acquire)));
      if (n == nullptr || !node_in_channel(n->state.load(std::memory_order_acquire)) ||
          n->seq.load(std::memory_order_relaxed) != seq + 1) {
        break;
      }
      last = n;
      seq = n->seq.load(std::memory_order_relaxed);
      position = n->position_bytes.load(std::memory_order_relaxed);
    }
    // The head unchanged from before the dummy's numbers were read to after the last node's:
    // both describe the queue as it was at one moment (a head read earlier than the last node
    // would count messages linked after it moved on, more than the channel ever held).
    const bool still = header_->head.load(std::memory_order_acquire) == head;
    c.sent = seq;
    c.received = head_seq;
    if (seq >= head_seq && position >= head_position && (seq != head_seq || position == head_position) &&
        (maxsize_ == 0 || seq - head_seq <= maxsize_)) {
      c.queued = seq - head_seq;
      c.bytes = position - head_position;
      if (still) return c;
      continue;
    }
    if (!still) continue;
    const Counts walked = walk_counts(head, kMaxQueueSteps);  // numbers no honest queue holds
    c.queued = walked.queued;
    c.bytes = walked.bytes;
    return c;
  }
  // The head kept moving: the last look, within the channel's bounds.
  if (maxsize_ != 0) c.queued = std::min(c.queued, maxsize_);
  if (maxbytes_ != 0) c.bytes = std::min(c.bytes, std::max(maxbytes_, arena_->max_payload()));
  return c;
}

uint64_t Channel::queued() const { return counts().queued; }

ChannelStats Channel::stats() const {
  arena_->maybe_reap();
  (void)arena_->intact(offset_, offset_, offset_);  // a truncation changes messages_lost
  ChannelStats s{};
  const Counts c = counts();
  s.queued = c.queued;
  s.closed = closed();
  s.bytes_queued = c.bytes;
  s.sent = c.sent;
  s.received = c.received;
  s.maxsize = maxsize_;
  s.maxbytes = maxbytes_;
  s.messages_lost = header_->messages_lost.load(std::memory_order_relaxed);
  if (arena_->truncated()) [[unlikely]] s.messages_lost = truncation_loss(c, s.messages_lost);
  return s;
}

Status Channel::linked_into_truncated(QueueNode* node, uint64_t linked_state) {
  // Still exactly as linked: no receiver has claimed it, and none will deliver it (a receiver
  // claiming it now finds the truncation too, and counts it: taken_from_truncated). The sender
  // is told, so it is not lost: it stays counted as queued, which the adjustment takes back.
  // (A node lost with the pages: its sender is told; the count is then an upper bound anyway.)
  if (node == nullptr || node->state.load(std::memory_order_acquire) == linked_state) {
    header_->truncation_adjust.fetch_sub(1, std::memory_order_relaxed);
    return Status::kCorruptedLength;
  }
  return Status::kOk;  // claimed already: delivered, or counted lost by its receiver
}

Status Channel::taken_from_truncated() {
  header_->truncation_adjust.fetch_add(1, std::memory_order_relaxed);
  return Status::kCorruptedLength;
}

uint64_t Channel::truncation_loss(const Counts& c, uint64_t lost) const {
  // The counts come from the channel header and the nodes at both ends of the queue (their
  // numbers): exact while those survive. Lost pages read as zeros (the SIGBUS guard's private
  // pages, or a file grown back), so a magic word tells whether each is still there.
  const auto survives = [&](uint64_t end) {
    const QueueNode* n = arena_->find_node(tagged_ref(end));
    return n != nullptr && node_in_channel(n->state.load(std::memory_order_acquire));
  };
  const bool whole = header_->magic == kChannelMagic && survives(header_->head.load(std::memory_order_acquire)) &&
                     survives(header_->tail.load(std::memory_order_acquire)) && c.sent >= c.received;
  if (whole) {
    const uint64_t total = lost + c.queued + header_->truncation_adjust.load(std::memory_order_relaxed);
    return static_cast<int64_t>(total) < 0 ? 0 : total;
  }
  // Gone with the lost pages: at most what the channel could hold (its private limit, plus a
  // message per holder caught between taking one and finding the truncation), or the arena.
  const uint64_t arena_bound = arena_->capacity() / (2 * kUnit);  // a node and a block each
  return maxsize_ != 0 ? std::min(maxsize_ + kMaxHolders, arena_bound) : arena_bound;
}

}  // namespace memchannel
