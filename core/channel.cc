#include "core/channel.h"

#include <new>

namespace memchannel {
namespace {

// A corrupted queue can hold a cycle; no honest dequeue needs anywhere near this many retries.
constexpr uint64_t kMaxQueueSteps = 1ull << 22;

void saturating_sub(std::atomic<uint64_t>& counter, uint64_t n) {
  uint64_t cur = counter.load(std::memory_order_relaxed);
  while (!counter.compare_exchange_weak(cur, cur > n ? cur - n : 0, std::memory_order_relaxed)) {
  }
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
      maxsize_(header->maxsize),
      maxbytes_(header->maxbytes) {}

Result<std::shared_ptr<Channel>> Channel::create(std::shared_ptr<Arena> arena, uint64_t maxsize,
                                                 uint64_t maxbytes, uint64_t channel_id) {
  if (maxsize >= kClosedBit) return {Status::kInvalidArgument, nullptr};
  auto cells = arena->allocate_cells(sizeof(ChannelHeader));
  if (!cells.ok()) return {cells.status, nullptr};
  auto dummy = arena->allocate_node();
  if (!dummy.ok()) {
    arena->free_cells(cells.value);
    return {dummy.status, nullptr};
  }
  QueueNode* node = arena->node(dummy.value);
  node->block.store(0, std::memory_order_relaxed);
  node->next.store(make_tagged(tagged_tag(node->next.load(std::memory_order_relaxed)) + 1, 0),
                   std::memory_order_relaxed);
  void* mem = arena->translate(cells.value, sizeof(ChannelHeader));
  auto* header = new (mem) ChannelHeader{};
  header->magic = kChannelMagic;
  header->version = kChannelLayoutVersion;
  header->maxsize = maxsize;
  header->maxbytes = maxbytes;
  header->channel_id = channel_id;
  header->head.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->tail.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->attached.store(1, std::memory_order_release);
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, cells.value))};
}

Result<std::shared_ptr<Channel>> Channel::open(std::shared_ptr<Arena> arena, Offset offset) {
  auto* header = arena->translate_as<ChannelHeader>(offset);
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
  if (header->maxsize >= kClosedBit) {
    arena->note_corruption();
    return {Status::kCorruptedLength, nullptr};
  }
  uint32_t attached = header->attached.load(std::memory_order_acquire);
  do {
    if (attached == 0) return {Status::kNotFound, nullptr};  // already being torn down
  } while (!header->attached.compare_exchange_weak(attached, attached + 1, std::memory_order_acq_rel));
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, offset))};
}

Channel::~Channel() {
  if (header_->attached.fetch_sub(1, std::memory_order_acq_rel) == 1) drain_and_free();
}

void Channel::drain_and_free() {
  for (;;) {
    bool empty = false;
    auto got = try_dequeue(&empty);
    if (!got.ok()) break;
    arena_->release(got.value);
  }
  arena_->free_node(tagged_ref(header_->head.load(std::memory_order_acquire)));
  header_->magic = 0;
  arena_->free_cells(offset_);
}

Channel::Admit Channel::try_admit(uint64_t length) {
  if (maxbytes_ != 0) {
    uint64_t b = header_->bytes.load(std::memory_order_relaxed);
    do {
      // An empty channel always admits one message, however large, so nothing deadlocks.
      if (b != 0 && (length > maxbytes_ || b > maxbytes_ - length)) return Admit::kFull;
    } while (!header_->bytes.compare_exchange_weak(b, b + length, std::memory_order_relaxed));
  } else {
    header_->bytes.fetch_add(length, std::memory_order_relaxed);
  }
  uint64_t c = header_->count.load(std::memory_order_acquire);
  for (;;) {
    const bool closed = (c & kClosedBit) != 0;
    if (closed || (maxsize_ != 0 && c >= maxsize_)) {
      saturating_sub(header_->bytes, length);
      if (maxbytes_ != 0) notify_all(header_->not_full);
      return closed ? Admit::kClosed : Admit::kFull;
    }
    if (header_->count.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) {
      return Admit::kAdmitted;
    }
  }
}

