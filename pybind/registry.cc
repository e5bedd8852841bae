#include "pybind/registry.h"

#include <atomic>
#include <map>
#include <pthread.h>
#include <vector>
#include <mutex>
#include <random>
#include <utility>

namespace memchannel::py_glue {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::pair<uint64_t, uint64_t>, std::weak_ptr<Channel>> channels;
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<Channel>> pinned;
  std::map<std::string, std::weak_ptr<Arena>> arenas;
};

// Leaked on purpose: interpreters and threads may still run during process teardown.
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

std::pair<uint64_t, uint64_t> key_of(const Channel& ch) {
  return {ch.arena()->arena_id(), ch.channel_id()};
}

// fork(): hold the registry lock across the fork so the child never inherits it locked, and
// give the child holder slots of its own in every shared-memory arena it inherited.
void before_fork() { registry().mutex.lock(); }
void after_fork_in_parent() { registry().mutex.unlock(); }
// Channels the child inherited hold no attach of its own until it first uses one (the
// bindings then call Channel::reattach_after_fork), so a child that never does (fork + exec)
// takes nothing, and its exit or GC gives back exactly what it took, never the parent's
// (Channel::detach compares fork generations). Buffers it inherited name the parent's holder:
// Arena::release refuses them (kNotHolder).
void after_fork_in_child() {
  registry().mutex.unlock();
  for (auto& [name, weak] : registry().arenas) {
    if (auto arena = weak.lock()) arena->reattach_after_fork();
  }
}

void install_fork_handlers() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); });
}

}  // namespace

void register_arena(const std::string& name, const std::shared_ptr<Arena>& arena) {
  install_fork_handlers();
  std::lock_guard<std::mutex> lock(registry().mutex);
  auto& arenas = registry().arenas;
  for (auto it = arenas.begin(); it != arenas.end();) {
    it = it->second.expired() ? arenas.erase(it) : std::next(it);
  }
  arenas[name] = arena;
}

std::shared_ptr<Arena> find_arena(const std::string& name) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  auto it = registry().arenas.find(name);
  return it == registry().arenas.end() ? nullptr : it->second.lock();
}

void detach_all() {
  std::vector<std::shared_ptr<Channel>> unpinned, inherited;
  std::vector<std::shared_ptr<Arena>> arenas;
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    for (auto& [key, ch] : registry().pinned) unpinned.push_back(std::move(ch));
    registry().pinned.clear();
    // Shared channels a forked child inherited: give back the attach it took after fork, also
    // when it leaves through os._exit (multiprocessing's fork children) and no destructor runs.
    for (auto& [key, weak] : registry().channels) {
      auto ch = weak.lock();
      if (ch && ch->inherited() && ch->arena()->backend().tracks_holders()) inherited.push_back(std::move(ch));
    }
    for (auto& [name, weak] : registry().arenas) {
      if (auto a = weak.lock()) arenas.push_back(std::move(a));
    }
  }
  unpinned.clear();  // channels only this process still used are drained and freed
  for (auto& ch : inherited) ch->detach();
  inherited.clear();
  for (auto& a : arenas) a->detach();
}

uint64_t next_id() {
  // Random start so ids from different processes (and earlier runs) rarely meet.
  // Odd and stepping by two: never 0, and consecutive ids never collide.
  static std::atomic<uint64_t> counter{std::random_device{}() | (uint64_t{std::random_device{}()} << 32) | 1};
  return counter.fetch_add(2, std::memory_order_relaxed);
}

void register_channel(const std::shared_ptr<Channel>& ch) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  auto& channels = registry().channels;
  // Opportunistic sweep of expired entries keeps the map small.
  for (auto it = channels.begin(); it != channels.end();) {
    it = it->second.expired() ? channels.erase(it) : std::next(it);
  }
  channels[key_of(*ch)] = ch;
}

void pin_channel(const std::shared_ptr<Channel>& ch) {
  if (ch->closed()) return;
  std::lock_guard<std::mutex> lock(registry().mutex);
  registry().pinned.emplace(key_of(*ch), ch);
}

void unpin_channel(const Channel& ch) {
  std::shared_ptr<Channel> last;  // destroyed outside the lock
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    auto it = registry().pinned.find(key_of(ch));
    if (it == registry().pinned.end()) return;
    last = std::move(it->second);
    registry().pinned.erase(it);
  }
}

std::shared_ptr<Channel> find_channel(uint64_t arena_id, uint64_t channel_id) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  auto it = registry().channels.find({arena_id, channel_id});
  return it == registry().channels.end() ? nullptr : it->second.lock();
}

}  // namespace memchannel::py_glue
