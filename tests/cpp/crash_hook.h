// The crash-point hook the fork + SIGKILL tests install in their children (core/crash_points.h):
// the child kills itself the `hit`th time it passes `target`. Set g_target and g_hits_left, then
// set_crash_hook(&kill_at_target).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

#include "core/crash_points.h"

namespace memchannel::testing {

inline std::atomic<uint32_t> g_target{0};
inline std::atomic<uint32_t> g_hits_left{0};

inline void kill_at_target(CrashPoint p) {
  if (static_cast<uint32_t>(p) != g_target.load(std::memory_order_relaxed)) return;
  if (g_hits_left.fetch_sub(1, std::memory_order_relaxed) != 1) return;
  ::kill(::getpid(), SIGKILL);
  ::_exit(99);  // not reached
}

// Waits for the child `pid`: true if it was killed at its crash point; else checks that it exited
// with `not_reached` (it ran its workload to the end without reaching the point) and is false.
inline bool child_killed_at_point(pid_t pid, int not_reached) {
  int wstatus = 0;
  EXPECT_EQ(::waitpid(pid, &wstatus, 0), pid);
  if (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) return true;
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == not_reached) << "status " << wstatus;
  return false;
}

}  // namespace memchannel::testing
