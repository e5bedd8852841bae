#include "core/fd_wait.h"

#include <errno.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstring>

namespace memchannel {
namespace {

// The abstract socket name of a listener key (no file in the file system, gone with the socket).
socklen_t listener_address(uint32_t key, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  const int n = std::snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1, "memchannel-w-%08x",
                              static_cast<unsigned>(key));
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
}

// The process's one unbound socket senders send from, made on first use (the first time any
// sender of this process finds an fd waiter). Inherited across fork: sending from it is fine.
int sender_socket() {
  static std::atomic<int> fd{-1};
  int s = fd.load(std::memory_order_acquire);
  if (s >= 0) return s;
  const int made = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (made < 0) return -1;
  int expected = -1;
  if (!fd.compare_exchange_strong(expected, made, std::memory_order_acq_rel)) {
    ::close(made);
    return expected;
  }
  return made;
}

bool send_datagram(uint32_t key, const void* data, size_t len) {
  const int s = sender_socket();
  if (s < 0) return true;  // cannot tell: keep the slot
  sockaddr_un addr;
  const socklen_t alen = listener_address(key, &addr);
  for (;;) {
    const ssize_t r = ::sendto(s, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), alen);
    if (r >= 0) return true;
    if (errno == EINTR) continue;
    // No socket bound to the name: the listener closed it or died.
    return !(errno == ECONNREFUSED || errno == ENOENT);
  }
}

// How many datagrams a Unix datagram socket queues (the kernel refuses more with EAGAIN).
// Unreadable: 1, so every drain counts as "maybe some were dropped" (correct, just slower).
int max_dgram_qlen() {
  static const int qlen = [] {
    int v = 1;
    if (FILE* f = std::fopen("/proc/sys/net/unix/max_dgram_qlen", "r")) {
      if (std::fscanf(f, "%d", &v) != 1 || v < 1) v = 1;
      std::fclose(f);
    }
    return v;
  }();
  return qlen;
}

}  // namespace

Result<std::unique_ptr<WaitSocket>> WaitSocket::open() {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return {Status::kSystemError, nullptr};
  for (int attempt = 0; attempt < 32; ++attempt) {  // a taken name (EADDRINUSE): another key
    uint32_t key = 0;
    if (::getrandom(&key, sizeof(key), 0) != static_cast<ssize_t>(sizeof(key)) || key == 0) continue;
    sockaddr_un addr;
    const socklen_t alen = listener_address(key, &addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), alen) == 0) {
      return {Status::kOk, std::unique_ptr<WaitSocket>(new WaitSocket(fd, key, max_dgram_qlen()))};
    }
    if (errno != EADDRINUSE) break;
  }
  ::close(fd);
  return {Status::kSystemError, nullptr};
}

WaitSocket::~WaitSocket() { ::close(fd_); }

int WaitSocket::drain(FdEvent* out, int max, bool* more) {
  int n = 0;
  int read = 0;
  *more = false;
  for (;;) {
    FdEvent ev{};
    const ssize_t r = ::recv(fd_, &ev, sizeof(ev), MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (read >= qlen_) *more = true;  // the queue may have been full: a send may be lost
      return n;  // EAGAIN: drained
    }
    ++read;
    if (r != static_cast<ssize_t>(sizeof(ev))) continue;  // a probe, or not ours
    if (n < max) {
      out[n++] = ev;
    } else {
      *more = true;
    }
  }
}

void WaitSocket::signal(const FdEvent& ev) { send_datagram(key_, &ev, sizeof(ev)); }

Status WaitSocket::wait(int64_t timeout_ns) const {
  pollfd p{fd_, POLLIN, 0};
  timespec ts{};
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
  }
  const int r = ::ppoll(&p, 1, timeout_ns >= 0 ? &ts : nullptr, nullptr);
  if (r > 0) return Status::kOk;
  if (r == 0) return Status::kTimedOut;
  return Status::kInterrupted;
}

bool fd_send(uint32_t key, const FdEvent& ev) { return send_datagram(key, &ev, sizeof(ev)); }

bool fd_alive(uint32_t key) { return send_datagram(key, nullptr, 0); }

}  // namespace memchannel
