// Core benchmarks and the machine's floor, side by side in one run:
//   - Arena allocate+release of a block, one thread and two threads contending;
//   - Channel send+recv of one 64-byte message in one thread (the per-message cost of the
//     descriptor queue, admission and block allocation, no hand-off);
//   - Channel hand-off between two threads (one sender, one receiver, spinning waits);
//   - the same send+recv and hand-off over the shm backend (holders tracked: the path a process
//     pays, with crash bookkeeping such as holder-named states and dead-peer sweeps);
//   - the floor: a core-to-core ping-pong on one atomic, a futex wake round trip, memcpy.
// Not measured here: Python call overhead, page faults on fresh memory (arenas reuse blocks),
// and cross-process effects (the shm backend runs the same code over the same layout).
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/heap_backend.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

using namespace memchannel;

namespace {

std::shared_ptr<Arena> make_arena(uint64_t capacity = 256ull << 20) {
  return Arena::create(std::make_unique<HeapBackend>(), capacity, 1).value;
}

std::shared_ptr<Arena> make_shm_arena(uint64_t capacity = 256ull << 20) {
  static const std::string prefix = shm::random_test_prefix();
  return Arena::create(shm::ShmBackend::for_new_arena(prefix), capacity, 1).value;
}

void BM_ArenaAllocRelease(benchmark::State& state) {
  static std::shared_ptr<Arena> arena;
  if (state.thread_index() == 0) arena = make_arena();
  const uint64_t size = static_cast<uint64_t>(state.range(0));
  for (auto _ : state) {
    auto h = arena->allocate(size, PayloadLayout{});
    benchmark::DoNotOptimize(h);
    arena->release(h.value);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ArenaAllocRelease)->Arg(64)->Arg(4096)->Arg(1 << 20)->Threads(1)->Threads(2)->UseRealTime();

// 64-byte allocate + send + recv + release in one thread.
template <typename MakeArena>
void send_recv_same_thread(benchmark::State& state, MakeArena make) {
  auto arena = make();
  auto ch = Channel::create(arena, 0, 0, 1).value;
  const WaitSpec nb = WaitSpec::nonblocking();
  for (auto _ : state) {
    auto h = arena->allocate(64, PayloadLayout{});
    ch->send(h.value, nb);
    auto r = ch->recv(nb);
    arena->release(r.value);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_ChannelSendRecvSameThread(benchmark::State& state) {
  send_recv_same_thread(state, [] { return make_arena(); });
}
BENCHMARK(BM_ChannelSendRecvSameThread);

void BM_QueueOnlySendRecv(benchmark::State& state) {
  // Same block sent and received again: descriptor queue + admission, no allocation.
  auto arena = make_arena();
  auto ch = Channel::create(arena, 0, 0, 1).value;
  const WaitSpec nb = WaitSpec::nonblocking();
  BlockHandle h = arena->allocate(64, PayloadLayout{}).value;
  for (auto _ : state) {
    ch->send(h, nb);
    h = ch->recv(nb).value;
  }
  arena->release(h);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_QueueOnlySendRecv);

// Items/s is messages per second from a sender thread to a receiver thread (maxsize 1024).
template <typename MakeArena>
void handoff_two_threads(benchmark::State& state, MakeArena make) {
  const int64_t n = state.range(0);
  for (auto _ : state) {
    auto arena = make();
    auto ch = Channel::create(arena, 1024, 0, 1).value;
    std::thread receiver([&] {
      for (int64_t i = 0; i < n; ++i) {
        auto r = ch->recv(WaitSpec{});
        arena->release(r.value);
      }
    });
    for (int64_t i = 0; i < n; ++i) {
      auto h = arena->allocate(64, PayloadLayout{});
      ch->send(h.value, WaitSpec{});
    }
    receiver.join();
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void BM_ChannelHandoffTwoThreads(benchmark::State& state) { handoff_two_threads(state, [] { return make_arena(); }); }
BENCHMARK(BM_ChannelHandoffTwoThreads)->Arg(200000)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_ShmChannelSendRecvSameThread(benchmark::State& state) {
  send_recv_same_thread(state, [] { return make_shm_arena(); });
}
BENCHMARK(BM_ShmChannelSendRecvSameThread);

void BM_ShmChannelHandoffTwoThreads(benchmark::State& state) { handoff_two_threads(state, [] { return make_shm_arena(); }); }
BENCHMARK(BM_ShmChannelHandoffTwoThreads)->Arg(200000)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_FloorAtomicPingPong(benchmark::State& state) {
  // Core-to-core round trip on one cache line: the hardware floor for any hand-off.
  std::atomic<uint64_t> word{0};
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    uint64_t expect = 1;
    while (!stop.load(std::memory_order_relaxed)) {
      if (word.load(std::memory_order_acquire) == expect) {
        word.store(expect + 1, std::memory_order_release);
        expect += 2;
      }
    }
  });
  uint64_t v = 0;
  for (auto _ : state) {
    word.store(v + 1, std::memory_order_release);
    while (word.load(std::memory_order_acquire) != v + 2) cpu_relax();
    v += 2;
  }
  stop = true;
  echo.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FloorAtomicPingPong)->UseRealTime();

void BM_FloorFutexRoundTrip(benchmark::State& state) {
  // Sleep/wake round trip through the kernel: what a hand-off costs when nobody spins.
  EventCount ping{}, pong{};
  std::atomic<uint64_t> turn{0};
  std::atomic<bool> stop{false};
  WaitSpec no_spin;
  no_spin.spin_ns = 0;
  std::thread echo([&] {
    uint64_t expect = 1;
    for (;;) {
      wait_until(ping, no_spin, [&] { return turn.load() == expect || stop.load(); });
      if (stop.load()) break;
      turn.store(expect + 1);
      notify_all(pong);
      expect += 2;
    }
  });
  uint64_t v = 0;
  for (auto _ : state) {
    turn.store(v + 1);
    notify_all(ping);
    wait_until(pong, no_spin, [&] { return turn.load() == v + 2; });
    v += 2;
  }
  stop = true;
  notify_all(ping);
  echo.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FloorFutexRoundTrip)->UseRealTime();

void BM_FloorMemcpy(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<char> src(n, 1), dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_FloorMemcpy)->Arg(64)->Arg(64 << 10)->Arg(16 << 20);

}  // namespace

BENCHMARK_MAIN();
