import os
import sys

import pytest

# Test isolation: every test session names its segments with its own random prefix (still
# starting with "memchannel-"), inherited by the processes it starts.
os.environ.setdefault("MEMCHANNEL_SHM_PREFIX", "memchannel-test%s-" % os.urandom(6).hex())
SHM_PREFIX = os.environ["MEMCHANNEL_SHM_PREFIX"]

# Tests run against the installed package (make test installs it into the venv).
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=["heap", "shm"])
def backend(request):
    """Backends every channel test runs on."""
    return request.param


def blocks_in_use(ch):
    return ch.stats()["blocks_in_use"]
