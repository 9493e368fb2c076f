"""Test-suite settings: offline, one torch thread per pytest-xdist worker, GPU tests skipped on CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.backends.mkldnn.enabled = False  # see condiff.models.registry.configure_cpu: steady CPU timings

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two workers on two cores: no oversubscription


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny networks: fastest, and immune to CPU oversubscription
    (use with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
