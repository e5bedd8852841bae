#include "pybind/registry.h"

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <utility>

namespace memchannel::py_glue {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::pair<uint64_t, uint64_t>, std::weak_ptr<Channel>> channels;
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<Channel>> pinned;
};

// Leaked on purpose: interpreters and threads may still run during process teardown.
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

std::pair<uint64_t, uint64_t> key_of(const Channel& ch) {
  return {ch.arena()->arena_id(), ch.channel_id()};
}

}  // namespace

uint64_t next_id() {
  // Random start so ids from different processes (and earlier runs) rarely meet.
  static std::atomic<uint64_t> counter{std::random_device{}() | (uint64_t{std::random_device{}()} << 32)};
  return counter.fetch_add(1, std::memory_order_relaxed) | 1;
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
