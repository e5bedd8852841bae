// Segment: creation never adopts, opening trusts nothing, space and truncation errors are
// errors and not SIGBUS (docs/reliability.md items 10 and 11).
#include "shm/segment.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/waiter.h"
#include "shm/cleanup.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

namespace memchannel::shm {
namespace {

constexpr uint64_t kPage = 4096;

std::string path_of(const std::string& name) { return std::string(kShmDirectory) + "/" + name; }

bool exists(const std::string& name) {
  struct stat st {};
  return ::lstat(path_of(name).c_str(), &st) == 0;
}

uint32_t mode_of_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return 0xffffffffu;
  return st.st_mode & 07777;
}

// Every test gets its own random prefix; TearDown checks the test removed what it made and
// sweeps anything a failed test left behind so nothing named memchannel-* outlives the suite.
class ShmSegment : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = random_test_prefix();
    ASSERT_TRUE(is_valid_prefix(prefix_));
  }

  void TearDown() override {
    const std::vector<std::string> left = list_segments(prefix_);
    for (const std::string& name : left) {
      ::unlink(path_of(name).c_str());
      ::rmdir(path_of(name).c_str());
    }
    if (!HasFailure()) {
      EXPECT_TRUE(left.empty()) << "test left " << left.size() << " segment(s)";
    }
  }

  std::string fresh_name() { return random_segment_name(prefix_); }

  std::string prefix_;
};

