import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per fit: on the shared 2-core machine it was 3x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
