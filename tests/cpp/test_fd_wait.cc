// The fd wait-list (core/fd_wait.h, docs/design.md "Waiting on several channels: fd
// readiness"): an armed listener socket gets one datagram naming the channel when a send makes
// it readable, room is freed, or the channel closes; nothing is sent while nobody is armed; a
// listener that is gone costs one failed send and its slot is freed; forged masks and keys
// stay harmless; a listener in another process is woken by a sender in this one.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "core/channel.h"
#include "core/fd_wait.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

Status send_bytes(Channel& ch, uint64_t n = 8) {
  auto h = ch.allocate(n, PayloadLayout{}, WaitSpec::nonblocking());
  if (!h.ok()) return h.status;
  const Status s = ch.send(h.value, WaitSpec::nonblocking());
  if (s != Status::kOk) ch.arena()->release(h.value);
  return s;
}

void recv_one(Channel& ch) {
  auto h = ch.recv(WaitSpec::nonblocking());
  ASSERT_EQ(h.status, Status::kOk);
  ch.arena()->release(h.value);
}

std::unique_ptr<WaitSocket> listener() {
  auto s = WaitSocket::open();
  EXPECT_EQ(s.status, Status::kOk);
  return std::move(s.value);
}

int drained(WaitSocket& s, FdEvent* ev = nullptr) {
  FdEvent evs[16];
  bool more = false;
  const int n = s.drain(evs, 16, &more);
  if (ev != nullptr && n > 0) *ev = evs[0];
  return n;
}

template <typename Factory>
class FdWaitTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(FdWaitTest, BackendTypes, BackendNames);

TYPED_TEST(FdWaitTest, ArmedListenerGetsOneDatagramPerArming) {
  auto arena = this->make_arena(16 * kMiB);
  auto ch = this->make_channel(arena);
  auto sock = listener();
  auto slot = ch->fd_register(sock->key());
  ASSERT_EQ(slot.status, Status::kOk);
  ASSERT_EQ(send_bytes(*ch), Status::kOk);
  EXPECT_EQ(drained(*sock), 0);  // registered but not armed: nothing sent
  EXPECT_TRUE(ch->fd_arm(slot.value, FdKind::kReadable));  // a message is there already
  recv_one(*ch);
  EXPECT_EQ(drained(*sock), 0);
  ch->fd_disarm(slot.value, FdKind::kReadable);
  EXPECT_FALSE(ch->fd_arm(slot.value, FdKind::kReadable));
  ASSERT_EQ(send_bytes(*ch), Status::kOk);
  ASSERT_EQ(send_bytes(*ch), Status::kOk);  // one shot: the first send disarmed it
  FdEvent ev{};
  EXPECT_EQ(drained(*sock, &ev), 1);
  EXPECT_EQ(ev.arena_id, arena->arena_id());
  EXPECT_EQ(ev.offset, ch->offset());
  EXPECT_EQ(sock->wait(0), Status::kTimedOut);
  ch->fd_unregister(slot.value, sock->key());
}

TYPED_TEST(FdWaitTest, RoomAndCloseFireTheirMasks) {
  auto arena = this->make_arena(16 * kMiB);
  auto ch = this->make_channel(arena, /*maxsize=*/1);
  auto sock = listener();
  const int slot = ch->fd_register(sock->key()).value;
  ASSERT_EQ(send_bytes(*ch), Status::kOk);
  EXPECT_FALSE(ch->writable());
  EXPECT_FALSE(ch->fd_arm(slot, FdKind::kWritable));
  recv_one(*ch);  // frees room
  EXPECT_EQ(drained(*sock), 1);
  EXPECT_TRUE(ch->writable());
  EXPECT_FALSE(ch->fd_arm(slot, FdKind::kReadable));
  ch->close();
  EXPECT_EQ(drained(*sock), 1);
  EXPECT_TRUE(ch->readable());  // closed counts as ready
}

TYPED_TEST(FdWaitTest, GoneListenerCostsOneSendAndFreesItsSlot) {
  auto arena = this->make_arena(16 * kMiB);
  auto ch = this->make_channel(arena);
  int slot = -1;
  {
    auto gone = listener();
    slot = ch->fd_register(gone->key()).value;
    EXPECT_FALSE(ch->fd_arm(slot, FdKind::kReadable));
  }  // closed without unregistering, as a killed process leaves it
  ASSERT_EQ(send_bytes(*ch), Status::kOk);  // ECONNREFUSED: the slot is freed
  std::unique_ptr<WaitSocket> all[kFdSlots];
  for (auto& s : all) {
    s = listener();
    EXPECT_EQ(ch->fd_register(s->key()).status, Status::kOk);
  }
  auto one_more = listener();
  EXPECT_EQ(ch->fd_register(one_more->key()).status, Status::kFull);
  all[5].reset();  // an unarmed listener gone: reclaimed by the next registration
  EXPECT_EQ(ch->fd_register(one_more->key()).status, Status::kOk);
}

TYPED_TEST(FdWaitTest, ForgedMaskAndKeysAreHarmless) {
  auto arena = this->make_arena(16 * kMiB);
  auto ch = this->make_channel(arena);
  auto sock = listener();
  const int slot = ch->fd_register(sock->key()).value;
  // A peer sets every bit and writes keys nobody listens on into the other slots.
  auto* header = arena->template translate_as<ChannelHeader>(ch->offset());
  ASSERT_NE(header, nullptr);
  for (int i = 0; i < kFdSlots; ++i) {
    if (i != slot) header->fd_key(i).store(0x9e370000u + static_cast<uint32_t>(i));
  }
  header->fd_readers.store(~uint64_t{0});  // bits past kFdSlots too
  ASSERT_EQ(send_bytes(*ch), Status::kOk);  // sends to every slot; the forged ones fail
  EXPECT_EQ(drained(*sock), 1);             // the real listener looks once
  EXPECT_EQ(header->fd_readers.load(), 0u);
  for (int i = 0; i < kFdSlots; ++i) {
    if (i != slot) {
      EXPECT_EQ(header->fd_key(i).load(), 0u) << i;  // freed: no such socket
    }
  }
  ASSERT_EQ(send_bytes(*ch), Status::kOk);  // nothing armed any more: no sends
  EXPECT_EQ(drained(*sock), 0);
}

TEST(FdWaitShm, ListenerInAChildProcessIsWokenBySenderHere) {
  auto created = Arena::create(ShmFactory::make(), 16 * kMiB, 99);
  ASSERT_EQ(created.status, Status::kOk);
  auto arena = created.value;
  auto ch = Channel::create(arena, 0, 0, 1).value;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child shares the mapping: it registers, arms, tells the parent, and waits.
    auto s = WaitSocket::open();
    if (!s.ok()) _exit(2);
    const int slot = ch->fd_register(s.value->key()).value;
    if (ch->fd_arm(slot, FdKind::kReadable)) _exit(3);
    const char c = 'r';
    if (write(ready[1], &c, 1) != 1) _exit(4);
    if (s.value->wait(10'000'000'000) != Status::kOk) _exit(5);
    _exit(ch->readable() ? 0 : 6);
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(send_bytes(*ch), Status::kOk);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  close(ready[0]);
  close(ready[1]);
}

}  // namespace
}  // namespace memchannel::testing
