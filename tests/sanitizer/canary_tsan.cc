// TSan canary: two threads write one plain int with nothing ordering them. In a
// ThreadSanitizer build this reports "WARNING: ThreadSanitizer: data race" and exits non-zero;
// without TSan it exits 0 and its test fails.
//
// Both threads are kept alive across each other's writes: TSan may not report a race with an
// access made by a thread that has already finished (its history can be dropped), so a canary
// whose second thread happens to finish first would pass silently now and then. The rendezvous
// uses relaxed atomics only, which give TSan no happens-before edge to hide the race behind.
#include <atomic>
#include <cstdio>
#include <thread>

namespace {
volatile int racy = 0;  // deliberately not atomic (volatile only stops the compiler merging stores)
std::atomic<int> arrived{0};

void wait_for(int n) {
  while (arrived.load(std::memory_order_relaxed) < n) std::this_thread::yield();
}

void racer(int value) {
  arrived.fetch_add(1, std::memory_order_relaxed);
  wait_for(2);  // both running
  for (int i = 0; i < 100; ++i) racy = value + i;
  arrived.fetch_add(1, std::memory_order_relaxed);
  wait_for(4);  // both done writing; neither has finished
}
}  // namespace

int main() {
  std::thread t(racer, 1000);
  racer(2000);
  t.join();
  std::printf("canary survived: %d\n", racy);
  return 0;
}
