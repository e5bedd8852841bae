// PEP 3118 buffer format strings: a small validator for the formats a Buffer exports.
//
// A Buffer hands its format, itemsize and shape to whoever opens it (memoryview, numpy). The
// receiver reads them from arena memory, which a peer may have written anything into, so they
// are checked here before they reach Python: a format numpy would turn into pointers (`O`,
// `&`, `X{}`) makes numpy dereference another process's addresses. Checked:
//
//   * the format parses (struct-module syntax plus PEP 3118's extensions: byte-order marks
//     before any item and after a sub-array shape, where numpy writes them; repeat counts;
//     sub-array shapes `(2,3)d`; structs `T{...}`; field names `:name:`; complex
//     `Zf`/`Zd`/`Zg`; UCS4 `w`, UCS2 `u`; long double `g`). No NUL byte, no unknown code;
//   * it has no pointer item: `O` (a PyObject*), `&` (pointer to the next item) and `X{}`
//     (function pointer) are refused. `P` (void*) is allowed: memoryview reads it as a plain
//     unsigned integer and never follows it, and numpy refuses the format (ValueError);
//   * the itemsize it implies equals the itemsize given with it.
//
// Itemsize rules. Standard sizes and no alignment after `<`, `>`, `=`, `!`; native sizes and
// no alignment after `^` (numpy's unaligned native); native sizes and alignment in `@`
// (the default). For `@` two readings exist and both are accepted: the struct module's (no
// padding after the last item: struct.calcsize("di") == 12, and a `T{...}` counted unpadded)
// and numpy's (every struct padded to its largest alignment, as in C: 16). numpy itself
// exports the first reading for some arrays and parses the second. Byte-order marks stay in
// force until the next one, across `T{` and `}`, as in numpy's parser.
//
// Cost: a one- or two-character format (`B`, `<d`, `l`: every plain numpy dtype) is one table
// lookup, so the receive path of typed messages stays cheap; longer formats are parsed once per
// message, without allocating and without calling Python.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace memchannel::py_glue {

enum class FormatVerdict : uint8_t { kOk, kPointer, kInvalid };

struct FormatInfo {
  FormatVerdict verdict = FormatVerdict::kInvalid;
  uint64_t itemsize = 0;          // the struct module's size (no trailing padding)
  uint64_t aligned_itemsize = 0;  // numpy's size (native `@` structs padded to their alignment)
  const char* why = "";           // for kPointer / kInvalid: what is wrong (a static string)
  bool accepts(uint64_t n) const {
    return verdict == FormatVerdict::kOk && (n == itemsize || n == aligned_itemsize);
  }
};

