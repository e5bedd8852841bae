// Thin wrappers over futex(2) on a 32-bit word. Shared (no FUTEX_PRIVATE_FLAG): the word may
// live in memory mapped by several processes.
#pragma once

#include <atomic>
#include <cstdint>

namespace memchannel {

// kWoken only when a futex_wake took this waiter off the word (the kernel returns 0 for that
// alone); kSpurious for any other error, after which callers re-check their condition.
enum class FutexWait { kWoken, kValueChanged, kTimedOut, kInterrupted, kSpurious };

// Sleeps while *word == expected, at most timeout_ns (negative: no limit).
// Concurrency: any thread, any process.
FutexWait futex_wait(std::atomic<uint32_t>* word, uint32_t expected, int64_t timeout_ns);

// Wakes up to `count` waiters sleeping on word; returns how many it woke (0 on error): each of
// them sees kWoken from its futex_wait. Concurrency: any thread, any process.
int futex_wake(std::atomic<uint32_t>* word, int count);

// Monotonic clock in nanoseconds (CLOCK_MONOTONIC).
int64_t monotonic_ns();

// Gives the CPU to another runnable thread, if any (sched_yield).
void cpu_yield();

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace memchannel
