// memchannel.share and buffer pools: bindings (pybind/shares.cc).
#pragma once

#include <pybind11/pybind11.h>

namespace memchannel::py_glue {

namespace py = pybind11;

// Registers memchannel._memchannel.Pool, _make_pool and _share.
void register_shares(py::module_& m);

}  // namespace memchannel::py_glue
