// fd readiness across processes: listener sockets and the channel's wait-list.
//
// A process that wants a file descriptor to become readable when a channel gets a message (or
// room, or is closed) opens a WaitSocket: a SOCK_DGRAM Unix socket bound to an abstract name
// "\0memchannel-w-<8 hex digits of a random 32-bit key>". It puts the key in a slot of the
// channel's wait-list (ChannelHeader::fd_key(i), core/channel.h) and arms the slot by setting its
// bit in fd_readers or fd_writers. A sender (or a receiver freeing room, or close()) that sees
// a bit set takes the whole mask with one exchange and sends every armed slot's socket one
// 16-byte datagram {arena id, channel offset}; the bit is cleared by the taking, so a slot
// fires once per arming. The listener drains its socket and re-arms.
//
//   listener                                  sender
//   --------                                  ------
//   mask |= bit            (seq_cst RMW)      link the message
//   fence (seq_cst)                           fence (seq_cst; notify_all's)
//   if channel ready: done                    if mask != 0 (relaxed load):
//   poll(fd)                                      m = mask.exchange(0); sendto each bit's key
//
// The same Dekker pair as EventCount (core/waiter.h): either the sender sees the bit, or the
// listener's check sees the message. A sender with no fd waiter pays one relaxed load of a
// word on the cache line it already read for the EventCount.
//
// Trust: the mask is cut to the kFdSlots bits that name slots, so every value is in bounds; a key is
// only ever turned into a socket name under the memchannel-w- prefix; a datagram a listener
// reads is checked against the channels it registered (pybind/select.cc). A listener that died
// leaves its key: the next sender that fires it gets ECONNREFUSED and frees the slot; a slot
// that is never fired again is reclaimed by the next registration that finds no free slot.
#pragma once

#include <cstdint>
#include <memory>

#include "core/status.h"

namespace memchannel {

inline constexpr int kFdSlots = 28;  // listeners per channel at once (one bit each in a mask)
inline constexpr uint64_t kFdSlotMask = (uint64_t{1} << kFdSlots) - 1;
enum class FdKind : int { kReadable = 0, kWritable = 1 };

// One datagram: which channel fired. Concurrency: plain data.
struct FdEvent {
  uint64_t arena_id;
  uint64_t offset;
};

// A listener socket. Concurrency: drain() and wait() by one thread at a time; fd() and key()
// anywhere. Process-local (a forked child should open its own: the name is the parent's).
class WaitSocket {
 public:
  static Result<std::unique_ptr<WaitSocket>> open();
  ~WaitSocket();
  WaitSocket(const WaitSocket&) = delete;
  WaitSocket& operator=(const WaitSocket&) = delete;

  int fd() const { return fd_; }
  uint32_t key() const { return key_; }
  // Reads every pending datagram (non-blocking) into out[0..max), returns how many were
  // 16-byte events (others, e.g. a registration's zero-byte probe, are dropped). *more when
  // the events cannot be the whole story: out was full, or as many datagrams were read as the
  // socket can queue (net.unix.max_dgram_qlen), so a sender may have found it full and sent
  // nothing. A full queue is always drained whole by one call (it reads until empty), so
  // "fewer read than the queue holds" proves nothing was dropped. One drainer at a time.
  int drain(FdEvent* out, int max, bool* more);
  // Makes the socket readable (a datagram to itself).
  void signal(const FdEvent& ev);
  // Waits until the socket is readable or timeout_ns passed (negative: no limit). kOk,
  // kTimedOut, kInterrupted (a signal). Concurrency: any thread.
  Status wait(int64_t timeout_ns) const;

 private:
  WaitSocket(int fd, uint32_t key, int qlen) : fd_(fd), key_(key), qlen_(qlen) {}
  int fd_;
  uint32_t key_;
  int qlen_;  // datagrams the socket queues before senders get EAGAIN
};

// Sends `ev` to the listener named by `key`. Returns false when no socket has that name (the
// listener is gone); true when it was sent or the listener's queue was full (it is readable
// then anyway). Never blocks. Concurrency: any thread.
bool fd_send(uint32_t key, const FdEvent& ev);
// Whether a listener named `key` exists (a zero-byte datagram, which drain() drops).
bool fd_alive(uint32_t key);

}  // namespace memchannel