TEST_F(ShmSegment, CreateThenOpenShareTheSameZeroFilledBytes) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, 16 * kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  Segment& a = created.value;
  EXPECT_TRUE(a.valid());
  EXPECT_EQ(a.size(), 16 * kPage);
  EXPECT_EQ(a.name(), name);
  EXPECT_GE(a.fd(), 0);
  const std::vector<std::byte> zeros(a.size());
  EXPECT_EQ(std::memcmp(a.data(), zeros.data(), zeros.size()), 0);

  std::memcpy(a.data() + 5 * kPage, "hello", 5);
  Result<Segment> opened = Segment::open(name, 16 * kPage);
  ASSERT_TRUE(opened.ok()) << to_string(opened.status);
  Segment& b = opened.value;
  EXPECT_NE(b.data(), a.data());  // a second, independent mapping of the same pages
  EXPECT_EQ(std::memcmp(b.data() + 5 * kPage, "hello", 5), 0);
  std::memcpy(b.data(), "back", 4);
  EXPECT_EQ(std::memcmp(a.data(), "back", 4), 0);

  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmSegment, AnotherProcessOpensByNameAndSeesTheBytes) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  std::memcpy(created.value.data(), "ping", 4);

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Result<Segment> opened = Segment::open(name, kPage);
    if (!opened.ok()) ::_exit(2);
    if (std::memcmp(opened.value.data(), "ping", 4) != 0) ::_exit(3);
    std::memcpy(opened.value.data(), "pong", 4);
    ::_exit(0);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  EXPECT_EQ(std::memcmp(created.value.data(), "pong", 4), 0);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmSegment, CreateGivesMode0600WhateverTheUmask) {
  for (const mode_t mask : {mode_t{0}, mode_t{022}, mode_t{0177}, mode_t{0777}}) {
    SCOPED_TRACE(testing::Message() << "umask " << std::oct << mask);
    const std::string name = fresh_name();
    const mode_t old = ::umask(mask);
    Result<Segment> created = Segment::create(name, kPage);
    ::umask(old);
    ASSERT_TRUE(created.ok()) << to_string(created.status);
    EXPECT_EQ(mode_of_fd(created.value.fd()), 0600u);
    struct stat st {};
    ASSERT_EQ(::stat(path_of(name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(st.st_uid, ::geteuid());
    EXPECT_TRUE(Segment::unlink(name).ok());
  }
}

// Even a file that looks exactly like one of ours (same owner, mode 0600) is never adopted:
// whoever put it there may hold it open and read everything we would write.
TEST_F(ShmSegment, CreateOverAPreexistingFileFailsAndLeavesItUntouched) {
  const std::string name = fresh_name();
  const int fd = ::open(path_of(name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "not yours", 9), 9);
  struct stat before {};
  ASSERT_EQ(::fstat(fd, &before), 0);

  Result<Segment> created = Segment::create(name, 64 * kPage);
  EXPECT_EQ(created.status, Status::kAlreadyExists);
  EXPECT_EQ(created.sys_errno, EEXIST);
  EXPECT_FALSE(created.value.valid());

  struct stat after {};
  ASSERT_EQ(::stat(path_of(name).c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_EQ(after.st_size, 9);
  EXPECT_EQ(after.st_mode & 07777, 0600u);
  char content[16] = {};
  ASSERT_EQ(::pread(fd, content, sizeof content, 0), 9);
  EXPECT_EQ(std::string(content, 9), "not yours");
  ::close(fd);
  ASSERT_EQ(::unlink(path_of(name).c_str()), 0);
}

// O_EXCL never follows a symlink, dangling or not: the link's target is not created.
TEST_F(ShmSegment, CreateOverASymlinkFailsAndDoesNotCreateItsTarget) {
  const std::string name = fresh_name();
  const std::string target = fresh_name();
  ASSERT_EQ(::symlink(path_of(target).c_str(), path_of(name).c_str()), 0);

  Result<Segment> created = Segment::create(name, kPage);
  EXPECT_EQ(created.status, Status::kAlreadyExists);
  EXPECT_FALSE(exists(target));
  ASSERT_EQ(::unlink(path_of(name).c_str()), 0);
}

TEST_F(ShmSegment, OpenRefusesAnyModeButExactly0600) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  for (const mode_t mode : {mode_t{0644}, mode_t{0660}, mode_t{0606}, mode_t{0700}, mode_t{01600}}) {
    SCOPED_TRACE(testing::Message() << "mode " << std::oct << mode);
    ASSERT_EQ(::fchmod(created.value.fd(), mode), 0);
    Result<Segment> opened = Segment::open(name);
    EXPECT_EQ(opened.status, Status::kWrongMode);
    EXPECT_FALSE(opened.value.valid());
  }
  // Without owner write the kernel refuses O_RDWR first, except for root, who gets past it
  // and must then be stopped by the mode check.
  ASSERT_EQ(::fchmod(created.value.fd(), 0400), 0);
  const Status read_only = Segment::open(name).status;
  EXPECT_TRUE(read_only == Status::kWrongMode || read_only == Status::kPermissionDenied)
      << to_string(read_only);
  if (::geteuid() == 0) {
    EXPECT_EQ(read_only, Status::kWrongMode);
  }
  ASSERT_EQ(::fchmod(created.value.fd(), 0600), 0);
  EXPECT_TRUE(Segment::open(name).ok());
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmSegment, OpenRefusesASegmentOwnedByAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  ASSERT_EQ(::fchown(created.value.fd(), 65534, 65534), 0);
  Result<Segment> opened = Segment::open(name);
  EXPECT_EQ(opened.status, Status::kWrongOwner);
  EXPECT_FALSE(opened.value.valid());
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// Teardown and cleanup remove through unlink_if_owned: another user's file, a file of another
// mode, a symlink or a FIFO at the name is left where it is (docs/shm.md, "Threat model").
TEST_F(ShmSegment, UnlinkIfOwnedRemovesOnlyThisUsersRegular0600Files) {
  const std::string mine = fresh_name();
  ASSERT_TRUE(Segment::create(mine, kPage).ok());
  EXPECT_TRUE(Segment::unlink_if_owned(mine).ok());
  EXPECT_EQ(::access(path_of(mine).c_str(), F_OK), -1) << "our own segment was not removed";

  const std::string wide = fresh_name();
  {
    Result<Segment> created = Segment::create(wide, kPage);
    ASSERT_TRUE(created.ok());
    ASSERT_EQ(::fchmod(created.value.fd(), 0644), 0);
  }
  EXPECT_EQ(Segment::unlink_if_owned(wide).status, Status::kWrongMode);
  EXPECT_EQ(::access(path_of(wide).c_str(), F_OK), 0);
  EXPECT_TRUE(Segment::unlink(wide).ok());

  const std::string link = fresh_name();
  ASSERT_EQ(::symlink("/etc/hostname", path_of(link).c_str()), 0);
  EXPECT_EQ(Segment::unlink_if_owned(link).status, Status::kNotRegularFile);
  EXPECT_EQ(::unlink(path_of(link).c_str()), 0) << "the symlink was removed";

  const std::string fifo = fresh_name();
  ASSERT_EQ(::mkfifo(path_of(fifo).c_str(), 0600), 0);
  EXPECT_EQ(Segment::unlink_if_owned(fifo).status, Status::kNotRegularFile);
  EXPECT_EQ(::unlink(path_of(fifo).c_str()), 0);

  if (::geteuid() == 0) {
    const std::string theirs = fresh_name();
    {
      Result<Segment> created = Segment::create(theirs, kPage);
      ASSERT_TRUE(created.ok());
      ASSERT_EQ(::fchown(created.value.fd(), 65534, 65534), 0);
    }
    EXPECT_EQ(Segment::unlink_if_owned(theirs).status, Status::kWrongOwner) << "root removed another user's file";
    EXPECT_EQ(::access(path_of(theirs).c_str(), F_OK), 0);
    EXPECT_TRUE(Segment::unlink(theirs).ok());
  }
}

TEST_F(ShmSegment, OpenRefusesTheWrongSize) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, 16 * kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);

  EXPECT_EQ(Segment::open(name, 32 * kPage).status, Status::kTruncated);
  EXPECT_EQ(Segment::open(name, 8 * kPage).status, Status::kSizeMismatch);
  EXPECT_EQ(Segment::open(name, 0, 17 * kPage).status, Status::kTooSmall);
  EXPECT_TRUE(Segment::open(name, 16 * kPage).ok());
  Result<Segment> any_size = Segment::open(name, 0, 16 * kPage);
  ASSERT_TRUE(any_size.ok());
  EXPECT_EQ(any_size.value.size(), 16 * kPage);  // maps what fstat says, no more
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// What a creator that died between shm_open and ftruncate leaves behind.
TEST_F(ShmSegment, OpenRefusesAnUnsizedSegment) {
  const std::string name = fresh_name();
  const int fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fchmod(fd, 0600), 0);
  ::close(fd);
  Result<Segment> opened = Segment::open(name);
  EXPECT_EQ(opened.status, Status::kTooSmall);
  EXPECT_FALSE(opened.value.valid());
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmSegment, OpenRefusesAMissingName) {
  const std::string name = fresh_name();
  Result<Segment> opened = Segment::open(name);
  EXPECT_EQ(opened.status, Status::kNotFound);
  EXPECT_EQ(opened.sys_errno, ENOENT);
  EXPECT_EQ(Segment::unlink(name).status, Status::kNotFound);
}

TEST_F(ShmSegment, OpenRefusesSymlinksFifosAndDirectories) {
  const std::string real = fresh_name();
  Result<Segment> created = Segment::create(real, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);

  const std::string link = fresh_name();
  ASSERT_EQ(::symlink(path_of(real).c_str(), path_of(link).c_str()), 0);
  EXPECT_EQ(Segment::open(link).status, Status::kNotRegularFile);

  const std::string fifo = fresh_name();
  ASSERT_EQ(::mkfifo(path_of(fifo).c_str(), 0600), 0);
  EXPECT_EQ(Segment::open(fifo).status, Status::kNotRegularFile);

  const std::string dir = fresh_name();
  ASSERT_EQ(::mkdir(path_of(dir).c_str(), 0700), 0);
  EXPECT_EQ(Segment::open(dir).status, Status::kNotRegularFile);

  EXPECT_EQ(::unlink(path_of(link).c_str()), 0);
  EXPECT_EQ(::unlink(path_of(fifo).c_str()), 0);
  EXPECT_EQ(::rmdir(path_of(dir).c_str()), 0);
  EXPECT_TRUE(Segment::unlink(real).ok());
}

TEST_F(ShmSegment, InvalidNamesAndSizesAreRefusedBeforeTouchingTheFilesystem) {
  EXPECT_EQ(Segment::create("", kPage).status, Status::kInvalidName);
  EXPECT_EQ(Segment::create("other-0123", kPage).status, Status::kInvalidName);
  EXPECT_EQ(Segment::create("memchannel-a/../b", kPage).status, Status::kInvalidName);
  EXPECT_EQ(Segment::open("/memchannel-abc").status, Status::kInvalidName);
  EXPECT_EQ(Segment::unlink("..").status, Status::kInvalidName);

  const std::string name = fresh_name();
  EXPECT_EQ(Segment::create(name, 0).status, Status::kInvalidArgument);
  EXPECT_EQ(Segment::create(name, kMaxSegmentBytesOs + 1).status, Status::kInvalidArgument);
  EXPECT_FALSE(exists(name));
}

// tmpfs checks a fallocate request against its total size before allocating anything, so a
// request above the total fails at once. A request between free and total space would make
// the kernel allocate (real memory) up to the limit first: the test asks for more than the
// total, which is also more than is free.
TEST_F(ShmSegment, SegmentLargerThanFreeShmSpaceFailsWithNoSpaceAndLeavesNoFile) {
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(std::string(kShmDirectory).c_str(), &vfs), 0);
  if (vfs.f_blocks == 0) GTEST_SKIP() << "/dev/shm has no size limit";
  const uint64_t total = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  const uint64_t request = total + (64ull << 20);
  ASSERT_GT(request, free_bytes);
  if (request > kMaxSegmentBytesOs) GTEST_SKIP() << "/dev/shm is larger than any segment";

  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, request);
  EXPECT_EQ(created.status, Status::kNoSpace) << to_string(created.status);
  EXPECT_EQ(created.sys_errno, ENOSPC);
  EXPECT_FALSE(created.value.valid());
  EXPECT_FALSE(exists(name));
}

TEST_F(ShmSegment, TruncationByAPeerIsDetected) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, 64 * kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  Result<Segment> reader = Segment::open(name, 64 * kPage);
  ASSERT_TRUE(reader.ok()) << to_string(reader.status);
  EXPECT_TRUE(reader.value.still_valid());

  // The peer: its own descriptor, as another process would have.
  const int peer = ::open(path_of(name).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(peer, 0);
  ASSERT_EQ(::ftruncate(peer, static_cast<off_t>(128 * kPage)), 0);
  EXPECT_TRUE(reader.value.still_valid()) << "growing the file must not invalidate mappings";

  ASSERT_EQ(::ftruncate(peer, static_cast<off_t>(kPage)), 0);
  EXPECT_FALSE(reader.value.still_valid());
  EXPECT_EQ(reader.value.check().status, Status::kTruncated);
  EXPECT_EQ(created.value.check().status, Status::kTruncated);
  // A late opener is refused outright instead of mapping past the end.
  EXPECT_EQ(Segment::open(name, 64 * kPage).status, Status::kTruncated);
  ::close(peer);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// ---- Truncation after mapping: the SIGBUS guard (docs/reliability.md item 10) ----

// Runs `body` in a forked child and returns its wait status. The child's exit code is what
// `body` returns; a child killed by a signal shows as WIFSIGNALED. Keeps a SIGBUS that the
// guard failed to absorb from taking the whole test program down.
int run_in_child(const std::function<int()>& body) {
  const pid_t child = ::fork();
  if (child < 0) return -1;
  if (child == 0) ::_exit(body());
  int wstatus = 0;
  if (::waitpid(child, &wstatus, 0) != child) return -1;
  return wstatus;
}

std::string describe(int wstatus) {
  if (wstatus == -1) return "fork/wait failed";
  if (WIFSIGNALED(wstatus)) return "killed by signal " + std::to_string(WTERMSIG(wstatus)) + " (" + strsignal(WTERMSIG(wstatus)) + ")";
  return "exit code " + std::to_string(WEXITSTATUS(wstatus));
}

uint8_t read_byte(const std::byte* p) { return static_cast<uint8_t>(*static_cast<const volatile std::byte*>(p)); }
void write_byte(std::byte* p, uint8_t v) { *static_cast<volatile std::byte*>(p) = std::byte{v}; }

// What an unguarded mapping does when its file shrinks: dies of SIGBUS on the next touch past
// the end (the default action), or of the sanitizer's report of that SIGBUS.
bool died_of_sigbus(int wstatus) {
  return (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGBUS) || (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0);
}

TEST_F(ShmSegment, TruncationAfterMappingIsAbsorbedAndReportedNotSigbus) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, 64 * kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  Result<Segment> reader = Segment::open(name, 64 * kPage);
  ASSERT_TRUE(reader.ok()) << to_string(reader.status);
  ASSERT_TRUE(sigbus_guard_installed());
  ASSERT_TRUE(reader.value.guarded());
  ASSERT_TRUE(created.value.guarded());
  write_byte(created.value.data() + 40 * kPage, 0x5a);
  ASSERT_EQ(read_byte(reader.value.data() + 40 * kPage), 0x5a);

  // The peer: its own descriptor, as another process would have; keeps 4 pages.
  const int peer = ::open(path_of(name).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(peer, 0);
  ASSERT_EQ(::ftruncate(peer, static_cast<off_t>(4 * kPage)), 0);

  Segment& r = reader.value;
  Segment& c = created.value;
  const int wstatus = run_in_child([&] {
    const uint64_t before = sigbus_faults_absorbed();
    if (read_byte(r.data() + 40 * kPage) != 0) return 10;     // the lost tail reads as zeros
    write_byte(r.data() + 63 * kPage + 100, 7);               // and takes writes (privately)
    if (read_byte(r.data() + 63 * kPage + 100) != 7) return 11;
    if (read_byte(r.data() + 5 * kPage) != 0) return 12;      // one fault covered the whole tail
    if (r.truncation_faults() != 1) return 13;
    if (r.check().status != Status::kTruncated) return 14;
    write_byte(c.data() + 50 * kPage, 1);                     // the creator's mapping too
    if (c.truncation_faults() != 1 || c.check().status != Status::kTruncated) return 15;
    write_byte(c.data() + 2 * kPage, 9);                      // what the file still holds stays shared
    if (read_byte(r.data() + 2 * kPage) != 9) return 16;
    if (sigbus_faults_absorbed() != before + 2) return 17;
    // The file grows back: the replaced pages stay private, and check() keeps saying so.
    if (::ftruncate(peer, static_cast<off_t>(64 * kPage)) != 0) return 18;
    if (r.check().status != Status::kTruncated) return 19;
    return 0;
  });
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << describe(wstatus);
  ::close(peer);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmSegment, ManyThreadsFaultingOnTheLostTailAllSurvive) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, 256 * kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  const int peer = ::open(path_of(name).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(peer, 0);
  ASSERT_EQ(::ftruncate(peer, 0), 0);
  Segment& c = created.value;
  const int wstatus = run_in_child([&] {
    std::vector<std::thread> threads;
    std::atomic<int> bad{0};
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (uint64_t p = static_cast<uint64_t>(t); p < 256; p += 4) {
          if (read_byte(c.data() + p * kPage) != 0) bad.fetch_add(1);
          write_byte(c.data() + p * kPage + 1, 1);
        }
      });
    }
    for (std::thread& th : threads) th.join();
    return bad.load() == 0 && c.check().status == Status::kTruncated ? 0 : 20;
  });
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << describe(wstatus);
  ::close(peer);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// The guard only answers for memchannel segments: any other SIGBUS keeps its usual outcome.
