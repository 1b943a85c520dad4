import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantfair import models
from quantfair.errors import UsageError
from quantfair.quantize import QuantScheme, WeightBank
from quantfair.strategies import StrategyResolver, calibration_gradients
from quantfair.strategy_syntax import SEED_PARETO

INT4 = QuantScheme(bits=4)


@pytest.fixture(scope="module")
def gpt2_resolver():
    loaded = models.load_model("gpt2", random_weights=True)
    return StrategyResolver(WeightBank(loaded.model), INT4)


@pytest.mark.parametrize("seed_name", SEED_PARETO)
def test_gpt2_overheads_match_the_seed_table(gpt2_resolver, seed_name):
    expression, reported = SEED_PARETO[seed_name]
    overhead = gpt2_resolver.overhead(gpt2_resolver.resolve(expression))
    decimals = len(reported.split(".")[1])
    # The seed states each overhead to `decimals` places; ours must round to it.
    assert round(100 * overhead.fraction, decimals) == pytest.approx(float(reported), abs=0.01)


def test_seed_names_with_l11_mean_the_same_as_llast(gpt2_resolver):
    assert gpt2_resolver.resolve("L0+L11+ln_f+biases").keys() == \
        gpt2_resolver.resolve("recommended").keys()


@pytest.mark.parametrize("expression, message", [
    ("L99", "out of range"),
    ("L-13", "out of range"),
    ("L0.brain", "unknown block"),
    ("L0.mlp.gate", "no role 'gate'"),
    ("warp", "valid:"),
    ("Suggested", "or alone, suggested"),  # the cached search result is named too
    ("random:150%", "between 0% and 100%"),
    ("variance:top99", "12 layers"),
    ("", "empty strategy"),
])
def test_invalid_strategies_list_what_is_valid(gpt2_resolver, expression, message):
    with pytest.raises(UsageError, match=message):
        gpt2_resolver.resolve(expression)


