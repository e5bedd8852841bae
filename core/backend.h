// Where arena memory comes from. The MemChannel algorithm (Arena, Channel) is written once,
// over offsets; a backend only creates and maps segments. Two exist: HeapBackend (process
// memory, for threads and subinterpreters) and the shared-memory backend in shm/.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace memchannel {

class MemoryBackend {
 public:
  virtual ~MemoryBackend() = default;

  // Creates segment `index` of `bytes` bytes (zero-filled) and maps it; returns its base.
  // Called by exactly one thread/process per index (the arena arbitrates).
  // Concurrency: any thread, serialised per index by the caller.
  virtual Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) = 0;

  // Maps an existing segment of `bytes` bytes that another party created. Returns its base.
  // Concurrency: any thread; the arena calls it at most once per index per process.
  virtual Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) = 0;

  // Human-readable kind, e.g. "heap" or "shm".
  virtual const char* kind() const = 0;

  // Last system error (errno) seen by create/map, for messages.
  virtual int last_errno() const { return 0; }
};

}  // namespace memchannel
