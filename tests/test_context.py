"""The audit context on a tiny model: strategies the audits derive from others."""

import pytest
import torch

from quantfair.audit import Matched
from quantfair.config import RunConfig
from quantfair.context import AuditContext
from quantfair.quantize import QuantScheme
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


@pytest.mark.parametrize("selector", ["random", "magnitude"])
def test_a_budget_of_a_few_weights_is_matched_weight_for_weight(context, selector):
    """A share of a few weights is below one entry in every tensor: rounded per tensor it kept
    none, and `random` at the budget of `superweights:8` was `none` under another name."""
    matched = context.strategy_text(Matched(selector, "superweights:8"))
    assert context.overhead(matched).protected == context.overhead("superweights:8").protected


def test_budget_matched_selectors_spend_the_budget_where_only_linear_weights_are_quantized(
        monkeypatch):
    """Entry selectors keep a share of the *quantized* parameters: where embeddings and norms
    stay in full precision, matching a budget takes a larger share, never more parameters."""
    session = AuditSession(RunConfig(model="tiny-gpt2", languages=("en", "de"), units=2,
                                     scheme=QuantScheme.parse("int4-g128-linear")),
                           announce=lambda message: None)
    context = AuditContext(session)
    resolver = session.resolver()
    selected = []
    select = resolver._cached_selector
    monkeypatch.setattr(resolver, "_cached_selector",
                        lambda term: selected.append(term) or select(term))
    reference = context.overhead("L0+Llast").fraction
    matched = context.overhead(context.strategy_text(Matched("random", "L0+Llast"))).fraction
    assert 0.999 * reference <= matched <= reference
    # sized by counting entries, not by selecting them with another selector first
    assert [term.partition(":")[0] for term in selected] == ["random"]


def test_layer_statistics_are_computed_once_for_every_process(context, tmp_path, monkeypatch):
    from quantfair import weights

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))
    computed = AuditContext(context.session).layer_statistics()
    assert set(computed) == set(range(context.session.resolver().layers))
    assert computed[0]["variance"] == pytest.approx(float(torch.cat(
        [context.session.bank.fp[c.name].flatten()
         for c in context.session.bank.layer_matrices()[0]]).double().var(correction=0)))

    def fail(bank):
        raise AssertionError("computed again")

    monkeypatch.setattr(weights, "layer_statistics", fail)
    assert AuditContext(context.session).layer_statistics() == computed  # another process
    monkeypatch.setattr(weights, "STATISTICS_DIGEST", "changed")  # a new definition
    with pytest.raises(AssertionError, match="computed again"):
        AuditContext(context.session).layer_statistics()


def test_a_suggestion_searched_on_units_this_run_audits_is_not_audited_as_held_out():
    from quantfair.errors import UsageError
    from quantfair.suggest import Suggestion, save

    session = AuditSession(RunConfig(model="tiny-gpt2", languages=("en", "de"), units=3),
                           announce=lambda message: None)
    audited = session.corpus.units
    held_out = [unit for unit in session.calibration.units if unit not in audited]
    suggestion = Suggestion(model="tiny-gpt2", scheme="int4", budget=0.05, strategy="L0",
                            overhead=0.0, score=1.0, calibration_units=held_out[:2])
    save(session, suggestion)
    assert AuditContext(session, candidate="suggested").candidate_text() == "L0"
    suggestion.confirmation_units = [held_out[2], audited[1]]
    save(session, suggestion)
    with pytest.raises(UsageError, match=f"searched on {audited[1]}, which this run audits"):
        AuditContext(session, candidate="suggested").candidate_text()
    suggestion.audit_units = held_out[:len(audited)]  # as many units as this run, others
    save(session, suggestion)  # (a corpus file whose lines were reordered since)
    with pytest.raises(UsageError, match="the same number of units, sampled otherwise: the "
                                         "corpus file lists its units in another order"):
        AuditContext(session, candidate="suggested").candidate_text()


