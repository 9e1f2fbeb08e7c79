import json
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