def test_grammar_selects_the_documented_parameters(gpt2_resolver):
    r = gpt2_resolver
    assert set(r.resolve("L0.mlp.fc_in")) == {
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias"}
    assert set(r.resolve("L-1")) == set(r.resolve("L11")) == set(r.resolve("Llast"))
    assert set(r.resolve("embed.pos")) == {"transformer.wpe.weight"}
    assert all(name.endswith(".bias") for name in r.resolve("biases"))
    assert set(r.resolve("even")).isdisjoint(r.resolve("odd"))
    assert r.resolve("none") == {}


@pytest.mark.parametrize("selector, fraction", [
    ("random:5%@1", 0.05), ("magnitude:5%", 0.05), ("random:11.4%@7", 0.114)])
def test_budgeted_selectors_meet_their_budget(gpt2_resolver, selector, fraction):
    overhead = gpt2_resolver.overhead(gpt2_resolver.resolve(selector))
    assert overhead.fraction == pytest.approx(fraction, abs=1e-4)


def test_random_selection_depends_on_its_seed(gpt2_resolver):
    a = gpt2_resolver.resolve("random:1%@1")["transformer.h.0.mlp.c_fc.weight"]
    b = gpt2_resolver.resolve("random:1%@2")["transformer.h.0.mlp.c_fc.weight"]
    assert not torch.equal(a, b)


def test_variance_picks_the_highest_variance_layers(tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    bank = WeightBank(loaded.model)
    with torch.no_grad():
        bank.fp["transformer.h.2.mlp.c_fc.weight"].mul_(50)
    resolver = StrategyResolver(bank, INT4)
    assert {c for c in resolver.resolve("variance:top1")} == set(resolver.resolve("L2"))
    bank.restore()


def test_gradient_selection_uses_calibration_text(tiny_models):
    loaded = tiny_models["tiny-llama"]
    bank = WeightBank(loaded.model)
    resolver = StrategyResolver(
        bank, INT4, gradients=lambda: calibration_gradients(loaded, ["hello world " * 5]))
    overhead = resolver.overhead(resolver.resolve("gradient:5%"))
    assert overhead.fraction == pytest.approx(0.05, abs=0.01)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_a_gradient_selection_of_no_entries_computes_no_gradients(tiny_models):
    def refuse():
        raise AssertionError("calibration gradients computed for an empty selection")

    resolver = StrategyResolver(WeightBank(tiny_models["tiny-llama"].model), INT4,
                                gradients=refuse)
    assert resolver.resolve("gradient:0%") == resolver.resolve("none") == {}


def test_switching_strategies_is_a_copy_and_restores_fp_bitwise(tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    original = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    loads_before, model_before = models.load_count, loaded.model
    bank = WeightBank(loaded.model)
    resolver = StrategyResolver(bank, INT4)
    for expression in ["L0", "magnitude:10%", "none"]:
        bank.apply(INT4, resolver.resolve(expression))
        changed = [n for n, p in loaded.model.named_parameters()
                   if not torch.equal(p, original[n])]
        assert changed  # quantization really happened
    bank.restore()
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, original[name]), name
    assert models.load_count == loads_before and loaded.model is model_before


def test_protected_parameters_stay_fp_and_the_rest_are_quantized(tiny_models):
    loaded = tiny_models["tiny-opt"]
    bank = WeightBank(loaded.model)
    protection = StrategyResolver(bank, INT4).resolve("L0+biases")
    bank.apply(INT4, protection)
    quantized = bank.quantized(INT4)
    for name, param in loaded.model.named_parameters():
        expected = bank.fp[name] if name in protection else quantized[name]
        assert torch.equal(param, expected), name
    bank.restore()


def test_layer_norm_terms_select_that_layers_norms(gpt2_resolver):
    chosen = set(gpt2_resolver.resolve("L0.ln"))
    assert chosen == {f"transformer.h.0.ln_{i}.{kind}" for i in (1, 2)
                      for kind in ("weight", "bias")}
    assert set(gpt2_resolver.resolve("layer0_ln_only")) == chosen


def test_magnitude_selection_keeps_the_largest_weights(gpt2_resolver):
    bank = gpt2_resolver.bank
    for name, keep in gpt2_resolver.resolve("magnitude:5%").items():
        if keep is True:
            continue
        weight = bank.fp[name].abs()
        assert weight[keep].min() >= weight[~keep].max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_magnitude_selection_in_half_precision_keeps_the_largest_weights(dtype):
    """The weights of a half-precision run are scored in float32 (the scores' buffer); the
    selection once failed there ("Found dtype Float but expected Half")."""
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession

    config = RunConfig.build({"model": "tiny-llama", "dtype": dtype, "languages": "en",
                              "units": "1"}.get)
    session = AuditSession(config, announce=lambda _: None)
    kept = session.resolver().resolve("magnitude:5%")
    assert kept and session.bank.fp[next(iter(kept))].dtype == getattr(torch, dtype)
    for name, keep in kept.items():
        if keep is not True:
            weight = session.bank.fp[name].float().abs()
            assert weight[keep].min() >= weight[~keep].max()


def test_block_format_overhead_counts_each_tensor_types_real_bits():
    """Under gguf:Q4_0 a code takes 4.5 bits (18-byte blocks of 32 weights: llama.cpp's
    ggml-common.h), the token embedding and output head Q8_0 8.5, norms stay F32 (counted at
    16, like every parameter the scheme leaves alone); each protected weight adds 16 - its
    type's bits."""
    from quantfair.models import load_model

    model = load_model("tiny-llama").model  # every input dimension (32, 64) a multiple of 32
    resolver = StrategyResolver(WeightBank(model), QuantScheme.parse("gguf:Q4_0"))
    params = dict(model.named_parameters())
    embedding = params["model.embed_tokens.weight"].numel() + params["lm_head.weight"].numel()
    matrices = sum(p.numel() for n, p in params.items() if p.dim() == 2) - embedding
    vectors = sum(p.numel() for p in params.values() if p.dim() == 1)
    layer0 = sum(p.numel() for n, p in params.items() if ".layers.0." in n and p.dim() == 2)
    base = 4.5 * matrices + 8.5 * embedding + 16 * vectors
    overhead = resolver.overhead(resolver.resolve("L0"))
    assert overhead.bytes_fraction == pytest.approx(layer0 * (16 - 4.5) / base)
    embedding_only = resolver.overhead(resolver.resolve("embed.tok"))
    assert embedding_only.bytes_fraction == pytest.approx(
        params["model.embed_tokens.weight"].numel() * (16 - 8.5) / base)


def _planted_llama():
    """tiny-llama with input channel 7 of layer 1's MLP made salient (its norm weight x 40)
    and a planted super weight in layer 2's down projection: input channel 5 spikes (row 5
    of up_proj x 30) and down_proj[3, 5] carries it, while a larger weight sits elsewhere."""
    loaded = models.load_model("tiny-llama")
    layers = loaded.model.model.layers
    with torch.no_grad():
        layers[1].post_attention_layernorm.weight[7] *= 40
        layers[2].mlp.up_proj.weight[5] *= 30
        down = layers[2].mlp.down_proj.weight
        down[3, 5] = 4 * down.abs().max()
        down[10, 20] = 3 * down[3, 5]  # the largest weight, in a quiet column
    return loaded


def _activation_resolver(loaded, scheme=INT4):
    from quantfair.strategies import calibration_activations

    bank = WeightBank(loaded.model)
    texts = {"en": ["hello world, how are you today?" * 3], "de": ["guten Tag, wie geht es?" * 3]}
    return StrategyResolver(bank, scheme, activations=lambda: calibration_activations(
        loaded, bank.parts, texts))


def test_act_keeps_the_salient_input_columns_within_the_budget():
    resolver = _activation_resolver(_planted_llama())
    protection = resolver.resolve("act:10%")
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.gate_proj.weight"):
        keep = protection[name]
        assert keep[:, 7].all(), "the salient channel is not kept"
        assert (keep.all(dim=0) | ~keep.any(dim=0)).all(), "not whole columns"
    quantized = sum(c.numel for c in resolver._quantized_parts())
    for percent in (1, 5, 10, 12):  # each layer's share rounded, the budget never exceeded
        kept = resolver.overhead(resolver.resolve(f"act:{percent}%")).protected
        assert 0.9 * percent / 100 * quantized <= kept <= percent / 100 * quantized


def test_actgap_keeps_the_column_only_the_other_language_leans_on():
    """Input channel 3 of layer 1's down projection carries German text and channel 9
    English text (equal quantization errors): the gap selector keeps channel 3, not 9,
    and stops where the gap turns negative."""
    from quantfair.strategies import Activations

    loaded = models.load_model("tiny-llama")
    bank = WeightBank(loaded.model)
    name = "model.layers.1.mlp.down_proj.weight"
    linear = {c.name: c for c in bank.parts.values() if c.is_matrix and c.block in ("attn", "mlp")}
    flat = {n: torch.ones(c.shape[0 if c.transposed else 1]) for n, c in linear.items()}
    english, german = dict(flat), dict(flat)
    english[name], german[name] = torch.ones_like(flat[name]), torch.ones_like(flat[name])
    english[name][9] = german[name][3] = 1e4
    stats = Activations(flat, flat, {"en": english, "de": german})
    resolver = StrategyResolver(bank, INT4, activations=lambda: stats)
    keep = resolver.resolve("actgap:50%")
    assert keep[name][:, 3].all() and not keep[name][:, 9].any()
    assert resolver.overhead(keep).fraction < 0.5  # only columns with a positive gap


def test_superweights_finds_the_planted_weight_not_the_largest():
    resolver = _activation_resolver(_planted_llama())
    protection = resolver.resolve("superweights:1")
    ((name, keep),) = protection.items()
    assert name == "model.layers.2.mlp.down_proj.weight"
    assert keep.sum() == 1 and keep[3, 5]


def test_superweights_beyond_one_per_linear_layer_are_refused():
    """A count past the candidates (one per quantized linear layer) is an error, not fewer
    weights than asked for."""
    resolver = _activation_resolver(_planted_llama())
    layers = resolver.super_weight_candidates()
    assert layers == 4 * 7 + 1  # tiny-llama: 4 layers of q, k, v, o, gate, up, down; lm_head
    assert sum(int(keep.sum()) for keep in resolver.resolve(f"superweights:{layers}").values()) \
        == layers
    with pytest.raises(UsageError, match=f"the model has {layers} quantized linear layers"):
        resolver.resolve(f"superweights:{layers + 1}")


def test_the_seed_recipe_scaled_to_a_budget_takes_its_terms_in_order():
    loaded = models.load_model("gpt2", random_weights=True)
    resolver = StrategyResolver(WeightBank(loaded.model), INT4)
    assert resolver.resolve("seed:12%").keys() == resolver.resolve("recommended").keys()
    small = resolver.resolve("seed:2%")  # one GPT-2 layer is ~5.7%: only ln_f and biases fit
    assert small.keys() == resolver.resolve("ln_f+biases").keys()
    assert resolver.overhead(small).fraction <= 0.02


@pytest.mark.parametrize("term", ["act:", "act:5%x", "actgap:", "actgap:x%", "superweights:0",
                                  "superweights:x", "seed:150%", "act:5", "magnitude:0.05",
                                  "random:5@1", "act:5.%", "act:1e-9%", "L-0", "L01",
                                  "L00.attn"])
def test_malformed_terms_are_refused(term):
    """A share takes its sign, as --budget does (`magnitude:0.05` could mean 5% or 0.05%)."""
    from quantfair.strategy_syntax import check_strategy_syntax

    with pytest.raises(UsageError):
        check_strategy_syntax(term)


@pytest.mark.parametrize(("term", "said"), [
    ("magnitude:0.05", "a share needs its % sign"), ("random:5@1", "a share needs its % sign"),
    ("act:-5%", "a share cannot be negative"),
    ("random:5%@12345678901234567890", "a seed has at most 9 digits"),
    ("act:5%x", "expected e.g. act:5%")])
def test_a_bad_selector_argument_says_what_is_wrong(term, said):
    from quantfair.strategy_syntax import check_strategy_syntax

    with pytest.raises(UsageError, match=said):
        check_strategy_syntax(term)


def test_a_share_may_start_at_its_decimal_point():
    from quantfair.strategy_syntax import check_strategy_syntax

    check_strategy_syntax("act:.5%+magnitude:0.25%+random:12.5%@3")


def test_a_cached_selection_of_another_selector_version_is_not_served(tmp_path, monkeypatch):
    """Selections are cached on disk by term: a change to the selector code (its digest)
    selects again instead of reading back a mask chosen the old way."""
    from quantfair import strategies

    bank = WeightBank(models.load_model("tiny-gpt2").model)
    calls = []

    def resolve():
        resolver = StrategyResolver(bank, INT4, selector_cache=(tmp_path, "p"))
        selector = resolver._selector
        monkeypatch.setattr(resolver, "_selector", lambda term: calls.append(term) or
                            selector(term))
        return resolver.resolve("magnitude:5%")

    resolve()
    resolve()
    assert len(calls) == 1  # the second read it back
    monkeypatch.setattr(strategies, "SELECTOR_DIGEST", "another")
    resolve()
    assert len(calls) == 2


def test_the_selector_digest_covers_the_helpers_that_choose_entries():
    """Every module-level helper the resolver calls is part of the digest of cached
    selections, except those that only parse, store or count what was chosen."""
    import inspect
    import re

    from quantfair import strategies

    source = inspect.getsource(StrategyResolver)
    helpers = {name for name, f in vars(strategies).items() if inspect.isfunction(f)
               and f.__module__ == strategies.__name__ and re.search(rf"\b{name}\(", source)}
    not_choosing = {"check_strategy_syntax", "_mask_views", "_count", "_union"}
    assert helpers - not_choosing <= {f.__name__ for f in strategies.SELECTOR_SOURCES}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, -1e-30, 3e38, -3e38]) |
                st.floats(allow_nan=False, width=32), min_size=2, max_size=60),
       st.data())
