"""The audit context on a tiny model: strategies the audits derive from others."""

import pytest

from quantfair.audit import Matched
from quantfair.config import RunConfig
from quantfair.context import AuditContext
from quantfair.session import AuditSession


@pytest.fixture(scope="module")
def context():
    session = AuditSession(RunConfig(model="tiny-gpt2", languages=("en", "de"), units=2),
                           announce=lambda message: None)
    return AuditContext(session)


@pytest.mark.parametrize("selector", ["random", "magnitude"])
def test_budget_matched_selectors_protect_as_much_as_their_reference(context, selector):
    reference = context.overhead("L0+Llast").protected
    matched = context.overhead(context.strategy_text(Matched(selector, "L0+Llast"))).protected
    assert matched == pytest.approx(reference, rel=0.01)
