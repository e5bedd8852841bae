import os
import sys

import pytest

# Tests run against the installed package (make test installs it into the venv).
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=["heap"])
def backend(request):
    """Backends every channel test runs on."""
    return request.param


def blocks_in_use(ch):
    return ch.stats()["blocks_in_use"]
