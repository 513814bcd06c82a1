"""Suite-wide settings (the only place that sets them). The test models are tiny: one intra-op thread avoids OpenMP spin contention
that made their forwards 10-30× slower on a busy 2-core machine."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