def test_top_mask_keeps_the_highest_scores_ties_in_order(values, data):
    from quantfair.strategies import _top_mask

    scores = np.array(values, np.float32)
    keep = data.draw(st.integers(1, scores.size - 1))
    out = np.zeros(scores.size, bool)
    _top_mask(scores, keep, out)
    ranked = sorted(range(scores.size), key=lambda i: (-float(scores[i]), i))  # stable
    expected = np.zeros(scores.size, bool)
    expected[ranked[:keep]] = True
    assert out.sum() == keep
    assert scores[out].min() >= scores[~out].max()
    assert np.array_equal(out, expected)  # -0.0 == 0.0: a tie, like any other


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=40), st.floats(0, 1), st.randoms())
def test_entry_counts_apportion_the_share_of_all_entries(sizes, fraction, rng):
    from quantfair.strategies import _entries

    ties = list(range(len(sizes)))
    rng.shuffle(ties)
    counts = _entries(fraction, sizes, ties)
    assert sum(counts) == round(fraction * sum(sizes))
    for count, size in zip(counts, sizes, strict=True):
        assert math.floor(fraction * size) <= count <= math.floor(fraction * size) + 1
    # the entries left go to the largest remainders, equal ones in the order of `ties`
    remainders = [fraction * size - math.floor(fraction * size) for size in sizes]
    plus = [i for i in ties if counts[i] > math.floor(fraction * sizes[i])]
    rest = [i for i in ties if i not in plus]
    if plus and rest:
        assert min(remainders[i] for i in plus) >= max(remainders[i] for i in rest)