TEST_F(ShmSegment, SigbusGuardLeavesOtherMappingsAndSentSignalsAlone) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);  // the guard is installed by now
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  ASSERT_TRUE(sigbus_guard_installed());

  const int foreign = run_in_child([] {
    const int fd = ::memfd_create("not-a-segment", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(2 * kPage)) != 0) return 30;
    void* p = ::mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED || ::ftruncate(fd, 0) != 0) return 31;
    (void)read_byte(static_cast<std::byte*>(p) + kPage);  // must die here
    return 0;
  });
  EXPECT_TRUE(died_of_sigbus(foreign)) << describe(foreign);

  const int sent = run_in_child([] {
    ::raise(SIGBUS);  // kill -BUS: not a fault in a segment
    return 0;
  });
  EXPECT_TRUE(died_of_sigbus(sent)) << describe(sent);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// A handler installed before the guard (Python's faulthandler under pytest, an application's
// own) still gets every SIGBUS the guard does not absorb. Needs a process in which the guard
// is not installed yet: the test re-executes this program for that part.
void chain_probe_handler(int, siginfo_t* info, void*) {
  ::_exit(info != nullptr && info->si_code == BUS_ADRERR ? 42 : 43);
}

TEST(ShmSigbusGuard, ChainsToTheHandlerInstalledBeforeIt) {
  if (const char* mode = std::getenv("MEMCHANNEL_TEST_SIGBUS_CHILD"); mode != nullptr) {
    // The re-executed child: our handler first, then the guard, then both kinds of fault.
    ASSERT_FALSE(sigbus_guard_installed());
    struct sigaction sa {};
    sa.sa_sigaction = chain_probe_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ASSERT_EQ(::sigaction(SIGBUS, &sa, nullptr), 0);
    const std::string name = random_segment_name(random_test_prefix());
    Result<Segment> seg = Segment::create(name, 8 * kPage);
    ASSERT_TRUE(seg.ok());
    ASSERT_TRUE(sigbus_guard_installed());
    ASSERT_EQ(::ftruncate(seg.value.fd(), static_cast<off_t>(kPage)), 0);
    Segment::unlink(name);
    if (read_byte(seg.value.data() + 5 * kPage) != 0) ::_exit(44);  // absorbed by the guard
    const int fd = ::memfd_create("not-a-segment", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(2 * kPage)), 0);
    void* p = ::mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ASSERT_NE(p, MAP_FAILED);
    ASSERT_EQ(::ftruncate(fd, 0), 0);
    (void)read_byte(static_cast<std::byte*>(p) + kPage);  // chained: our handler exits 42
    ::_exit(45);
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("MEMCHANNEL_TEST_SIGBUS_CHILD", "1", 1);
    char filter[] = "--gtest_filter=ShmSigbusGuard.ChainsToTheHandlerInstalledBeforeIt";
    char self[] = "/proc/self/exe";
    char* argv[] = {self, filter, nullptr};
    ::execv(self, argv);
    ::_exit(127);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 42)
      << describe(wstatus) << " (42: chained to the earlier handler; 44: guard did not zero "
      << "the lost tail; 45: foreign fault swallowed)";
}