namespace pep3118 {

// Largest itemsize the parser accepts; a BlockMeta itemsize is a u32.
inline constexpr uint64_t kMaxItemsize = 0xffffffffull;
inline constexpr int kMaxDepth = 64;  // nested T{...}

enum class Mode : uint8_t { kAligned, kNative, kStandard };  // '@'; '^'; '<' '>' '=' '!'

// Size of one item of `code` (0 = not an item code in this mode).
constexpr uint8_t native_size(char c) {
  switch (c) {
    case 'x': case 'c': case 'b': case 'B': case '?': case 's': case 'p': return 1;
    case 'h': case 'H': case 'e': case 'u': return 2;
    case 'i': case 'I': case 'f': case 'w': return 4;
    case 'l': case 'L': return sizeof(long);
    case 'q': case 'Q': case 'd': return 8;
    case 'n': case 'N': return sizeof(size_t);
    case 'P': return sizeof(void*);
    case 'g': return sizeof(long double);
    default: return 0;
  }
}
constexpr uint8_t standard_size(char c) {
  switch (c) {
    case 'x': case 'c': case 'b': case 'B': case '?': case 's': case 'p': return 1;
    case 'h': case 'H': case 'e': case 'u': return 2;
    case 'i': case 'I': case 'l': case 'L': case 'f': case 'w': return 4;
    case 'q': case 'Q': case 'd': return 8;
    default: return 0;  // n, N, P, g exist only in native modes (as in the struct module)
  }
}
constexpr uint8_t native_align(char c) {
  return c == 'g' ? alignof(long double) : (c == 's' || c == 'p' || c == 'x') ? 1 : native_size(c);
}

// The fast path: itemsize of a one-character format in the default mode, and of a
// byte-order mark followed by one code; 0 when the format needs the full parser (or is bad).
struct ShortTables {
  std::array<uint8_t, 256> native{};
  std::array<uint8_t, 256> standard{};
  constexpr ShortTables() {
    for (int c = 0; c < 256; ++c) {
      native[c] = native_size(static_cast<char>(c));
      standard[c] = standard_size(static_cast<char>(c));
    }
  }
};
inline constexpr ShortTables kShort{};

constexpr bool is_order_mark(char c) {
  return c == '@' || c == '=' || c == '<' || c == '>' || c == '!' || c == '^';
}
constexpr bool is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
constexpr uint64_t round_up(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

struct Parser {
  std::string_view s;
  size_t i = 0;
  Mode mode = Mode::kAligned;
  const char* why = nullptr;
  bool pointer = false;

  bool fail(const char* w) {
    if (why == nullptr) why = w;
    return false;
  }
  bool more() const { return i < s.size(); }
  void skip_space() {
    while (more() && is_space(s[i])) ++i;
  }
  bool number(uint64_t& out) {
    out = 0;
    while (more() && is_digit(s[i])) {
      out = out * 10 + static_cast<uint64_t>(s[i] - '0');
      if (out > kMaxItemsize) return fail("a count or dimension is too large");
      ++i;
    }
    return true;
  }
  static bool mul(uint64_t& a, uint64_t b) {
    if (b != 0 && a > kMaxItemsize / b) return false;
    a *= b;
    return true;
  }

  // Items up to the end (close == 0) or a closing '}'. Two readings are computed side by
  // side (they differ only in native '@' alignment): *size is the struct module's, which
  // counts a T{...} at its unpadded size and adds no final padding; *padded is numpy's, which
  // pads every struct to its alignment (when '@' is in force at its end).
  bool sequence(char close, int depth, uint64_t* size, uint64_t* padded, uint64_t* align) {
    if (depth > kMaxDepth) return fail("structs nested too deeply");
    uint64_t offset = 0, offset_padded = 0, max_align = 1;
    for (;;) {
      skip_space();
      if (!more()) {
        if (close != 0) return fail("'T{' without its closing '}'");
        break;
      }
      char c = s[i];
      if (c == '}') {
        if (close == 0) return fail("'}' without an opening 'T{'");
        ++i;
        break;
      }
      if (is_order_mark(c)) {
        set_mode(c);
        ++i;
        continue;
      }
      uint64_t repeat = 1;
      if (c == '(') {  // sub-array shape: (d0,d1,...)
        ++i;
        for (;;) {
          skip_space();
          uint64_t d = 0;
          if (!more() || !is_digit(s[i])) return fail("a sub-array shape needs numbers: '(2,3)d'");
          if (!number(d)) return false;
          if (!mul(repeat, d)) return fail("a sub-array is too large");
          skip_space();
          if (more() && s[i] == ',') {
            ++i;
            continue;
          }
          if (more() && s[i] == ')') {
            ++i;
            break;
          }
          return fail("a sub-array shape is not closed by ')'");
        }
        skip_space();
        while (more() && is_order_mark(s[i])) set_mode(s[i++]);  // numpy writes them here: "(2,3)=f"
      }
      uint64_t count = 1;
      bool has_count = false;
      if (more() && is_digit(s[i])) {
        if (!number(count)) return false;
        has_count = true;
      }
      if (!more()) return fail("the format ends after a count or shape");
      c = s[i++];
      uint64_t item = 0, item_padded = 0, item_align = 1;
      if (c == 'O') {
        pointer = true;
        return fail("'O' items are pointers to Python objects");
      } else if (c == '&') {
        pointer = true;
        return fail("'&' items are pointers");
      } else if (c == 'X') {
        pointer = true;
        return fail("'X{}' items are function pointers");
      } else if (c == 'T') {
        if (!more() || s[i] != '{') return fail("'T' must be followed by '{'");
        ++i;
        uint64_t inner = 0, inner_padded = 0, inner_align = 1;
        if (!sequence('}', depth + 1, &inner, &inner_padded, &inner_align)) return false;
        item = inner;
        item_padded = inner_padded;
        item_align = mode == Mode::kAligned ? inner_align : 1;  // as numpy: the mode after the '}'
      } else if (c == 'Z') {
        if (!more()) return fail("'Z' must be followed by 'f', 'd' or 'g'");
        const char part = s[i++];
        if (part != 'f' && part != 'd' && part != 'g') return fail("'Z' must be followed by 'f', 'd' or 'g'");
        const uint8_t one = mode == Mode::kStandard ? standard_size(part) : native_size(part);
        if (one == 0) return fail("'Zg' exists only in native byte order");
        item = item_padded = 2ull * one;
        item_align = mode == Mode::kAligned ? native_align(part) : 1;
      } else {
        const uint8_t one = mode == Mode::kStandard ? standard_size(c) : native_size(c);
        if (one == 0) {
          if (native_size(c) != 0) return fail("'n', 'N', 'P' and 'g' exist only in native byte order");
          return fail("unknown format character");
        }
        item = one;
        item_align = mode == Mode::kAligned ? native_align(c) : 1;
        if (c == 's' || c == 'p') {  // the count is the byte length of one string item
          item = has_count ? count : 1;
          count = 1;
        }
        item_padded = item;
      }
      uint64_t total = item, total_padded = item_padded;
      if (!mul(total, count) || !mul(total, repeat) || !mul(total_padded, count) || !mul(total_padded, repeat)) {
        return fail("an item is too large");
      }
      if (c != 'x') {
        offset = round_up(offset, item_align);
        offset_padded = round_up(offset_padded, item_align);
        if (item_align > max_align) max_align = item_align;
      }
      offset += total;
      offset_padded += total_padded;
      if (offset_padded > kMaxItemsize) return fail("the item size is too large");
      skip_space();
      if (more() && s[i] == ':') {  // field name
        ++i;
        while (more() && s[i] != ':') {
          if (s[i] == '\0') return fail("a NUL character in a field name");
          ++i;
        }
        if (!more()) return fail("a field name is not closed by ':'");
        ++i;
      }
    }
    *size = offset;
    *padded = mode == Mode::kAligned ? round_up(offset_padded, max_align) : offset_padded;
    *align = max_align;
    return true;
  }
  void set_mode(char c) { mode = c == '@' ? Mode::kAligned : c == '^' ? Mode::kNative : Mode::kStandard; }
};

}  // namespace pep3118

// The full check of `fmt` (see the top of this file).
inline FormatInfo parse_format(std::string_view fmt) {
  FormatInfo out;
  if (fmt.empty()) {
    out.why = "the format is empty";
    return out;
  }
  pep3118::Parser p{fmt};
  uint64_t size = 0, padded = 0, align = 1;
  if (!p.sequence(0, 0, &size, &padded, &align)) {
    out.verdict = p.pointer ? FormatVerdict::kPointer : FormatVerdict::kInvalid;
    out.why = p.why;
    return out;
  }
  if (size == 0) {
    out.why = "the format describes items of 0 bytes";
    return out;
  }
  out.verdict = FormatVerdict::kOk;
  out.itemsize = size;
  out.aligned_itemsize = padded;
  return out;
}

// Whether `fmt` describes items of `itemsize` bytes with no pointer in them: the check run on
// every typed message received (and every typed buffer sent). One table lookup for the formats
// plain numpy dtypes and the struct module's single codes produce.
inline bool format_fits(std::string_view fmt, uint64_t itemsize) {
  if (fmt.size() == 1) {
    const uint8_t n = pep3118::kShort.native[static_cast<uint8_t>(fmt[0])];
    return n != 0 && n == itemsize;
  }
  if (fmt.size() == 2 && pep3118::is_order_mark(fmt[0])) {
    const char c = fmt[1];
    const uint8_t n = (fmt[0] == '@' || fmt[0] == '^') ? pep3118::kShort.native[static_cast<uint8_t>(c)]
                                                       : pep3118::kShort.standard[static_cast<uint8_t>(c)];
    if (n != 0) return n == itemsize;
  }
  return parse_format(fmt).accepts(itemsize);
}

}  // namespace memchannel::py_glue