Status Channel::enqueue(BlockRef node_ref) {
  QueueNode* node = arena_->node(node_ref);
  if (node == nullptr) return Status::kCorruptedIndex;
  const uint64_t old_next = node->next.load(std::memory_order_relaxed);
  node->next.store(make_tagged(tagged_tag(old_next) + 1, 0), std::memory_order_relaxed);
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* last = arena_->node(tagged_ref(tail));
    if (last == nullptr) return Status::kCorruptedIndex;
    uint64_t next = last->next.load(std::memory_order_acquire);
    if (tail != header_->tail.load(std::memory_order_acquire)) continue;
    if (tagged_ref(next) == 0) {
      // release: the node's fields and the message payload happen-before the receiver's
      // acquire load of this link in try_dequeue.
      if (last->next.compare_exchange_weak(next, make_tagged(tagged_tag(next) + 1, node_ref),
                                           std::memory_order_release, std::memory_order_relaxed)) {
        header_->tail.compare_exchange_strong(tail, make_tagged(tagged_tag(tail) + 1, node_ref),
                                              std::memory_order_release, std::memory_order_relaxed);
        return Status::kOk;
      }
    } else {
      // The tail lags (a sender linked its node but has not swung the tail yet): help it.
      header_->tail.compare_exchange_strong(tail, make_tagged(tagged_tag(tail) + 1, tagged_ref(next)),
                                            std::memory_order_release, std::memory_order_relaxed);
    }
  }
  arena_->note_corruption();
  return Status::kCorruptedIndex;
}

Result<BlockHandle> Channel::try_dequeue(bool* empty) {
  *empty = false;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    uint64_t head = header_->head.load(std::memory_order_acquire);
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* first = arena_->node(tagged_ref(head));
    if (first == nullptr) return {Status::kCorruptedIndex, {}};
    const uint64_t next = first->next.load(std::memory_order_acquire);  // pairs with enqueue's CAS
    if (head != header_->head.load(std::memory_order_acquire)) continue;
    if (tagged_ref(next) == tagged_ref(head)) {
      arena_->note_corruption();
      return {Status::kCorruptedIndex, {}};
    }
    if (tagged_ref(head) == tagged_ref(tail)) {
      if (tagged_ref(next) == 0) {
        *empty = true;
        return {Status::kEmpty, {}};
      }
      uint64_t expected = tail;
      header_->tail.compare_exchange_strong(expected, make_tagged(tagged_tag(tail) + 1, tagged_ref(next)),
                                            std::memory_order_release, std::memory_order_relaxed);
      continue;
    }
    QueueNode* second = arena_->node(tagged_ref(next));
    if (second == nullptr) return {Status::kCorruptedIndex, {}};
    // Read the message before the CAS: afterwards the node may be recycled by another receiver.
    const BlockHandle block{second->block.load(std::memory_order_relaxed),
                            second->generation.load(std::memory_order_relaxed)};
    const uint64_t length = second->length.load(std::memory_order_relaxed);
    if (!header_->head.compare_exchange_weak(head, make_tagged(tagged_tag(head) + 1, tagged_ref(next)),
                                             std::memory_order_acq_rel, std::memory_order_relaxed)) {
      continue;
    }
    arena_->free_node(tagged_ref(head));
    // The last message of a closed channel: receivers that saw it "in flight" must re-check.
    if (header_->count.fetch_sub(1, std::memory_order_acq_rel) == (kClosedBit | 1)) {
      notify_all(header_->not_empty);
    }
    saturating_sub(header_->bytes, length);
    if (maxsize_ != 0 || maxbytes_ != 0) notify_all(header_->not_full);
    if (arena_->mark_received(block) != Status::kOk) {
      continue;  // a forged descriptor: counted by the arena; serve the next message
    }
    header_->received.fetch_add(1, std::memory_order_relaxed);
    return {Status::kOk, block};
  }
  arena_->note_corruption();
  return {Status::kCorruptedIndex, {}};
}