def test_an_audit_of_a_calibrated_suggestion_on_other_text_says_so_in_its_report():
    """In what the process publishes, for the summary and the HTML: a line a worker said on
    its own stderr was lost under xdist."""
    from quantfair.suggest import Suggestion, save

    said = []
    session = AuditSession(RunConfig(model="tiny-gpt2", languages=("en", "de"), units=3),
                           announce=said.append)
    save(session, Suggestion(model="tiny-gpt2", scheme="int4", budget=0.05,
                             strategy="superweights:2", overhead=0.0, score=1.0,
                             languages=["en", "he"], selector_texts="another text"))
    context = AuditContext(session, candidate="suggested")
    assert context.candidate_text() == context.candidate_text() == "superweights:2"
    assert context.payload()["suggestion"]["reselected"] == (
        "its superweights:2 chooses entries on the calibration text of the languages and units "
        "given here, which differs from the search's, so the entries kept may not be those it "
        "scored; give --languages en,he --units as in the search to keep the same")
    assert not [line for line in said if "warning" in line]  # said once, by the report
    # searched on a corpus edited since: giving its languages and units changes nothing
    save(session, Suggestion(model="tiny-gpt2", scheme="int4", budget=0.05,
                             strategy="superweights:2", overhead=0.0, score=1.0,
                             languages=["en", "de"], selector_texts="another text",
                             corpus="mine.jsonl", corpus_digest="the text before an edit"))
    assert AuditContext(session, candidate="suggested").payload()["suggestion"][
        "reselected"] == (
        "its superweights:2 chooses entries on the calibration text of this corpus, not the one "
        "it was searched on, so the entries kept may not be those it scored; `quantfair "
        "suggest` again fits the recipe to this text")
    save(session, Suggestion(model="tiny-gpt2", scheme="int4", budget=0.05,
                             strategy="superweights:2", overhead=0.0, score=1.0,
                             languages=["en", "de"],
                             selector_texts=session.selector_texts_digest()))
    context = AuditContext(session, candidate="suggested")
    assert context.payload()["suggestion"]["reselected"] is None  # the search's own text


def test_selections_and_suggestions_are_not_reused_for_a_model_that_computes_otherwise():
    """The same weights under another setting (or tokenizer) select and search again: a
    selection or suggestion cached for the model as it was is stale."""
    from quantfair.models import load_model
    from quantfair.suggest import Suggestion, load_suggestion, no_suggestion, save

    config = RunConfig(model="tiny-gpt2", languages=("en", "de"), units=3)
    before = AuditSession(config, announce=lambda message: None)
    loaded = load_model("tiny-gpt2")
    loaded.model.config.layer_norm_epsilon = 0.5
    for module in loaded.model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 0.5
    after = AuditSession(config, announce=lambda message: None, loaded=loaded)
    assert before.loaded.weight_hash() == after.loaded.weight_hash()
    assert before.resolver().selector_cache != after.resolver().selector_cache
    save(before, Suggestion(model="tiny-gpt2", scheme="int4", budget=0.05, strategy="L0",
                            overhead=0.0, score=1.0))
    assert load_suggestion(before)["strategy"] == "L0"
    assert load_suggestion(after) is None
    assert "was searched with other model settings (its configuration" in str(
        no_suggestion(after))  # what differs, not "another version of quantfair"
    after.evaluator.window = 64  # and each part by name
    assert "was searched with other model settings (its configuration, attention " \
        f"implementation or device), another window ({before.evaluator.window} " \
        "tokens, now 64)" in str(no_suggestion(after))


def test_an_audits_line_names_the_scheme_and_the_units_it_measured(context):
    """An int8 audit's line once named the run's int4, and a long-text comparison the 8 units
    of the run where its texts join three units each."""
    assert context.describe() == "model tiny-gpt2 (gpt2), scheme int4, 2 languages x 2 units"
    assert context.describe("int8", "long") == ("model tiny-gpt2 (gpt2), scheme int8, "
                                                "2 languages x 1 unit")


@pytest.mark.parametrize(("model", "has_biases"), [("tiny-gpt2", True), ("tiny-llama", False)])
def test_the_model_facts_count_its_bias_parameters(model, has_biases):
    """The report says when `recommended`'s `biases` keeps nothing (Llama-style models)."""
    session = AuditSession(RunConfig(model=model, languages=("en", "de"), units=2),
                           announce=lambda message: None)
    counted = sum(p.numel() for name, p in session.loaded.model.named_parameters()
                  if name.endswith(".bias"))
    assert AuditContext(session).model_facts()["bias_parameters"] == counted
    assert (counted > 0) == has_biases