// ---- Truncation seen through the arena's shared-memory backend ----

// A lazily mapped segment that a peer truncated before this process maps it is refused.
TEST_F(ShmSegment, BackendRefusesASegmentTruncatedBeforeItIsMapped) {
  auto creator = ShmBackend::for_new_arena(prefix_);
  auto made = creator->create_segment(1, 32 * kPage);
  ASSERT_EQ(made.status, memchannel::Status::kOk);
  ASSERT_EQ(::truncate(path_of(creator->segment_name(1)).c_str(), static_cast<off_t>(8 * kPage)), 0);

  auto peer = ShmBackend::for_existing(creator->base_name());
  auto mapped = peer->map_segment(1, 32 * kPage);
  EXPECT_EQ(mapped.status, memchannel::Status::kCorruptedLength);
  EXPECT_EQ(mapped.value, nullptr);
  EXPECT_EQ(peer->last_shm_status(), Status::kTruncated);
  EXPECT_EQ(creator->check_segments().status, Status::kTruncated);
  creator->remove_segments(1);
}

// An arena whose segment 0 a peer truncated is refused at attach, below or above its header.
TEST_F(ShmSegment, AttachRefusesATruncatedArena) {
  auto created = Arena::create(ShmBackend::for_new_arena(prefix_), 1 << 20, 1);
  ASSERT_EQ(created.status, memchannel::Status::kOk);
  auto* backend = static_cast<ShmBackend*>(&created.value->backend());
  const std::string base = backend->base_name();

  ASSERT_EQ(::truncate(path_of(base).c_str(), static_cast<off_t>(sizeof(ArenaHeader) + kPage)), 0);
  Result<uint64_t> probe = ShmBackend::probe(base);
  ASSERT_TRUE(probe.ok());
  auto attached = Arena::attach(ShmBackend::for_existing(base), probe.value);
  EXPECT_NE(attached.status, memchannel::Status::kOk);  // the header's segment size disagrees
  EXPECT_EQ(attached.value, nullptr);

  ASSERT_EQ(::truncate(path_of(base).c_str(), static_cast<off_t>(kPage)), 0);
  EXPECT_EQ(ShmBackend::probe(base).status, Status::kTooSmall);
  EXPECT_EQ(backend->check_segments().status, Status::kTruncated);
  // The creator's arena is still usable in its header; its destructor removes the segments.
  ASSERT_EQ(::truncate(path_of(base).c_str(), static_cast<off_t>(1 << 20)), 0);
}

