import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed every global RNG a test might touch (library code uses explicit Generators)."""
    np.random.seed(0)  # noqa: NPY002 - the legacy global state is what we pin here
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
