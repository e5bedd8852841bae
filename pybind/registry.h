// Process-global registry of heap arenas and channels, keyed by id. It holds C++ state only,
// never a Python object, so every interpreter of the process can look channels up by handle.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/arena.h"
#include "core/channel.h"

namespace memchannel::py_glue {

// Concurrency: every function may be called from any thread and any interpreter.
uint64_t next_id();
void register_channel(const std::shared_ptr<Channel>& ch);
// Keeps a shared channel alive until it is closed (handles may still be in flight).
void pin_channel(const std::shared_ptr<Channel>& ch);
void unpin_channel(const Channel& ch);
std::shared_ptr<Channel> find_channel(uint64_t arena_id, uint64_t channel_id);

// Shared-memory arenas this process has mapped, by segment-0 name: one mapping per process.
void register_arena(const std::string& name, const std::shared_ptr<Arena>& arena);
std::shared_ptr<Arena> find_arena(const std::string& name);
// Process exit: drop pinned channels and detach every shared-memory arena (the last process
// to detach removes the segments). Idempotent.
void detach_all();

}  // namespace memchannel::py_glue
