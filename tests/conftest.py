import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

VECTORS = Path(__file__).parent / "vectors"

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50
)
settings.load_profile("default")


def load_vectors(name: str):
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="session")
def vectors():
    return load_vectors


def pytest_configure(config):
    # CI must exercise the native core: a missing extension fails the run unless the
    # Python path was asked for.
    from psi import backend

    if not backend.describe()["extension"] and os.environ.get(backend.ENV) != "off":
        pytest.exit(
            "the C extension psi._native is not built: reinstall with `make venv` (needs a C "
            f"compiler), or set {backend.ENV}=off to test the Python path alone",
            returncode=3,
        )


def pytest_collection_modifyitems(config, items):
    # Benchmark-marked tests take minutes; they run only when selected with -m benchmark.
    if "benchmark" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest -m benchmark`")
    for item in items:
        if item.get_closest_marker("benchmark"):
            item.add_marker(skip)
