// A libFuzzer-compatible driver for compilers without libFuzzer (GCC): it replays files and
// directories given on the command line through LLVMFuzzerTestOneInput, then runs seeded,
// deterministic mutations of them. Not coverage-guided; the mutations are aimed at arena
// images (magic words, block references, tagged links, state words, cell copies), so even
// without guidance they reach the validation paths behind each check.
//
//   arena_fuzz_driver [-seed=N] [-runs=N] [-max_total_time=S] [-artifact_prefix=P] FILE|DIR...
//
// On a sanitizer report (or any fatal signal the sanitizer handles) the input being run is
// written to <artifact_prefix>crash-<seed>-<run> first, so every finding has a reproducer:
// `arena_fuzz_driver that-file` replays it.
#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/block.h"
#include "core/channel.h"
#include "core/layout.h"
#include "tests/fuzz/fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace memchannel::fuzz {
namespace {

std::vector<uint8_t> g_current;
std::string g_crash_path;

void save_current_input() {
  if (g_crash_path.empty()) return;
  if (FILE* f = std::fopen(g_crash_path.c_str(), "wb")) {
    std::fwrite(g_current.data(), 1, g_current.size(), f);
    std::fclose(f);
    std::fprintf(stderr, "arena_fuzz_driver: input written to %s\n", g_crash_path.c_str());
  }
}

// GCC links ASan and UBSan as two shared runtimes, each with its own list of death callbacks:
// register with every loaded object that exports __sanitizer_set_death_callback.
void register_death_callbacks() {
  using SetCallback = void (*)(void (*)());
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) -> int {
        void* handle = ::dlopen(info->dlpi_name[0] != '\0' ? info->dlpi_name : nullptr, RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr) return 0;
        if (void* sym = ::dlsym(handle, "__sanitizer_set_death_callback")) {
          SetCallback set;
          std::memcpy(&set, &sym, sizeof set);
          set(save_current_input);
        }
        ::dlclose(handle);
        return 0;
      },
      nullptr);
}

bool read_file(const std::string& path, std::vector<uint8_t>* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  out->clear();
  uint8_t buf[65536];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->insert(out->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

void collect(const std::string& path, std::vector<std::string>* files) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    files->push_back(path);
    return;
  }
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());  // deterministic order
  for (const std::string& n : names) collect(path + "/" + n, files);
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  void mutate(std::vector<uint8_t>& in) {
    if (in.size() < kInputHeaderBytes + kUnit) in.resize(kInputHeaderBytes + kUnit, 0);
    const int rounds = 1 + static_cast<int>(below(8));
    for (int i = 0; i < rounds; ++i) mutate_once(in);
  }

 private:
  uint64_t below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  // A position in the image (after the 16-byte input header), aligned to `align`.
  size_t image_pos(const std::vector<uint8_t>& in, size_t width, size_t align) {
    const size_t image = in.size() - kInputHeaderBytes;
    if (image < width) return kInputHeaderBytes;
    const size_t pos = below(image - width + 1) & ~(align - 1);
    return kInputHeaderBytes + pos;
  }
  uint32_t image_ref(const std::vector<uint8_t>& in) {
    const uint64_t cells = std::max<uint64_t>((in.size() - kInputHeaderBytes) / kUnit, 1);
    switch (below(4)) {
      case 0: return static_cast<uint32_t>(below(cells));                        // inside
      case 1: return static_cast<uint32_t>(kSegment0Bytes / kUnit + below(4)) - 2;  // at the end
      case 2: return offset_to_ref(make_offset(1 + static_cast<uint32_t>(below(3)), below(1024) * kUnit));
      default: return static_cast<uint32_t>(rng_());
    }
  }
  uint32_t interesting32(const std::vector<uint8_t>& in) {
    switch (below(9)) {
      case 0: return 0;
      case 1: return 1;
      case 2: return 0xffffffffu;
      case 3: return 0x80000000u;
      case 4: return kBlockMagic;
      case 5: return kNodeMagic;
      case 6: return image_ref(in);
      case 7: return make_state(static_cast<uint32_t>(below(4)), static_cast<uint32_t>(below(4)),
                                static_cast<BlockState>(below(5)));
      default: return static_cast<uint32_t>(below(kNumClasses + 4));
    }
  }
  uint64_t interesting64(const std::vector<uint8_t>& in) {
    switch (below(9)) {
      case 0: return 0;
      case 1: return ~0ull;
      case 2: return 1ull << 63;
      case 3: return make_tagged(static_cast<uint32_t>(rng_()), image_ref(in));
      case 4: return ref_to_offset(image_ref(in));
      case 5: return kSegment0Bytes << below(3);
      case 6: return kSegmentCreating;
      case 7: return below(1u << 20);
      default: return rng_();
    }
  }
  template <typename T>
  void put(std::vector<uint8_t>& in, size_t pos, T v) { std::memcpy(in.data() + pos, &v, sizeof v); }

  void mutate_once(std::vector<uint8_t>& in) {
    switch (below(10)) {
      case 0: in[image_pos(in, 1, 1)] ^= static_cast<uint8_t>(1u << below(8)); break;
      case 1: in[image_pos(in, 1, 1)] = static_cast<uint8_t>(rng_()); break;
      case 2:
      case 3: put(in, image_pos(in, 4, 4), interesting32(in)); break;
      case 4:
      case 5: put(in, image_pos(in, 8, 8), interesting64(in)); break;
      case 6: {  // a cell copied over another: duplicated headers, nodes, links
        const size_t from = image_pos(in, kUnit, kUnit), to = image_pos(in, kUnit, kUnit);
        std::memmove(in.data() + to, in.data() + from, kUnit);
        break;
      }
      case 7: {  // the handle: its offset, the liveness answers, the optional steps
        if (below(2) == 0) put(in, 0, interesting64(in)); else in[8 + below(2)] = static_cast<uint8_t>(rng_());
        break;
      }
      case 8: in.resize(kInputHeaderBytes + below(in.size() - kInputHeaderBytes) + 1); break;
      default: {  // swap two aligned words
        const size_t p = image_pos(in, 8, 8), q = image_pos(in, 8, 8);
        uint64_t a, b;
        std::memcpy(&a, in.data() + p, 8);
        std::memcpy(&b, in.data() + q, 8);
        put(in, p, b);
        put(in, q, a);
        break;
      }
    }
  }

  std::mt19937_64 rng_;
};

}  // namespace
}  // namespace memchannel::fuzz

