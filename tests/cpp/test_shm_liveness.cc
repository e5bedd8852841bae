// Liveness by pid plus start time: a reused pid is not mistaken for the dead owner
// (docs/reliability.md item 4).
#include "shm/liveness.h"
#include "shm/names.h"
#include "shm/segment.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

namespace memchannel::shm {
namespace {

// A forked child that reports its own identity through a pipe and then either exits or
// waits until the parent closes `release_`.
class Child {
 public:
  enum class Then { kExit, kWaitForRelease };

  // `comm`, if not empty, becomes the child's command name (prctl PR_SET_NAME) first.
  explicit Child(Then then, const char* comm = nullptr) {
    int report[2];
    int release[2];
    if (::pipe(report) != 0 || ::pipe(release) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(report[0]);
      ::close(release[1]);
      if (comm != nullptr) ::prctl(PR_SET_NAME, comm, 0, 0, 0);
      const ProcessIdentity id = self_identity();
      if (::write(report[1], &id, sizeof id) != static_cast<ssize_t>(sizeof id)) ::_exit(2);
      if (then == Then::kWaitForRelease) {
        char byte = 0;
        while (::read(release[0], &byte, 1) < 0 && errno == EINTR) {
        }
      }
      ::_exit(0);
    }
    ::close(report[1]);
    ::close(release[0]);
    release_ = release[1];
    if (pid_ > 0) {
      // Read into raw bytes: GCC 12 misjudges the size of a member passed to read().
      std::array<std::byte, sizeof(ProcessIdentity)> bytes{};
      ssize_t got = 0;
      do {
        got = ::read(report[0], bytes.data(), bytes.size());
      } while (got < 0 && errno == EINTR);
      reported_ok_ = got == static_cast<ssize_t>(bytes.size());
      std::memcpy(&reported_, bytes.data(), bytes.size());
    }
    ::close(report[0]);
  }

  ~Child() {
    release();
    reap();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0 && reported_ok_; }
  pid_t pid() const { return pid_; }
  const ProcessIdentity& reported() const { return reported_; }

  void release() {
    if (release_ >= 0) ::close(release_);
    release_ = -1;
  }
  // Blocks until the child has exited but leaves it a zombie (not reaped).
  bool wait_exited_unreaped() {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT) == 0;
  }
  bool reap() {
    if (pid_ <= 0) return false;
    int wstatus = 0;
    const bool ok = ::waitpid(pid_, &wstatus, 0) == pid_ && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    pid_ = -1;
    return ok;
  }

 private:
  pid_t pid_ = -1;
  int release_ = -1;
  ProcessIdentity reported_{};
  bool reported_ok_ = false;
};

TEST(ShmLiveness, SelfIsAlive) {
  const ProcessIdentity self = self_identity();
  EXPECT_EQ(self.pid, static_cast<uint32_t>(::getpid()));
  EXPECT_EQ(self.reserved, 0u);
  EXPECT_NE(self.start_time, 0u);
  EXPECT_EQ(check_alive(self), Liveness::kAlive);
  const Result<ProcessIdentity> looked_up = identity_of(self.pid);
  ASSERT_TRUE(looked_up.ok());
  EXPECT_EQ(looked_up.value, self);
}

TEST(ShmLiveness, RightPidWithWrongStartTimeIsDead) {
  ProcessIdentity reused = self_identity();
  ASSERT_NE(reused.start_time, 0u);
  reused.start_time += 1;
  EXPECT_EQ(check_alive(reused), Liveness::kDead);
  reused.start_time -= 2;
  EXPECT_EQ(check_alive(reused), Liveness::kDead);
}

// Without a start time the pid alone cannot prove anything: never report kAlive for it.
TEST(ShmLiveness, IdentityWithoutStartTimeIsUnknown) {
  const ProcessIdentity bare{static_cast<uint32_t>(::getpid()), 0, 0};
  EXPECT_EQ(check_alive(bare), Liveness::kUnknown);
}

TEST(ShmLiveness, PidsThatCannotExistAreDead) {
  uint32_t pid_max = 4194304;  // PID_MAX_LIMIT on 64-bit; the real value is read below
  std::ifstream("/proc/sys/kernel/pid_max") >> pid_max;
  const uint64_t start = 1;  // any non-zero start time: the pid alone decides here
  EXPECT_EQ(check_alive({0, 0, start}), Liveness::kDead);
  EXPECT_EQ(check_alive({pid_max + 1, 0, start}), Liveness::kDead);
  EXPECT_EQ(check_alive({static_cast<uint32_t>(INT_MAX) + 1u, 0, start}), Liveness::kDead);
  EXPECT_EQ(check_alive({UINT32_MAX, 0, start}), Liveness::kDead);
  EXPECT_EQ(identity_of(pid_max + 1).status, Status::kNotFound);
  EXPECT_EQ(identity_of(0).status, Status::kNotFound);
}

TEST(ShmLiveness, RunningChildIsAlive) {
  Child child(Child::Then::kWaitForRelease);
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.reported().pid, static_cast<uint32_t>(child.pid()));
  EXPECT_EQ(check_alive(child.reported()), Liveness::kAlive);
  const Result<ProcessIdentity> looked_up = identity_of(static_cast<uint32_t>(child.pid()));
  ASSERT_TRUE(looked_up.ok());
  EXPECT_EQ(looked_up.value, child.reported());
  child.release();
  EXPECT_TRUE(child.reap());
}

