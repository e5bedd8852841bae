// Object messages (send_object / recv_object) and batches (send_many / recv_many,
// send_objects / recv_objects) as METH_FASTCALL methods of Channel: pybind/objects.cc.
#pragma once

#include <pybind11/pybind11.h>

namespace memchannel::py_glue {

// Adds the object and batch methods to the pybind11 class `channel_cls` (of PyChannel).
void add_object_methods(pybind11::handle channel_cls);

}  // namespace memchannel::py_glue
