// memchannel._memchannel._Sync, the bindings of core/sync.h (pybind/sync.cc).
#pragma once

#include <pybind11/pybind11.h>

namespace memchannel::py_glue {

// Registers the _Sync class on the module (called once per interpreter from pybind/module.cc).
void register_sync(pybind11::module_& m);

}  // namespace memchannel::py_glue
