#include "pybind/formats.h"

#include <pybind11/pybind11.h>

#include "pybind/errors.h"

namespace memchannel::py_glue {

namespace py = pybind11;

uint32_t format_itemsize(std::string& format) {
  try {
    return py::module_::import("struct").attr("calcsize")(format).cast<uint32_t>();
  } catch (py::error_already_set&) {
  }
  uint64_t itemsize = 0;
  try {
    py::module_ np = py::module_::import("numpy");
    // Two items: numpy describes a one-item array of a packed struct with a format its own
    // parser reads with padding (np.empty(1, "f8,i4") exports 'T{d:f0:i:f1:}', read back as
    // 16 bytes); two or more get explicit byte-order marks ('T{=d:f0:@i:f1:}').
    py::object arr = np.attr("empty")(2, py::arg("dtype") = format);
    py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(arr.ptr()));
    if (!view) throw py::error_already_set();
    const std::string converted = py::str(view.attr("format"));
    itemsize = view.attr("itemsize").cast<uint64_t>();
    view.attr("release")();
    format = converted;
  } catch (py::error_already_set&) {
    throw py::value_error("format '" + format + "' is not a struct-module / PEP 3118 format "
                          "(e.g. 'B', '<i4', '<d') nor a numpy dtype");
  }
  if (itemsize > UINT32_MAX) throw py::value_error("format '" + format + "': items larger than 4 GiB");
  return static_cast<uint32_t>(itemsize);
}

[[noreturn]] void refuse_format(const std::string& what, std::string_view format, uint64_t itemsize) {
  const FormatInfo info = parse_format(format);
  const std::string shown = "'" + printable(format) + "'";
  if (info.verdict == FormatVerdict::kPointer) {
    throw py::type_error(what + ": buffers whose items are pointers (format " + shown + ": " + info.why +
                         ") cannot cross a channel: the receiver would dereference this process's "
                         "addresses. Use send_object() (pickled), e.g. for numpy object arrays");
  }
  if (info.verdict == FormatVerdict::kInvalid) {
    throw py::value_error(what + ": buffer format " + shown + " is not a valid PEP 3118 format (" + info.why +
                          "); send memoryview(x).cast('B') to send the raw bytes");
  }
  throw py::value_error(what + ": buffer format " + shown + " describes items of " +
                        std::to_string(info.itemsize) + " bytes, but the buffer's itemsize is " +
                        std::to_string(itemsize) + "; send memoryview(x).cast('B') to send the raw bytes");
}

}  // namespace memchannel::py_glue
