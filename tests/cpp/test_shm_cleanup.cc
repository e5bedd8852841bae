// Cleanup: list by prefix, remove only what the predicate condemns, never another user's or
// another prefix's segments (docs/reliability.md items 5 and 6).
#include "shm/cleanup.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "shm/names.h"
#include "shm/segment.h"

namespace memchannel::shm {
namespace {

constexpr uint64_t kPage = 4096;

std::string path_of(const std::string& name) { return std::string(kShmDirectory) + "/" + name; }

bool exists(const std::string& name) {
  struct stat st {};
  return ::lstat(path_of(name).c_str(), &st) == 0;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

bool head_starts_with(const SegmentPeek& peek, std::string_view tag) {
  return peek.head.size() >= tag.size() && std::memcmp(peek.head.data(), tag.data(), tag.size()) == 0;
}

// Two prefixes per test: `mine_` is swept, `other_` stands for a concurrent run that a
// sweep of `mine_` must not touch.
class ShmCleanup : public ::testing::Test {
 protected:
  void SetUp() override {
    mine_ = random_test_prefix();
    other_ = random_test_prefix();
    ASSERT_TRUE(is_valid_prefix(mine_));
    ASSERT_TRUE(is_valid_prefix(other_));
  }

  void TearDown() override {
    std::vector<std::string> left = list_segments(mine_);
    const std::vector<std::string> other_left = list_segments(other_);
    left.insert(left.end(), other_left.begin(), other_left.end());
    for (const std::string& name : left) ::unlink(path_of(name).c_str());
    if (!HasFailure()) {
      EXPECT_TRUE(left.empty()) << "test left " << left.size() << " segment(s)";
    }
  }

  // Creates a segment under `prefix` whose first bytes are `tag`; returns its name.
  std::string make(const std::string& prefix, std::string_view tag, uint64_t bytes = kPage) {
    const std::string name = random_segment_name(prefix);
    Result<Segment> created = Segment::create(name, bytes);
    EXPECT_TRUE(created.ok()) << to_string(created.status);
    if (created.ok()) std::memcpy(created.value.data(), tag.data(), tag.size());
    return name;
  }

  std::string mine_;
  std::string other_;
};

TEST_F(ShmCleanup, ListFindsExactlyTheNamesUnderThePrefix) {
  std::vector<std::string> mine = {make(mine_, "a"), make(mine_, "b"), make(mine_, "c")};
  std::vector<std::string> others = {make(other_, "d"), make(other_, "e")};

  EXPECT_EQ(list_segments(mine_), sorted(mine));
  EXPECT_EQ(list_segments(other_), sorted(others));

  for (const std::string& name : mine) EXPECT_TRUE(Segment::unlink(name).ok());
  for (const std::string& name : others) EXPECT_TRUE(Segment::unlink(name).ok());
  EXPECT_TRUE(list_segments(mine_).empty());
}

TEST_F(ShmCleanup, PrefixesThatAreNotMemchannelPrefixesMatchNothing) {
  const std::string name = make(mine_, "x");
  EXPECT_TRUE(list_segments("").empty());
  EXPECT_TRUE(list_segments("memchannel").empty());
  EXPECT_TRUE(list_segments("/dev/shm/memchannel-").empty());
  EXPECT_TRUE(list_segments("memchannel-/../").empty());
  int calls = 0;
  const auto everything = [&](std::string_view, const SegmentPeek&) { return ++calls > 0; };
  EXPECT_TRUE(remove_segments_if("", everything).empty());
  EXPECT_TRUE(remove_segments_if("sem.", everything).empty());
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(exists(name));
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmCleanup, RemovesOnlyCondemnedSegmentsUnderThePrefix) {
  const std::vector<std::string> dead = {make(mine_, "DEAD"), make(mine_, "DEAD")};
  const std::vector<std::string> live = {make(mine_, "LIVE"), make(mine_, "LIVE")};
  const std::string other_dead = make(other_, "DEAD");

  std::vector<std::string> offered;
  const std::vector<std::string> removed =
      remove_segments_if(mine_, [&](std::string_view name, const SegmentPeek& peek) {
        offered.emplace_back(name);
        return peek.status == Status::kOk && head_starts_with(peek, "DEAD");
      });

  EXPECT_EQ(removed, sorted(dead));
  std::vector<std::string> all_mine = dead;
  all_mine.insert(all_mine.end(), live.begin(), live.end());
  EXPECT_EQ(sorted(offered), sorted(all_mine));
  EXPECT_EQ(list_segments(mine_), sorted(live));
  EXPECT_TRUE(exists(other_dead));

  for (const std::string& name : live) EXPECT_TRUE(Segment::unlink(name).ok());
  EXPECT_TRUE(Segment::unlink(other_dead).ok());
}

TEST_F(ShmCleanup, PredicateSeesAPageAlignedCopyOfTheHead) {
  const std::string name = make(mine_, "HEADER-v1", 3 * kPage);
  SegmentPeek seen;
  std::vector<std::byte> copy;
  const std::vector<std::string> removed =
      remove_segments_if(mine_, [&](std::string_view, const SegmentPeek& peek) {
        seen = peek;
        copy.assign(peek.head.begin(), peek.head.end());
        return false;
      }, 100);
  EXPECT_TRUE(removed.empty());
  EXPECT_EQ(seen.status, Status::kOk);
  EXPECT_EQ(seen.size, 3 * kPage);
  ASSERT_EQ(copy.size(), 100u);
  EXPECT_EQ(std::memcmp(copy.data(), "HEADER-v1", 9), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(seen.head.data()) % kPage, 0u);
  EXPECT_TRUE(exists(name));
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// A creator that died before ftruncate leaves an empty file; one that died during
// initialisation may leave a file shorter than the header.
TEST_F(ShmCleanup, UnsizedAndShortSegmentsAreOfferedAsTooSmall) {
  const std::string unsized = random_segment_name(mine_);
  int fd = ::shm_open(("/" + unsized).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fchmod(fd, 0600), 0);
  ::close(fd);
  const std::string short_one = random_segment_name(mine_);
  fd = ::shm_open(("/" + short_one).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fchmod(fd, 0600), 0);
  ASSERT_EQ(::write(fd, "0123456789", 10), 10);
  ::close(fd);

  std::vector<std::string> unsized_offers;
  std::size_t short_head = 0;
  const std::vector<std::string> removed =
      remove_segments_if(mine_, [&](std::string_view name, const SegmentPeek& peek) {
        EXPECT_EQ(peek.status, Status::kTooSmall) << name;
        if (peek.size == 0) {
          unsized_offers.emplace_back(name);
          EXPECT_TRUE(peek.head.empty());
          return true;
        }
        short_head = peek.head.size();
        return false;
      });
  EXPECT_EQ(removed, std::vector<std::string>{unsized});
  EXPECT_EQ(unsized_offers, std::vector<std::string>{unsized});
  EXPECT_EQ(short_head, 10u);
  EXPECT_FALSE(exists(unsized));
  EXPECT_TRUE(exists(short_one));
  EXPECT_TRUE(Segment::unlink(short_one).ok());
}

TEST_F(ShmCleanup, WrongModeSegmentIsOfferedWithoutItsBytes) {
  const std::string name = random_segment_name(mine_);
  Result<Segment> created = Segment::create(name, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  std::memcpy(created.value.data(), "secret", 6);
  ASSERT_EQ(::fchmod(created.value.fd(), 0644), 0);

  Status seen = Status::kOk;
  std::size_t head_size = 1;
  EXPECT_TRUE(remove_segments_if(mine_, [&](std::string_view, const SegmentPeek& peek) {
                seen = peek.status;
                head_size = peek.head.size();
                return false;
              }).empty());
  EXPECT_EQ(seen, Status::kWrongMode);
  EXPECT_EQ(head_size, 0u);
  EXPECT_TRUE(Segment::unlink(name).ok());
}

// Junk at a matching name (here a FIFO, which would block a plain open) is offered, not
// opened, and can be removed.
TEST_F(ShmCleanup, NonRegularFilesAreOfferedAsSuchAndCanBeRemoved) {
  const std::string fifo = random_segment_name(mine_);
  ASSERT_EQ(::mkfifo(path_of(fifo).c_str(), 0600), 0);
  Status seen = Status::kOk;
  const std::vector<std::string> removed =
      remove_segments_if(mine_, [&](std::string_view, const SegmentPeek& peek) {
        seen = peek.status;
        return true;
      });
  EXPECT_EQ(seen, Status::kNotRegularFile);
  EXPECT_EQ(removed, std::vector<std::string>{fifo});
  EXPECT_FALSE(exists(fifo));
}

TEST_F(ShmCleanup, ThrowingOrEmptyPredicateRemovesNothing) {
  const std::string name = make(mine_, "DEAD");
  std::vector<std::string> removed;
  EXPECT_NO_THROW(removed = remove_segments_if(mine_, [](std::string_view, const SegmentPeek&) -> bool {
                    throw std::runtime_error("cannot decide");
                  }));
  EXPECT_TRUE(removed.empty());
  EXPECT_TRUE(remove_segments_if(mine_, RemovePredicate{}).empty());
  EXPECT_TRUE(exists(name));
  EXPECT_TRUE(Segment::unlink(name).ok());
}

TEST_F(ShmCleanup, AnotherUsersSegmentIsNeverOfferedOrRemoved) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  const std::string foreign = random_segment_name(mine_);
  Result<Segment> created = Segment::create(foreign, kPage);
  ASSERT_TRUE(created.ok()) << to_string(created.status);
  ASSERT_EQ(::fchown(created.value.fd(), 65534, 65534), 0);
  const std::string own = make(mine_, "DEAD");

  std::vector<std::string> offered;
  const std::vector<std::string> removed =
      remove_segments_if(mine_, [&](std::string_view name, const SegmentPeek&) {
        offered.emplace_back(name);
        return true;
      });
  EXPECT_EQ(offered, std::vector<std::string>{own});
  EXPECT_EQ(removed, std::vector<std::string>{own});
  EXPECT_TRUE(exists(foreign));
  EXPECT_TRUE(Segment::unlink(foreign).ok());
}

}  // namespace
}  // namespace memchannel::shm