TEST(ShmLiveness, ExitedAndReapedChildIsDead) {
  Child child(Child::Then::kExit);
  ASSERT_TRUE(child.started());
  const ProcessIdentity id = child.reported();
  const auto pid = static_cast<uint32_t>(child.pid());
  ASSERT_TRUE(child.reap());
  EXPECT_EQ(check_alive(id), Liveness::kDead);
  EXPECT_EQ(identity_of(pid).status, Status::kNotFound);
}

// A zombie still has its /proc entry and its start time, but it will never run again.
TEST(ShmLiveness, ExitedButUnreapedChildIsDead) {
  Child child(Child::Then::kExit);
  ASSERT_TRUE(child.started());
  ASSERT_TRUE(child.wait_exited_unreaped());
  EXPECT_EQ(check_alive(child.reported()), Liveness::kDead);
  EXPECT_EQ(identity_of(static_cast<uint32_t>(child.pid())).status, Status::kNotFound);
  EXPECT_TRUE(child.reap());
}

// A process can name itself so that a naive split of /proc/<pid>/stat on spaces, or on the
// first ')', reads the wrong fields.
TEST(ShmLiveness, HostileCommandNameDoesNotConfuseTheCheck) {
  constexpr const char* kComm = "x) Z 1 2 (y";  // 11 bytes: fits TASK_COMM_LEN
  Child child(Child::Then::kWaitForRelease, kComm);
  ASSERT_TRUE(child.started());
  std::string comm;
  std::getline(std::ifstream("/proc/" + std::to_string(child.pid()) + "/comm"), comm);
  ASSERT_EQ(comm, kComm) << "the child did not get the hostile name";
  EXPECT_NE(child.reported().start_time, 0u);
  EXPECT_EQ(check_alive(child.reported()), Liveness::kAlive);
  const Result<ProcessIdentity> looked_up = identity_of(static_cast<uint32_t>(child.pid()));
  ASSERT_TRUE(looked_up.ok());
  EXPECT_EQ(looked_up.value, child.reported());
  child.release();
  ASSERT_TRUE(child.reap());
  EXPECT_EQ(check_alive(child.reported()), Liveness::kDead);
}

// A stat line shaped like the kernel's: fields 4..21 are small numbers, 22 is `start`.
std::string stat_line(const std::string& pid, const std::string& comm, const std::string& state,
                      const std::string& start) {
  std::string line = pid + " (" + comm + ") " + state;
  for (int field = 4; field <= 21; ++field) line += field == 19 ? " -5" : " " + std::to_string(field);
  line += " " + start + " 1234 567 18446744073709551615 0 0\n";
  return line;
}

