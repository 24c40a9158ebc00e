"""Shared fixtures: paths of the test plug-in workloads."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def plugin_path() -> str:
    """Path of tests/workloads/plugin_models.py (factories: single, multitask, sgd, ...)."""
    return str(HERE / "workloads" / "plugin_models.py")
