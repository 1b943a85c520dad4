import dataclasses
import json
import math
import re

import pytest
import torch

from quantfair import evaluate
from quantfair.corpus import load_corpus
from quantfair.errors import QuantfairError
from quantfair.evaluate import Evaluator, NonFiniteLoss, ResultCache, Swap, check_finite
from quantfair.models import load_model


def plain_loop_nll(loaded, text: str) -> float:
    """The reference: one forward per unit, BOS (or EOS) prefix, every text token scored."""
    tokenizer, model = loaded.tokenizer, loaded.model
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    ids = torch.tensor([[prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()


@pytest.fixture(scope="module")
def short_texts():
    corpus = load_corpus().select(["en", "he", "zh"], units=["article_01", "article_03"])
    return [t for units in corpus.texts.values() for t in units.values()]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-opt"])
def test_nll_matches_a_plain_forward_loop(tiny_models, short_texts, tmp_path, name):
    loaded = tiny_models[name]
    texts = [t[:40] for t in short_texts]  # fits the tiny 128-token context
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    results = evaluator.evaluate("fp", texts)
    for text in texts:
        assert results[text].nll == pytest.approx(plain_loop_nll(loaded, text), rel=1e-5)
        assert results[text].bytes == len(text.encode()) and results[text].chars == len(text)


def test_batched_padding_gives_the_same_nll(tiny_models, short_texts, tmp_path):
    loaded = tiny_models["tiny-llama"]
    texts = [t[:60] for t in short_texts]
    single = Evaluator(loaded, ResultCache(tmp_path / "a"), batch_tokens=0).evaluate("x", texts)
    batched = Evaluator(loaded, ResultCache(tmp_path / "b"), batch_tokens=4096)
    result = batched.evaluate("x", texts)
    assert batched.forward_passes < len(texts)
    for text in texts:
        assert result[text].nll == pytest.approx(single[text].nll, rel=1e-5)


def test_cpu_batches_hold_units_of_similar_length_within_the_token_budget(
        tiny_models, tmp_path, monkeypatch):
    loaded = tiny_models["tiny-llama"]
    monkeypatch.setattr(evaluate, "CPU_BATCH_TOKENS", 100)
    monkeypatch.setattr(evaluate, "CLAIM_TOKENS", 100)  # and as many claimed at a time
    texts = [f"unit {i} " + "x" * (5 * (i * 5 % 12)) for i in range(12)]  # 7 to 62 tokens
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    shapes = []
    run = evaluator._run
    monkeypatch.setattr(evaluator, "_run", lambda batch: (shapes.append(
        (len(batch), max(len(w.ids) for w in batch))), run(batch))[1])
    results = evaluator.evaluate("fp", texts)
    assert len(shapes) < len(texts) and all(rows * length <= 100 for rows, length in shapes)
    lengths = [length for _, length in shapes]  # longest first over the whole evaluation,
    assert lengths == sorted(lengths, reverse=True)  # not per claimed group: fewer passes
    tokens = sum(len(evaluator.token_ids(t)) for t in texts)
    assert sum(rows * length for rows, length in shapes) < 1.25 * tokens  # little padding
    for text in texts:  # and each unit's NLL is its own, as scored alone
        assert results[text].nll == pytest.approx(plain_loop_nll(loaded, text), rel=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_logits_are_computed_a_few_positions_at_a_time(tiny_models, short_texts, tmp_path,
                                                       monkeypatch, name):
    # The forward stops at the head's input; the head runs on blocks of positions, so a
    # batch's [batch, length, vocab] logits never exist whole.
    loaded = tiny_models[name]
    monkeypatch.setattr(evaluate, "MIN_BLOCK_ROWS", 3)
    monkeypatch.setattr(evaluate, "LOGITS_BLOCK_BYTES", 1)
    texts = [t[:60] for t in short_texts]
    evaluator = Evaluator(loaded, ResultCache(tmp_path), batch_tokens=4096)
    assert evaluator.exact_head and evaluator.block_rows == 3
    blocks, outputs, rows = [], [], evaluate._Logits.rows

    def recorded(self, *args):
        block = rows(self, *args)
        outputs.append(self.output.shape[-1])
        blocks.append(block.shape)
        return block
    monkeypatch.setattr(evaluate._Logits, "rows", recorded)
    results = evaluator.evaluate("fp", texts)
    vocabulary, hidden = loaded.model.get_output_embeddings().weight.shape
    assert set(outputs) == {hidden} and hidden < vocabulary
    assert max(n for n, _ in blocks) == 3 and {v for _, v in blocks} == {vocabulary}
    for text in texts:
        assert results[text].nll == pytest.approx(plain_loop_nll(loaded, text), rel=1e-5)


def test_a_head_that_is_not_linear_is_batched_within_the_logits_budget(tmp_path, monkeypatch):
    loaded = load_model("tiny-gemma3")
    loaded.model.config.final_logit_softcapping = 3.0  # logits are no longer W h + b
    vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(evaluate, "CPU_BATCH_LOGITS", 4 * vocabulary * 100)  # 100 tokens
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    assert not evaluator.exact_head and evaluator.batch_tokens == 100
    text = load_corpus().texts["en"]["article_01"][:60]
    with torch.no_grad():  # the model's own (soft-capped) logits are scored
        ids = torch.tensor([evaluator.token_ids(text)])
        expected = torch.nn.functional.cross_entropy(
            loaded.model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:], reduction="sum")
    assert evaluator.evaluate("fp", [text])[text].nll == pytest.approx(expected.item(), rel=1e-5)


def test_special_token_markup_in_a_text_is_scored_as_text(tiny_models, tmp_path):
    """A corpus quoting "<|endoftext|>" holds those characters, not the end of a document
    mid-unit (llama.cpp's perplexity tokenizes text with parse_special false)."""
    loaded = tiny_models["tiny-gpt2"]
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    special = loaded.tokenizer.eos_token
    special_id = loaded.tokenizer.convert_tokens_to_ids(special)
    ids = evaluator.token_ids(f"a{special}b")
    assert special_id not in ids[1:]  # the prefix is BOS (here the same token)
    assert ids == evaluator.token_ids("a") + evaluator.token_ids(special)[1:] + \
        evaluator.token_ids("b")[1:]


def test_long_units_use_a_sliding_window(tiny_models, tmp_path):
    loaded = tiny_models["tiny-gpt2"]  # 128-token context
    text = load_corpus().texts["en"]["preamble"][:400]
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    ids = evaluator.token_ids(text)
    windows = evaluator._windows("k", ids)
    assert len(windows) > 1
    scored = sum(len(w.ids) - w.score_from for w in windows)
    assert scored == len(ids) - 1  # every token scored exactly once
    result = evaluator.evaluate("fp", [text])[text]
    assert result.tokens == len(ids) - 1 and math.isfinite(result.nll)


def test_progress_names_its_end_before_the_first_forward(tiny_models, tmp_path):
    """A bar learns at once how many tokens the windows run through the model (overlapping
    windows run some twice), not at the first batch's end."""
    loaded = tiny_models["tiny-gpt2"]  # 128-token context: the preamble takes several windows
    text = load_corpus().texts["en"]["preamble"]
    calls = []
    Evaluator(loaded, ResultCache(tmp_path)).evaluate("fp", [text], progress=lambda *c:
                                                      calls.append(c))
    assert calls[0][0] == 0 and calls[0][1] == calls[-1][0] == calls[-1][1]
    assert calls[0][1] > len(Evaluator(loaded).token_ids(text))


def test_progress_counts_the_fp_forwards_of_a_new_reference(tmp_path):
    """Distribution statistics of quantized weights first run the FP model over units with
    no cached FP side for their head: the bar counts those forwards too, from its first
    report on, and moves during them, not only during the second pass. The FP model's own
    statistics take its side from their own forward: one pass (they once took two)."""
    from quantfair.quantize import QuantScheme, WeightBank

    loaded = load_model("tiny-gpt2")
    texts = [load_corpus().texts[lang]["article_01"] for lang in ("en", "he", "zh")]
    evaluator = Evaluator(loaded, ResultCache(tmp_path), batch_tokens=64)
    assert evaluator.exact_head
    windows = sum(len(w.ids) for t in texts
                  for w in evaluator._windows(t, evaluator.token_ids(t)))
    calls = []
    passes = evaluator.forward_passes
    evaluator.evaluate_distribution("fp", texts, progress=lambda *c: calls.append(c))
    assert {total for _, total in calls} == {windows} and calls[-1] == (windows, windows)
    fp_passes = evaluator.forward_passes - passes
    assert all(evaluator.references.has(evaluator.unit_key(t), evaluator.head_variant())
               for t in texts)

    bank, scheme = WeightBank(loaded.model), QuantScheme.parse("int4")
    bank.apply(scheme)
    swap = Swap(bank.restore, lambda: bank.apply(scheme))
    calls.clear()  # int4's head: a new FP side, then the quantized pass
    passes, shared, labels = evaluator.forward_passes, evaluator._shared, []
    evaluator._shared = lambda tag, label, *rest, **named: (
        labels.append(label), shared(tag, label, *rest, **named))
    evaluator.evaluate_distribution("int4", texts, swap, progress=lambda *c: calls.append(c),
                                    label="int4 protecting none")
    # What a process waiting for another names: not "the FP reference" (the FP model's own).
    assert labels == ["the FP side of int4 protecting none", "int4 protecting none"]
    assert evaluator.forward_passes - passes == 2 * fp_passes
    assert {total for _, total in calls} == {2 * windows}
    assert calls[-1] == (2 * windows, 2 * windows)
    assert any(0 < done < windows and total == 2 * windows for done, total in calls)
    calls.clear()  # the FP side is cached now: one pass
    evaluator.evaluate_distribution("again", texts, swap, progress=lambda *c: calls.append(c))
    assert calls[-1] == (windows, windows)


def test_an_interrupted_fp_reference_keeps_the_units_it_finished(tiny_models, tmp_path):
    """Units of several windows each (articles, a 128-token context): stopped halfway, the FP
    side keeps most of the units it started. (Its windows were once batched longest first
    over every unit: each unit's last, shorter window came at the end, and a build stopped
    at 90% had kept none.)"""
    loaded = tiny_models["tiny-gpt2"]
    texts = ["\n".join(units[f"article_{n:02d}"] for n in range(1, 6))
             for units in load_corpus().select(["en", "de", "ru", "he", "ar", "zh"]).texts.values()]
    evaluator = Evaluator(loaded, ResultCache(tmp_path), batch_tokens=64)
    windows = sum(len(evaluator._windows(t, evaluator.token_ids(t))) for t in texts)
    assert windows >= 4 * len(texts)  # several windows a unit

    def interrupt(done, total):
        if evaluator.forward_passes >= windows // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate_distribution("fp", texts, progress=interrupt)
    head = evaluator.head_variant()
    kept = sum(evaluator.references.has(evaluator.unit_key(t), head) for t in texts)
    assert kept >= len(texts) // 2 - 1


def test_cache_serves_reruns_and_ignores_corrupted_entries(tiny_models, short_texts, tmp_path):
    loaded = tiny_models["tiny-gpt2"]
    texts = [t[:40] for t in short_texts]
    first = Evaluator(loaded, ResultCache(tmp_path)).evaluate("fp", texts)
    rerun = Evaluator(loaded, ResultCache(tmp_path))
    assert rerun.evaluate("fp", texts) == first and rerun.forward_passes == 0
    path = next(tmp_path.glob("*.jsonl"))
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"nll": ', '"nll": 1')  # tampered value, stale checksum
    lines[1] = lines[1][:20]  # torn write
    path.write_text("\n".join(lines) + "\n")
    said = []
    repaired = Evaluator(loaded, ResultCache(tmp_path), announce=said.append)
    again = repaired.evaluate("fp", texts, label="FP reference")
    assert repaired.units_computed == 2  # the two damaged entries, nothing else
    assert {t: r.nll for t, r in again.items()} == pytest.approx(
        {t: r.nll for t, r in first.items()}, rel=1e-5)  # rescored in another batch
    # said once, where the damage costs a computation (it was silent); then no more
    assert said == [f"quantfair: 2 damaged line(s) in the results cache {path} (FP reference) "
                    "not trusted: what they held is scored again"]
    said.clear()
    rerun = Evaluator(loaded, ResultCache(tmp_path), announce=said.append)
    assert rerun.evaluate("fp", texts) == again and not said


def test_a_result_stored_after_a_torn_last_line_is_kept(tiny_models, short_texts, tmp_path):
    """A crash mid-append leaves a line without its end: the next append starts a line of
    its own, so what it stores is read back and never computed a third time."""
    loaded = tiny_models["tiny-gpt2"]
    texts = [t[:40] for t in short_texts]
    Evaluator(loaded, ResultCache(tmp_path)).evaluate("fp", texts)
    path = next(tmp_path.glob("*.jsonl"))
    path.write_bytes(path.read_bytes()[:-40])  # the last entry torn
    repaired = Evaluator(loaded, ResultCache(tmp_path))
    repaired.evaluate("fp", texts)
    assert repaired.units_computed == 1
    rerun = Evaluator(loaded, ResultCache(tmp_path))
    rerun.evaluate("fp", texts)
    assert rerun.units_computed == 0


def test_interrupted_run_resumes_without_recomputing(tiny_models, short_texts, tmp_path):
    loaded = tiny_models["tiny-gpt2"]
    texts = [t[:40] for t in short_texts]
    evaluator = Evaluator(loaded, ResultCache(tmp_path), batch_tokens=0)  # a unit a pass

    def interrupt(done, total):
        if evaluator.forward_passes == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate("fp", texts, progress=interrupt)
    resumed = Evaluator(loaded, ResultCache(tmp_path), batch_tokens=0)
    resumed.evaluate("fp", texts)
    assert resumed.forward_passes == len(texts) - 3


def test_non_finite_losses_are_reported_per_unit():
    from quantfair.evaluate import UnitResult

    results = {("en", "a"): UnitResult(1.0, 1, 1, 1), ("he", "b"): UnitResult(math.nan, 1, 1, 1)}
    with pytest.raises(NonFiniteLoss, match="nll in 1 unit.*he/b"):
        check_finite(results, "model int4")


def test_a_non_finite_distribution_statistic_is_reported_like_a_loss():
    """A finite NLL beside a NaN KL divergence is refused by the cache, so it must not pass
    silently into the report either (it would be computed again on every run)."""
    from quantfair.evaluate import UnitDistribution

    fine = UnitDistribution(1.0, 1, 1, 1, kld=0.5, same_top=1, delta_p=0.0, delta_p_sq=0.0,
                            kld_tokens="")
    results = {("en", "a"): fine, ("ar", "c"): dataclasses.replace(fine, kld=math.nan),
               ("zh", "d"): dataclasses.replace(fine, delta_p=math.inf)}
    with pytest.raises(NonFiniteLoss, match=r"non-finite delta_p, kld in 2 unit\(s\): ar/c, zh/d"):
        check_finite(results, "model gguf:Q4_0")
    check_finite({("en", "a"): fine}, "model gguf:Q4_0")


def test_a_non_finite_loss_is_never_cached_on_disk(tmp_path):
    """A NaN from a damaged weights file must not outlive the file: computed again next time."""
    from quantfair.evaluate import UnitDistribution, UnitResult

    cache = ResultCache(tmp_path)
    cache.store("int4", {"a": UnitResult(1.0, 1, 1, 1), "b": UnitResult(math.nan, 1, 1, 1),
                         "c": UnitResult(math.inf, 1, 1, 1)})
    assert set(cache.load("int4")) == {"a", "b", "c"}  # this process still reports them
    assert set(ResultCache(tmp_path).load("int4")) == {"a"}
    kept = UnitDistribution(1.0, 1, 1, 1, kld=0.5, same_top=1, delta_p=0.0, delta_p_sq=0.0,
                            kld_tokens="")
    distributions = ResultCache(tmp_path, UnitDistribution)
    distributions.store("kld", {"a": kept, "b": dataclasses.replace(kept, kld=math.nan)})
    assert set(ResultCache(tmp_path, UnitDistribution).load("kld")) == {"a"}
    nan = UnitResult(math.nan, 1, 1, 1)  # a line as older versions wrote it: never read
    with cache._path("int4").open("a") as handle:
        handle.write(json.dumps({"key": "n", "result": dataclasses.asdict(nan),
                                 "check": ResultCache._checksum("int4", "n", nan)}) + "\n")
    assert set(ResultCache(tmp_path).load("int4")) == {"a"}
    with pytest.raises(NonFiniteLoss, match="not cached"):
        check_finite({("he", "b"): UnitResult(math.nan, 1, 1, 1)}, "model int4")


@pytest.mark.slow
def test_smollm2_nll_matches_a_plain_forward_loop(tmp_path):
    loaded = load_model("smollm2-135m")
    corpus = load_corpus().select(["en", "he", "zh"], units=["article_01", "article_19"])
    texts = [t for units in corpus.texts.values() for t in units.values()]
    results = Evaluator(loaded, ResultCache(tmp_path)).evaluate("fp", texts)
    for text in texts:
        assert results[text].nll == pytest.approx(plain_loop_nll(loaded, text), rel=1e-5)


@pytest.mark.slow
def test_smollm2_in_bfloat16_gives_a_unit_the_same_nll_whatever_shares_its_run(tmp_path):
    """In bfloat16 on a CPU, a unit scored beside others in one forward got another NLL than
    scored alone (1.4% for one of these): which units a run found cached changed the rest."""
    loaded = load_model("smollm2-135m", dtype="bfloat16")
    english = load_corpus().select(["en"]).texts["en"]
    texts = [english[f"article_{i:02d}"] for i in range(1, 7)]
    together = Evaluator(loaded, ResultCache(tmp_path / "together")).evaluate("fp", texts)
    alone = Evaluator(loaded, ResultCache(tmp_path / "alone"))
    for text in texts:
        assert alone.evaluate("fp", [text])[text].nll == together[text].nll


def test_in_a_reduced_dtype_on_a_cpu_each_window_runs_alone_keyed_by_the_threads(
        tmp_path, monkeypatch):
    """Its sums' rounding depends on the windows beside it and on the thread count (the slow
    test above measures it on SmolLM2); float32's keys stay as they were."""
    texts = list(load_corpus().select(["en"], units=["article_01", "article_02",
                                                      "article_03"]).texts["en"].values())
    half = Evaluator(load_model("tiny-llama", dtype="bfloat16"), ResultCache(tmp_path / "h"))
    windows = len(half._plan(texts)[2])
    half.evaluate("fp", texts)
    assert half.forward_passes == windows > len(texts)  # tiny-llama's window is short
    single = Evaluator(load_model("tiny-llama"), ResultCache(tmp_path / "s"))
    single.evaluate("fp", texts)
    assert single.forward_passes < windows
    keys = [(e.unit_key(texts[0]), e.identity) for e in (half, single)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    (half_key, half_identity), (single_key, single_identity) = keys
    assert half.unit_key(texts[0]) != half_key and single.unit_key(texts[0]) == single_key
    # a suggestion or a selection searched with other threads is still the model's
    assert (half.identity, single.identity) == (half_identity, single_identity)


@pytest.mark.slow
def test_the_run_converting_the_embedded_model_keys_results_as_later_runs_do(
        tmp_path, monkeypatch):
    """The first use converts the GGUF to a cached checkpoint; its results must be cached
    under the key later runs look up (the GGUF-loaded config names a quantization)."""
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path))
    converting = load_model("smollm2-135m")
    assert (tmp_path / "models" / "smollm2-135m" / "complete").exists()
    later = load_model("smollm2-135m")
    assert evaluate.model_results(converting) == evaluate.model_results(later)
    assert evaluate.model_identity(converting) == evaluate.model_identity(later)
    assert (evaluate.tokenizer_identity(converting.tokenizer)
            == evaluate.tokenizer_identity(later.tokenizer))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/stat"), reason="Linux /proc")
def test_a_wait_for_a_claim_names_a_holder_that_is_stopped(tmp_path):
    """A process stopped with Ctrl-Z or SIGSTOP holds its claims: the others waited forever
    saying only "still waiting"."""
    import signal
    import subprocess
    import time

    from filelock import FileLock

    lock = FileLock(tmp_path / "00.lock")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "00.lock.pid").write_text(str(holder.pid))
        assert evaluate._stopped_holder(lock) == ""  # working
        holder.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        assert evaluate._stopped_holder(lock) == (
            f"; the process holding it (pid {holder.pid}) is stopped: resume it (kill -CONT "
            f"{holder.pid}) or end it")
        evaluate._note_holder(lock)  # this process takes it
        assert evaluate._stopped_holder(lock) == ""
    finally:
        holder.kill()
        holder.wait()


def test_a_cache_cleared_mid_run_keeps_the_results_this_process_has(tmp_path):
    """`rm -rf` of the cache while a run scores: its new file is shorter than the one read,
    and the units scored before the clearing must not go missing (a KeyError of a whole
    UDHR article ended `suggest`)."""
    import shutil

    from quantfair.evaluate import UnitResult

    cache = ResultCache(tmp_path / "results")
    cache.store("int4", {"a": UnitResult(1.0, 2, 3, 4), "b": UnitResult(5.0, 6, 7, 8)})
    assert set(cache.refresh("int4")) == {"a", "b"}
    shutil.rmtree(tmp_path / "results")
    cache.store("int4", {"c": UnitResult(9.0, 1, 1, 1)})
    assert set(cache.refresh("int4")) == {"a", "b", "c"}
    assert set(cache.load("int4")) == {"a", "b", "c"}  # what `cached` reads


def _ascii_word_tokenizer():
    """A word-level tokenizer of ASCII words, `<unk>` for every other word (no byte
    fallback): Hebrew and Chinese text is read as unknown tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    english = load_corpus().select(["en"]).texts["en"].values()
    words = sorted({w for text in english for w in text.split()})
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")


def test_a_language_read_as_unknown_tokens_is_warned_of(tmp_path):
    """Its perplexity looked like any other's (the loss of predicting `<unk>`), its
    quantization damage as small: a script the tokenizer cannot represent looked unhurt."""
    from quantfair.models import LoadedModel, byte_tokenizer
    from quantfair.session import unknown_warning

    tokenizer = _ascii_word_tokenizer()
    model = load_model("tiny-llama").model
    model.resize_token_embeddings(len(tokenizer))
    corpus = load_corpus().select(["en", "he", "zh"], units=["article_01", "article_03"])
    evaluator = Evaluator(LoadedModel("ascii", model, tokenizer, "test"),
                          ResultCache(tmp_path))
    shares = evaluator.unknown_shares({lang: units.values()
                                       for lang, units in corpus.texts.items()})
    assert shares["en"] == 0.0 and shares["he"] > 0.9 and shares["zh"] > 0.9
    said = unknown_warning(shares, "<unk>")
    assert said.startswith("the tokenizer reads part of the text as its unknown token '<unk>' "
                           f"(he {shares['he']:.0%}, zh {shares['zh']:.0%} of tokens)"), said
    byte_level = Evaluator(load_model("tiny-llama"), ResultCache(tmp_path / "b"))
    assert set(byte_level.unknown_shares(dict.fromkeys(["he"], ["שלום"])).values()) == {0.0}
    assert byte_tokenizer().unk_token_id is None  # (no unknown token to count)


def test_a_tokenizer_giving_ids_past_the_embedding_is_one_clear_error(tmp_path):
    """transformers' IndexError inside the forward, "please report it", once per audit: a
    tokenizer with tokens added, the model's embedding not resized."""
    loaded = load_model("tiny-llama")
    rows = loaded.model.get_input_embeddings().weight.shape[0]
    added = [chr(0x5d0 + i) * 2 for i in range(rows - len(loaded.tokenizer) + 1)]
    loaded.tokenizer.add_tokens(added)  # the last one's id is `rows`, past the embedding
    evaluator = Evaluator(loaded, ResultCache(tmp_path))
    assert evaluator.unknown_shares({"en": ["plain"]}) == {"en": 0.0}
    with pytest.raises(QuantfairError, match=re.escape(
            f"tiny-llama: its tokenizer gives token id {rows} for he text, where the model's "
            f"embedding has {rows} rows (ids 0 to {rows - 1}): the tokenizer is not the "
            "model's")):
        evaluator.unknown_shares({"en": ["plain"], "he": [f"{added[0]} {added[-1]}"]})