int main(int argc, char** argv) {
  using namespace memchannel::fuzz;
  uint64_t seed = 1;
  uint64_t runs = 0;
  double max_seconds = 0;
  std::string artifact_prefix = "./";
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("-seed=", 0) == 0) seed = std::strtoull(a.c_str() + 6, nullptr, 10);
    else if (a.rfind("-runs=", 0) == 0) runs = std::strtoull(a.c_str() + 6, nullptr, 10);
    else if (a.rfind("-max_total_time=", 0) == 0) max_seconds = std::strtod(a.c_str() + 16, nullptr);
    else if (a.rfind("-artifact_prefix=", 0) == 0) artifact_prefix = a.substr(17);
    else if (a[0] == '-') std::fprintf(stderr, "ignoring option %s\n", a.c_str());
    else collect(a, &files);
  }
  register_death_callbacks();

  std::vector<std::vector<uint8_t>> corpus;
  for (const std::string& f : files) {
    std::vector<uint8_t> bytes;
    if (!read_file(f, &bytes)) {
      std::fprintf(stderr, "cannot read %s\n", f.c_str());
      return 1;
    }
    g_current = bytes;
    g_crash_path = artifact_prefix + "crash-replay-" + f.substr(f.find_last_of('/') + 1);
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    corpus.push_back(std::move(bytes));
  }
  std::printf("arena_fuzz_driver: replayed %zu input(s)\n", corpus.size());
  if (corpus.empty()) corpus.emplace_back(kInputHeaderBytes + memchannel::kUnit, 0);

  // Mutation phase: until -runs executions or -max_total_time seconds, whichever comes first
  // (either may be 0 = no limit of that kind; both 0 = no mutations).
  if (runs == 0 && max_seconds <= 0) return 0;
  Mutator mutator(seed);
  std::mt19937_64 pick(seed ^ 0x9e3779b97f4a7c15ull);
  const auto start = std::chrono::steady_clock::now();
  uint64_t done = 0;
  double elapsed = 0;
  for (; runs == 0 || done < runs; ++done) {
    if ((done & 63) == 0) {
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (max_seconds > 0 && elapsed >= max_seconds) break;
    }
    g_current = corpus[pick() % corpus.size()];
    mutator.mutate(g_current);
    g_crash_path = artifact_prefix + "crash-" + std::to_string(seed) + "-" + std::to_string(done);
    LLVMFuzzerTestOneInput(g_current.data(), g_current.size());
  }
  elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("arena_fuzz_driver: %llu mutated executions in %.1f s (seed %llu), no crash\n",
              static_cast<unsigned long long>(done), elapsed, static_cast<unsigned long long>(seed));
  return 0;
}
