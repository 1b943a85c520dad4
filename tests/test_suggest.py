import pytest
import torch

from quantfair.config import RunConfig
from quantfair.errors import UsageError
from quantfair.models import load_model
from quantfair.quantize import QuantScheme
from quantfair.session import AuditSession
from quantfair.suggest import load_suggestion, suggest


def session_for(loaded, units=4) -> AuditSession:
    config = RunConfig(model=loaded.name, scheme=QuantScheme(bits=4),
                       languages=("en", "he", "zh"), units=units)
    return AuditSession(config, announce=lambda message: None, loaded=loaded)


@pytest.fixture
def planted():
    """A tiny Llama with heavy-tailed layer-2 MLP weights: one huge weight in up_proj and in
    down_proj, both on an intermediate unit whose gate is zero, so the FP model ignores them,
    while per-tensor INT4 scales to them and rounds the rest of the MLP to zero: quantizing
    that layer then dominates the loss."""
    loaded = load_model("tiny-llama")
    params = dict(loaded.model.named_parameters())
    unit = 5
    with torch.no_grad():
        params["model.layers.2.mlp.gate_proj.weight"][unit, :] = 0.0
        params["model.layers.2.mlp.up_proj.weight"][unit, 0] = 1000.0
        params["model.layers.2.mlp.down_proj.weight"][0, unit] = 1000.0
    return loaded


def test_suggest_picks_the_planted_sensitive_layer_first(planted):
    session = session_for(planted)
    result = suggest(session, 0.40, calibration_units=3)
    first = next(step for step in result.trace if step.step == 1 and step.chosen)
    assert first.candidate in ("L2", "L2.mlp")
    assert result.overhead <= 0.40
    assert set(result.calibration_units).isdisjoint(session.corpus.units)
    labels = [row["label"] for row in result.comparison]
    assert labels[:4] == ["suggested", "none", "recommended", "random (same budget)"]
    assert load_suggestion(session)["strategy"] == result.strategy


def test_zero_budget_suggests_none(tiny_models):
    result = suggest(session_for(tiny_models["tiny-gpt2"]), 0.0)
    assert result.strategy == "none" and not result.trace


def test_budget_below_the_smallest_unit_says_so(tiny_models):
    result = suggest(session_for(tiny_models["tiny-gpt2"]), 1e-7)
    assert result.strategy == "none" and "below the smallest protection unit" in result.note


def test_budget_above_everything_is_a_usage_error(tiny_models):
    with pytest.raises(UsageError, match="between 0% and 100%"):
        suggest(session_for(tiny_models["tiny-gpt2"]), 1.5)
