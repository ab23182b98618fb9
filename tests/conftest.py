"""Shared test configuration: hypothesis profiles and the ``one_thread`` fixture.

The default profile is derandomised so that CI is reproducible; ``HYPOTHESIS_PROFILE=explore``
draws fresh examples for local bug hunting.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "explore", deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of thousands of tiny problems (no OpenMP start-up
    and contention); the previous count is restored after the module. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
