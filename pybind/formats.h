// Buffer formats at the Python boundary: what a sender may send and how a refused format is
// reported. The PEP 3118 parser itself is pybind/pep3118.h (no Python there).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pybind/pep3118.h"

namespace memchannel::py_glue {

// Itemsize of a struct-module (PEP 3118) format. A numpy dtype spelling such as "<f8",
// "float32" or "f8,i4" is accepted too and rewritten to its PEP 3118 form (as numpy exports
// it: "T{d:f0:i:f1:}"), when numpy is importable. The caller checks the result.
uint32_t format_itemsize(std::string& format);

// Why `format` with `itemsize` cannot describe a Buffer (see pybind/pep3118.h), as the error a
// sender gets: TypeError for pointer items, ValueError for the rest.
[[noreturn]] void refuse_format(const std::string& what, std::string_view format, uint64_t itemsize);

// The sender's side of the format check: what a Buffer will carry must pass the receiver's.
inline void check_outgoing_format(const char* what, std::string_view format, uint64_t itemsize) {
  if (!format_fits(format, itemsize)) refuse_format(what, format, itemsize);
}

}  // namespace memchannel::py_glue