def _mapped_ranges(folder) -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of files in `folder`."""
    with open("/proc/self/maps") as maps:
        return [tuple(int(x, 16) for x in line.split()[0].split("-"))
                for line in maps if len(line.split()) >= 6
                and line.split()[5].startswith(str(folder))]


def test_element_masks_live_in_a_mapped_file_not_in_process_memory(tmp_path):
    """A mask takes a byte per parameter: the masks of a selection are views of a temporary
    file's memory map in the bank's folder; without a folder they are ordinary memory."""
    model = models.load_model("tiny-gpt2").model
    mapped = StrategyResolver(WeightBank(model, tmp_path), INT4).resolve("random:5%@1")
    ranges = _mapped_ranges(tmp_path)
    masks = [keep for keep in mapped.values() if isinstance(keep, torch.Tensor)]
    assert masks and all(any(lo <= m.data_ptr() < hi for lo, hi in ranges) for m in masks)
    bank = WeightBank(model, tmp_path / "other")
    bank.folder = None  # e.g. a cache that cannot be written
    in_memory = StrategyResolver(bank, INT4).resolve("random:5%@1")
    assert all(torch.equal(in_memory[name], keep) for name, keep in mapped.items())


@pytest.mark.parametrize("selector", ["random:5%@1", "magnitude:5%"])
def test_entry_scores_are_written_to_a_mapped_buffer(tmp_path, monkeypatch, selector):
    # A float32 score per entry of the largest tensor (a token embedding: 100+ MB) lives in
    # a temporary file's map, like the masks, not in process memory.
    model = models.load_model("tiny-gpt2").model
    resolver = StrategyResolver(WeightBank(model, tmp_path), INT4)
    scored, top_elements = [], resolver._top_elements

    def spied(parts, score, fraction, ties=None):
        def recorded(c, out):
            result = score(c, out)
            pointer = result.data_ptr()
            scored.append(tuple(result.shape) == tuple(c.shape) and any(
                lo <= pointer < hi for lo, hi in _mapped_ranges(tmp_path)))
            return result
        return top_elements(parts, recorded, fraction, ties)
    monkeypatch.setattr(resolver, "_top_elements", spied)
    resolver.resolve(selector)
    assert scored and all(scored)
