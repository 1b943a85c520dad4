import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_result_cache(tmp_path_factory, monkeypatch):
    """Evaluation results go to a per-session cache; converted models stay shared."""
    cache = tmp_path_factory.getbasetemp() / "quantfair-cache"
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(cache))


@pytest.fixture(scope="session")
def tiny_models():
    from quantfair.models import TINY_MODEL_TYPES, load_model

    return {name: load_model(name) for name in TINY_MODEL_TYPES}