// The whole data path over a segment 0 that a peer cut down to what was carved after it was mapped:
// no SIGBUS, and the backend reports the truncation.
TEST_F(ShmSegment, ArenaTrafficOverATruncatedSegmentDoesNotSigbus) {
  auto created = Arena::create(ShmBackend::for_new_arena(prefix_), 1 << 20, 1);
  ASSERT_EQ(created.status, memchannel::Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto* backend = static_cast<ShmBackend*>(&arena->backend());
  auto ch = Channel::create(arena, 0, 0, 1);
  ASSERT_EQ(ch.status, memchannel::Status::kOk);
  // Keep what is carved so far (header, channel); lose the rest of the segment.
  const uint64_t keep = (arena->stats().carved_bytes + kPage - 1) / kPage * kPage;
  ASSERT_LT(keep, 1u << 20);
  ASSERT_EQ(::truncate(path_of(backend->base_name()).c_str(), static_cast<off_t>(keep)), 0);

  Channel& c = *ch.value;
  const int wstatus = run_in_child([&] {
    for (int i = 0; i < 50; ++i) {
      auto h = c.allocate(3000, PayloadLayout{}, WaitSpec::nonblocking());
      if (!h.ok()) continue;  // a typed error is fine; a signal is not
      uint64_t len = 0;
      if (uint8_t* p = arena->payload(h.value, &len)) std::memset(p, 0x11, len);
      if (c.send(h.value, WaitSpec::nonblocking()) != memchannel::Status::kOk) arena->release(h.value);
      auto got = c.recv(WaitSpec::nonblocking());
      if (got.ok()) arena->release(got.value);
    }
    (void)arena->census();
    return backend->check_segments().status == Status::kTruncated ? 0 : 50;
  });
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << describe(wstatus);
  ASSERT_EQ(::truncate(path_of(backend->base_name()).c_str(), static_cast<off_t>(1 << 20)), 0);
}

// The sentinel tail (core/backend.h) zeroed by a peer while the file is whole: a forgery, put
// back and counted; the arena goes on (a truncation would have shrunk the file or lost pages).
TEST_F(ShmSegment, ForgedSentinelIsRestoredNotTakenForATruncation) {
  auto created = Arena::create(ShmBackend::for_new_arena(prefix_), 1 << 20, 1);
  ASSERT_EQ(created.status, memchannel::Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  auto* backend = static_cast<ShmBackend*>(&arena->backend());
  auto ch = Channel::create(arena, 0, 0, 1);
  ASSERT_EQ(ch.status, memchannel::Status::kOk);
  const int fd = ::open(path_of(backend->base_name()).c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const uint64_t zero = 0;
  ASSERT_EQ(::pwrite(fd, &zero, sizeof zero, 1 << 20), static_cast<ssize_t>(sizeof zero));
  const uint64_t before = arena->counters().corruption_count;
  auto h = ch.value->allocate(64, PayloadLayout{}, WaitSpec::nonblocking());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(ch.value->send(h.value, WaitSpec::nonblocking()), memchannel::Status::kOk);
  EXPECT_FALSE(arena->truncated());
  EXPECT_GT(arena->counters().corruption_count, before);
  uint64_t word = 0;
  ASSERT_EQ(::pread(fd, &word, sizeof word, 1 << 20), static_cast<ssize_t>(sizeof word));
  EXPECT_EQ(word, kSegmentSentinel);
  ::close(fd);
  auto got = ch.value->recv(WaitSpec::nonblocking());
  ASSERT_TRUE(got.ok());
  arena->release(got.value);
}

// Cutting only the last page of segment 0 (its sentinel tail; every byte the arena uses is
// still there) fails the very next send and recv, without waiting for a sweep, and counts the
// queued messages lost, exactly.
TEST_F(ShmSegment, CutSentinelFailsTheNextSendAndRecvAndCountsTheQueued) {
  auto created = Arena::create(ShmBackend::for_new_arena(prefix_), 1 << 20, 1);
  ASSERT_EQ(created.status, memchannel::Status::kOk);
  std::shared_ptr<Arena> arena = created.value;
  arena->set_sweep_interval(-1);  // no sweep: the data path alone must see it
  auto* backend = static_cast<ShmBackend*>(&arena->backend());
  auto ch = Channel::create(arena, 0, 0, 1);
  ASSERT_EQ(ch.status, memchannel::Status::kOk);
  Channel& c = *ch.value;
  for (int i = 0; i < 3; ++i) {
    auto h = c.allocate(64, PayloadLayout{}, WaitSpec::nonblocking());
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(c.send(h.value, WaitSpec::nonblocking()), memchannel::Status::kOk);
  }
  auto spare = c.allocate(64, PayloadLayout{}, WaitSpec::nonblocking());
  ASSERT_TRUE(spare.ok());
  ASSERT_EQ(::truncate(path_of(backend->base_name()).c_str(), static_cast<off_t>(1 << 20)), 0);
  const int wstatus = run_in_child([&] {
    if (c.send(spare.value, WaitSpec::nonblocking()) != memchannel::Status::kCorruptedLength) return 1;
    if (c.recv(WaitSpec::nonblocking()).status != memchannel::Status::kCorruptedLength) return 2;
    if (!arena->truncated()) return 3;
    if (c.stats().messages_lost != 3) return 4;
    return 0;
  });
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << describe(wstatus);
  ASSERT_EQ(::truncate(path_of(backend->base_name()).c_str(), static_cast<off_t>((1 << 20) + kSegmentTailBytes)), 0);
}

TEST_F(ShmSegment, MovesTransferTheMappingAndReleaseTheOldOne) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  std::byte* const data = created.value.data();
  const int fd = created.value.fd();

  Segment moved(std::move(created.value));
  EXPECT_FALSE(created.value.valid());
  EXPECT_EQ(created.value.data(), nullptr);
  EXPECT_EQ(created.value.size(), 0u);
  EXPECT_EQ(created.value.fd(), -1);
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(moved.fd(), fd);
  EXPECT_EQ(moved.name(), name);

  const std::string other_name = fresh_name();
  Result<Segment> other = Segment::create(other_name, kPage);
  ASSERT_TRUE(other.ok()) << to_string(other.status);
  const int other_fd = other.value.fd();
  other.value = std::move(moved);
  EXPECT_EQ(other.value.data(), data);
  EXPECT_EQ(other.value.name(), name);
  errno = 0;
  EXPECT_EQ(::fcntl(other_fd, F_GETFD), -1) << "the replaced segment's descriptor is still open";
  EXPECT_EQ(errno, EBADF);
  std::memcpy(other.value.data(), "still mapped", 12);

  EXPECT_TRUE(Segment::unlink(name).ok());
  EXPECT_TRUE(Segment::unlink(other_name).ok());
}

TEST_F(ShmSegment, UnlinkRemovesTheNameButNotExistingMappings) {
  const std::string name = fresh_name();
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  ASSERT_TRUE(Segment::unlink(name).ok());
  EXPECT_FALSE(exists(name));
  EXPECT_EQ(Segment::open(name).status, Status::kNotFound);
  std::memcpy(created.value.data(), "usable", 6);
  EXPECT_EQ(std::memcmp(created.value.data(), "usable", 6), 0);
  EXPECT_TRUE(created.value.still_valid());
  EXPECT_EQ(Segment::unlink(name).status, Status::kNotFound);
}

// Resident pages of the mapping at `addr`, from /proc/self/smaps ("Rss:" counts pages this
// process has in its page tables, which is what MAP_POPULATE fills).
uint64_t rss_kib_of_mapping(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_mapping = false;
  const auto start = reinterpret_cast<uintptr_t>(addr);
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0;
    uintptr_t hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      in_mapping = lo == start;
      continue;
    }
    if (in_mapping && line.starts_with("Rss:")) {
      return std::stoull(line.substr(4));
    }
  }
  return ~0ull;
}