TEST(ShmLiveness, ParserFindsFieldsWhateverTheCommandName) {
  for (const std::string comm : {"bash", "", "a b", "a) (b", ") 99 Z (", "((", "))", "x\ny"}) {
    SCOPED_TRACE(comm);
    const std::optional<ProcStat> parsed = parse_proc_stat(stat_line("4242", comm, "S", "987654321"));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(parsed->pid, 4242u);
    EXPECT_EQ(parsed->state, 'S');
    EXPECT_EQ(parsed->start_time, 987654321u);
  }
  const std::optional<ProcStat> zombie = parse_proc_stat(stat_line("7", "z", "Z", "18446744073709551615"));
  ASSERT_TRUE(zombie.has_value());
  EXPECT_EQ(zombie->state, 'Z');
  EXPECT_EQ(zombie->start_time, UINT64_MAX);
}

TEST(ShmLiveness, ParserRejectsMalformedLines) {
  EXPECT_FALSE(parse_proc_stat(""));
  EXPECT_FALSE(parse_proc_stat("123"));
  EXPECT_FALSE(parse_proc_stat("123 (abc"));
  EXPECT_FALSE(parse_proc_stat("123 (abc) "));
  EXPECT_FALSE(parse_proc_stat("123 (abc) S 1 2 3"));                     // ends before field 22
  EXPECT_FALSE(parse_proc_stat(stat_line("-1", "a", "S", "5")));          // negative pid
  EXPECT_FALSE(parse_proc_stat(stat_line("12", "a", "SS", "5")));         // state is one char
  EXPECT_FALSE(parse_proc_stat(stat_line("12", "a", "S", "12x")));        // start not a number
  EXPECT_FALSE(parse_proc_stat(stat_line("12", "a", "S", "-5")));         // start negative
  EXPECT_FALSE(parse_proc_stat(stat_line("12", "a", "S", "99999999999999999999999")));  // overflow
  EXPECT_FALSE(parse_proc_stat("12 (a)  S 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22"));
}

TEST(ShmLiveness, EveryLivenessHasItsOwnName) {
  EXPECT_STREQ(to_string(Liveness::kAlive), "alive");
  EXPECT_STREQ(to_string(Liveness::kDead), "dead");
  EXPECT_STREQ(to_string(Liveness::kUnknown), "unknown");
}

// Liveness locks (docs/shm.md, "When a process dies"): held by a live process on its own open
// file description, seen by every other; gone when the process dies (SIGKILL), never before.
TEST(ShmLivenessLock, HeldWhileTheHolderLivesAndDroppedWhenItDies) {
  const std::string name = random_segment_name(random_test_prefix());
  auto seg = Segment::create(name, 4096);
  ASSERT_TRUE(seg.ok());
  const int mine = open_lock_descriptor(name, seg.value.fd());
  ASSERT_GE(mine, 0);
  EXPECT_EQ(liveness_lock_state(mine, 5), Liveness::kDead) << "nobody holds it yet";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    const int fd = open_lock_descriptor(name, seg.value.fd());
    const bool took = fd >= 0 && take_liveness_lock(fd, 5);
    const char c = took ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    for (;;) ::pause();
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  EXPECT_EQ(liveness_lock_state(mine, 5), Liveness::kAlive);
  EXPECT_EQ(liveness_lock_state(mine, 0, 256), Liveness::kAlive) << "a range test sees it too";
  EXPECT_EQ(liveness_lock_state(mine, 6), Liveness::kDead) << "another slot's lock is free";
  EXPECT_FALSE(take_liveness_lock(mine, 5)) << "a held lock cannot be taken";
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_EQ(liveness_lock_state(mine, 5), Liveness::kDead) << "the kernel dropped the dead holder's lock";
  EXPECT_TRUE(take_liveness_lock(mine, 5));
  drop_liveness_lock(mine, 5);
  ::close(mine);
  ::close(ready[0]);
  ::close(ready[1]);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

}  // namespace
}  // namespace memchannel::shm
