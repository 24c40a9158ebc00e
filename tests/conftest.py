"""Shared fixtures: paths of the test plug-in workloads, one torch thread for a module."""

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def plugin_path() -> str:
    """Path of tests/workloads/plugin_models.py (factories: single, multitask, sgd, ...)."""
    return str(HERE / "workloads" / "plugin_models.py")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests, restored after: tiny models run fastest
    single-threaded on a shared 2-core machine, and their bytes do not depend on it. A module
    opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
