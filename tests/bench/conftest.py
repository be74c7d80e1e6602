"""One dataset cache for the whole bench test session (the tiny suite's datasets are simulated once)."""

import pytest


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """A session-wide dataset cache folder."""
    return tmp_path_factory.mktemp("bench_cache")
