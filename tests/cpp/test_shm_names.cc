// Segment names: unguessable (>= 64 random bits each), distinct, and validated
// (docs/reliability.md item 12; docs/design.md, Shared-memory rules).
#include "shm/names.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

namespace memchannel::shm {
namespace {

constexpr int kNameCount = 10'000;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::vector<std::string> generate_names(const std::string& prefix) {
  std::vector<std::string> names;
  names.reserve(kNameCount);
  for (int i = 0; i < kNameCount; ++i) names.push_back(random_segment_name(prefix));
  return names;
}

TEST(ShmNames, TenThousandNamesAreDistinct) {
  const std::string prefix = random_test_prefix();
  ASSERT_FALSE(prefix.empty());
  const std::vector<std::string> names = generate_names(prefix);
  const std::unordered_set<std::string> distinct(names.begin(), names.end());
  EXPECT_EQ(distinct.size(), names.size());
}

// Every name ends in a hex suffix of at least 64 bits, and every bit of that suffix varies
// independently of the others' position: over 10,000 names each bit is set about half the
// time. A fixed, counter-like or pid-derived field would sit at 0 % or 100 % (or far from
// 50 %) for its high bits. Bounds of 40-60 % are 20 standard deviations wide: cannot flake.
TEST(ShmNames, EachNameCarriesAtLeast64RandomBits) {
  const std::string prefix = random_test_prefix();
  ASSERT_FALSE(prefix.empty());
  const std::vector<std::string> names = generate_names(prefix);

  const std::size_t suffix_chars = names.front().size() - prefix.size();
  ASSERT_GE(suffix_chars * 4, 64u);
  std::vector<int> ones(suffix_chars * 4, 0);
  for (const std::string& name : names) {
    ASSERT_TRUE(name.starts_with(prefix)) << name;
    ASSERT_EQ(name.size(), prefix.size() + suffix_chars) << name;
    ASSERT_TRUE(is_memchannel_name(name)) << name;
    for (std::size_t i = 0; i < suffix_chars; ++i) {
      const int v = hex_value(name[prefix.size() + i]);
      ASSERT_GE(v, 0) << "non-hex character in " << name;
      for (int bit = 0; bit < 4; ++bit) ones[i * 4 + static_cast<std::size_t>(bit)] += (v >> bit) & 1;
    }
  }
  int random_bits = 0;
  for (std::size_t bit = 0; bit < ones.size(); ++bit) {
    EXPECT_GT(ones[bit], kNameCount * 4 / 10) << "bit " << bit << " is rarely set";
    EXPECT_LT(ones[bit], kNameCount * 6 / 10) << "bit " << bit << " is nearly always set";
    if (ones[bit] > kNameCount * 4 / 10 && ones[bit] < kNameCount * 6 / 10) ++random_bits;
  }
  EXPECT_GE(random_bits, 64);
}

TEST(ShmNames, DefaultPrefixIsMemchannel) {
  // The test runner does not set MEMCHANNEL_SHM_PREFIX; if it ever does, the prefix must still
  // be a valid memchannel prefix.
  EXPECT_TRUE(is_valid_prefix(default_prefix()));
  const std::string name = random_segment_name();
  EXPECT_TRUE(name.starts_with(default_prefix()));
  EXPECT_TRUE(is_memchannel_name(name));
}

TEST(ShmNames, TestPrefixesAreValidAndDistinct) {
  const std::string a = random_test_prefix();
  const std::string b = random_test_prefix();
  EXPECT_TRUE(a.starts_with("memchannel-test"));
  EXPECT_TRUE(a.ends_with("-"));
  EXPECT_TRUE(is_valid_prefix(a));
  EXPECT_NE(a, b);
  // A name under one test prefix never starts with another: sweeps cannot cross tests.
  EXPECT_FALSE(random_segment_name(a).starts_with(b));
}

TEST(ShmNames, ValidatorRejectsWhatCouldEscapeOrCollide) {
  EXPECT_TRUE(is_memchannel_name("memchannel-0123abcd"));
  EXPECT_TRUE(is_memchannel_name("memchannel-test00ff-Abc_9.x"));
  EXPECT_FALSE(is_memchannel_name(""));
  EXPECT_FALSE(is_memchannel_name("memchannel-"));         // nothing after the prefix
  EXPECT_FALSE(is_memchannel_name("memchannel"));
  EXPECT_FALSE(is_memchannel_name("other-0123"));
  EXPECT_FALSE(is_memchannel_name("/memchannel-0123"));     // leading slash
  EXPECT_FALSE(is_memchannel_name("memchannel-a/../../etc/passwd"));
  EXPECT_FALSE(is_memchannel_name("memchannel-a b"));
  EXPECT_FALSE(is_memchannel_name("memchannel-\xc3\xa9"));  // non-ASCII
  EXPECT_FALSE(is_memchannel_name(std::string_view("memchannel-a\0b", 14)));
  EXPECT_TRUE(is_memchannel_name("memchannel-" + std::string(kMaxNameLength - 11, 'a')));
  EXPECT_FALSE(is_memchannel_name("memchannel-" + std::string(kMaxNameLength - 10, 'a')));
}

TEST(ShmNames, InvalidPrefixGivesEmptyName) {
  EXPECT_EQ(random_segment_name(""), "");
  EXPECT_EQ(random_segment_name("other-"), "");
  EXPECT_EQ(random_segment_name("memchannel-a/"), "");
  EXPECT_EQ(random_segment_name(std::string(kMaxPrefixLength + 1, 'm')), "");
  const std::string longest = "memchannel-" + std::string(kMaxPrefixLength - 11, 'p');
  EXPECT_TRUE(is_memchannel_name(random_segment_name(longest)));
}

TEST(ShmNames, FillRandomFillsEveryByte) {
  // 4 KiB of zeros surviving fill_random unchanged has probability 2^-32768.
  std::array<std::byte, 4096> buf{};
  ASSERT_TRUE(fill_random(buf));
  int nonzero = 0;
  for (const std::byte b : buf) nonzero += b != std::byte{0};
  EXPECT_GT(nonzero, 3500);  // expected 4080; each byte is zero with probability 1/256
}

}  // namespace
}  // namespace memchannel::shm
