// Channel readiness and the fd wait-list (design: core/fd_wait.h; docs/design.md, "Waiting on
// several channels: fd readiness").
#include <atomic>

#include "core/channel.h"
#include "core/fd_wait.h"

namespace memchannel {

bool Channel::readable() const { return closed() || counts().queued != 0; }

bool Channel::writable() const {
  if (closed() || (maxsize_ == 0 && maxbytes_ == 0)) return true;
  const Counts c = counts();
  return (maxsize_ == 0 || c.queued < maxsize_) && (maxbytes_ == 0 || c.bytes < maxbytes_);
}

Result<int> Channel::fd_register(uint32_t key) {
  if (key == 0) return {Status::kInvalidArgument, -1};
  for (int i = 0; i < kFdSlots; ++i) {
    if (header_->fd_key(i).load(std::memory_order_acquire) == key) return {Status::kOk, i};
  }
  for (int i = 0; i < kFdSlots; ++i) {
    uint32_t expected = 0;
    if (header_->fd_key(i).compare_exchange_strong(expected, key, std::memory_order_acq_rel)) {
      return {Status::kOk, i};
    }
  }
  // Every slot names a key: take one whose listener is gone (it died without unregistering
  // and nothing fired it since).
  for (int i = 0; i < kFdSlots; ++i) {
    uint32_t old = header_->fd_key(i).load(std::memory_order_acquire);
    if (old != 0 && !fd_alive(old) &&
        header_->fd_key(i).compare_exchange_strong(old, key, std::memory_order_acq_rel)) {
      return {Status::kOk, i};
    }
  }
  return {Status::kFull, -1};
}

void Channel::fd_disarm(int slot, FdKind kind) {
  if (slot < 0 || slot >= kFdSlots) return;
  std::atomic<uint64_t>& armed = kind == FdKind::kReadable ? header_->fd_readers : header_->fd_writers;
  armed.fetch_and(~(uint64_t{1} << slot), std::memory_order_relaxed);
}

void Channel::fd_unregister(int slot, uint32_t key) {
  if (slot < 0 || slot >= kFdSlots) return;
  // Only a slot still ours is disarmed: while it names our live socket nobody else takes it
  // (a sender frees a key only when its socket is gone, a registration only an unanswering
  // one), so the bits cleared here are ours, never a newer listener's.
  if (header_->fd_key(slot).load(std::memory_order_acquire) != key) return;
  fd_disarm(slot, FdKind::kReadable);
  fd_disarm(slot, FdKind::kWritable);
  uint32_t expected = key;
  header_->fd_key(slot).compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

bool Channel::fd_arm(int slot, FdKind kind) {
  if (slot < 0 || slot >= kFdSlots) return true;
  std::atomic<uint64_t>& armed = kind == FdKind::kReadable ? header_->fd_readers : header_->fd_writers;
  armed.fetch_or(uint64_t{1} << slot, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the notifier's fence
  return kind == FdKind::kReadable ? readable() : writable();
}

void Channel::fire_fd(std::atomic<uint64_t>& armed) {
  uint64_t m = armed.exchange(0, std::memory_order_acq_rel) & kFdSlotMask;  // a peer may set any bit
  const FdEvent ev{arena_->arena_id(), offset_};
  while (m != 0) {
    const int i = __builtin_ctzll(m);
    m &= m - 1;
    uint32_t key = header_->fd_key(i).load(std::memory_order_acquire);
    // A listener that is gone costs this one failed send: its slot is freed here.
    if (key != 0 && !fd_send(key, ev)) header_->fd_key(i).compare_exchange_strong(key, 0, std::memory_order_acq_rel);
  }
}

}  // namespace memchannel
