#include "pybind/gil.h"

#include <signal.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>

namespace memchannel::py_glue {
namespace {

struct CancelRegistry {
  std::mutex mutex;
  std::set<int64_t> cancelled;
  std::atomic<uint32_t> count{0};  // cancelled.size(), readable without the mutex
};

// Leaked on purpose: threads may still wait while the process tears down.
CancelRegistry& cancel_registry() {
  static CancelRegistry* r = new CancelRegistry();
  return *r;
}

// Tests only: MEMCHANNEL_TEST_FORCED_UNWIND=1 skips the parking below, so that the thread
// really meets PyThread_exit_thread() and the forced unwind must pass through our frames
// (the race that parking cannot close: finalization starting right after the check).
bool park_when_finalizing() {
  static const bool park = std::getenv("MEMCHANNEL_TEST_FORCED_UNWIND") == nullptr;
  return park;
}

}  // namespace

bool runtime_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

void reacquire_gil(PyThreadState* tstate) {
  if (park_when_finalizing() && runtime_finalizing()) {
    // This thread would be ended by PyThread_exit_thread() inside PyEval_RestoreThread.
    // Never touch Python again; the process is exiting (the main thread is finalizing).
    for (;;) pause();
  }
  PyEval_RestoreThread(tstate);
}

void cancel_waits(int64_t interpreter_id) {
  CancelRegistry& r = cancel_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.cancelled.insert(interpreter_id);
  r.count.store(static_cast<uint32_t>(r.cancelled.size()), std::memory_order_release);
}

void uncancel_waits(int64_t interpreter_id) {
  CancelRegistry& r = cancel_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.cancelled.erase(interpreter_id);
  r.count.store(static_cast<uint32_t>(r.cancelled.size()), std::memory_order_release);
}

bool waits_cancelled(int64_t interpreter_id) {
  CancelRegistry& r = cancel_registry();
  if (r.count.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.cancelled.count(interpreter_id) != 0;
}

namespace {
extern "C" void exit_by_sigint() {
  std::signal(SIGINT, SIG_DFL);
  kill(getpid(), SIGINT);
}
}  // namespace

void exit_by_sigint_at_exit() {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(exit_by_sigint); });
}

}  // namespace memchannel::py_glue