Result<BlockHandle> Channel::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                      const WaitSpec& wait) {
  Result<BlockHandle> got;
  const Status s = wait_until(arena_->space(), wait, [&] {
    got = arena_->allocate(payload_bytes, layout);
    return got.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return {as_flow(s, Status::kFull), {}};
  if (got.status == Status::kOutOfCapacity) return {Status::kClosed, {}};
  return got;
}

Status Channel::send(BlockHandle block, const WaitSpec& wait) {
  const auto held = arena_->held_length(block);
  if (!held.ok()) return held.status;
  const uint64_t length = held.value;
  // A queue node first: if the arena is full we wait for space before taking a slot.
  Result<BlockRef> node;
  Status s = wait_until(arena_->space(), wait, [&] {
    node = arena_->allocate_node();
    return node.status != Status::kOutOfCapacity || closed();
  });
  if (s != Status::kOk) return as_flow(s, Status::kFull);
  if (!node.ok()) return node.status == Status::kOutOfCapacity ? Status::kClosed : node.status;

  Admit admit = Admit::kFull;
  s = wait_until(header_->not_full, wait, [&] {
    admit = try_admit(length);
    return admit != Admit::kFull;
  });
  if (s != Status::kOk || admit == Admit::kClosed) {
    arena_->free_node(node.value);
    return s != Status::kOk ? as_flow(s, Status::kFull) : Status::kClosed;
  }
  s = arena_->mark_queued(block);
  if (s != Status::kOk) {
    header_->count.fetch_sub(1, std::memory_order_acq_rel);
    saturating_sub(header_->bytes, length);
    arena_->free_node(node.value);
    notify_all(header_->not_full);
    notify_all(header_->not_empty);
    return s;
  }
  QueueNode* n = arena_->node(node.value);
  n->block.store(block.ref, std::memory_order_relaxed);
  n->generation.store(block.generation, std::memory_order_relaxed);
  n->length.store(length, std::memory_order_relaxed);
  s = enqueue(node.value);
  if (s != Status::kOk) return s;
  header_->sent.fetch_add(1, std::memory_order_relaxed);
  notify_all(header_->not_empty);
  return Status::kOk;
}

Result<BlockHandle> Channel::recv(const WaitSpec& wait) {
  Result<BlockHandle> got;
  bool drained = false;
  const Status s = wait_until(header_->not_empty, wait, [&] {
    bool empty = false;
    got = try_dequeue(&empty);
    if (got.ok() || !empty) return true;
    const uint64_t c = header_->count.load(std::memory_order_acquire);
    drained = c == kClosedBit;  // closed, nothing queued, nothing in flight
    return drained;
  });
  if (s != Status::kOk) return {as_flow(s, Status::kEmpty), {}};
  if (drained) return {Status::kClosed, {}};
  return got;
}

void Channel::close() {
  header_->count.fetch_or(kClosedBit, std::memory_order_acq_rel);
  notify_all(header_->not_empty);
  notify_all(header_->not_full);
  notify_all(arena_->space());
}

bool Channel::closed() const {
  return (header_->count.load(std::memory_order_acquire) & kClosedBit) != 0;
}

uint64_t Channel::queued() const {
  return header_->count.load(std::memory_order_acquire) & ~kClosedBit;
}

ChannelStats Channel::stats() const {
  ChannelStats s{};
  const uint64_t c = header_->count.load(std::memory_order_acquire);
  s.queued = c & ~kClosedBit;
  s.closed = (c & kClosedBit) != 0;
  s.bytes_queued = header_->bytes.load(std::memory_order_relaxed);
  s.sent = header_->sent.load(std::memory_order_relaxed);
  s.received = header_->received.load(std::memory_order_relaxed);
  s.maxsize = maxsize_;
  s.maxbytes = maxbytes_;
  return s;
}

}  // namespace memchannel
