import importlib
import os

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


def import_reference(name: str):
    """Import an independent reference code (Pylians, colossus, CAMB, readgadget, yt, ...).

    Missing on a developer's machine: the test is skipped. Missing in CI (``CI`` set): the test
    fails, so a comparison against an independent code can never be skipped silently there.
    """
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.fixture
def reference():
    """``reference("Pk_library")``: see :func:`import_reference`."""
    return import_reference


@pytest.fixture
def thread_client():
    """A Dask client with one in-process worker: cheap, for campaign tests where separate
    processes are not the point."""
    import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client
