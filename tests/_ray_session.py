"""The one local Ray session (2 CPUs, as CI) a Ray test module shares: Ray starts in seconds, not per test."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