TEST_F(ShmSegment, PrefaultPopulatesThePageTables) {
  const uint64_t bytes = 64 * kPage;
  const std::string lazy_name = fresh_name();
  Result<Segment> lazy = Segment::create(lazy_name, bytes, Prefault::kNo);
  ASSERT_TRUE(lazy.ok()) << to_string(lazy.status);
  EXPECT_EQ(rss_kib_of_mapping(lazy.value.data()), 0u);

  const std::string eager_name = fresh_name();
  Result<Segment> eager = Segment::create(eager_name, bytes, Prefault::kYes);
  ASSERT_TRUE(eager.ok()) << to_string(eager.status);
  EXPECT_EQ(rss_kib_of_mapping(eager.value.data()), bytes / 1024);

  Result<Segment> eager_open = Segment::open(eager_name, bytes, 1, Prefault::kYes);
  ASSERT_TRUE(eager_open.ok()) << to_string(eager_open.status);
  EXPECT_EQ(rss_kib_of_mapping(eager_open.value.data()), bytes / 1024);

  EXPECT_TRUE(Segment::unlink(lazy_name).ok());
  EXPECT_TRUE(Segment::unlink(eager_name).ok());
}

TEST(ShmStatus, EveryStatusHasItsOwnMessage) {
  std::set<std::string> messages;
  const auto last = static_cast<uint32_t>(Status::kSystemError);
  for (uint32_t s = 0; s <= last; ++s) {
    const char* text = to_string(static_cast<Status>(s));
    ASSERT_NE(text, nullptr);
    EXPECT_GT(std::strlen(text), 0u);
    messages.insert(text);
  }
  EXPECT_EQ(messages.size(), last + 1);
  EXPECT_EQ(status_from_errno(EEXIST), Status::kAlreadyExists);
  EXPECT_EQ(status_from_errno(ENOENT), Status::kNotFound);
  EXPECT_EQ(status_from_errno(ELOOP), Status::kNotRegularFile);
  EXPECT_EQ(status_from_errno(ENOSPC), Status::kNoSpace);
  EXPECT_EQ(status_from_errno(EIO), Status::kSystemError);
}

}  // namespace
}  // namespace memchannel::shm
