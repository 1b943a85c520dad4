"""The `quantfair` command: inspect, corpus, measure, report, suggest, export."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Sequence

from quantfair import __version__
from quantfair.config import (
    DTYPES,
    LANGUAGES_HELP,
    OPTIONS,
    REFERENCE,
    Option,
    RunConfig,
    add_options,
    check_folder_writable,
    integer_option,
    parse_percent,
    refuse_empty,
    refuse_inputs,
    require_other_languages,
    selected_corpus,
)
from quantfair.errors import TERMINATED, QuantfairError, Terminated, UsageError, os_error_text
from quantfair.progress import close_bars, token_bars
from quantfair.schemes import check_block_format
from quantfair.storage import flag_variable, is_gguf
from quantfair.strategy_syntax import check_given_strategies, check_strategy_syntax
from quantfair.summary import FEW_UNITS, uniform_guess_warning
from quantfair.text import (
    first_line,
    one_line,
    percent,
    plural,
    shell_word,
    significant,
    some,
    units_text,
)
from quantfair.text import interval_text as cell
from quantfair.text import table as _table


def _add_model_arguments(parser: argparse.ArgumentParser, *names: str,
                         helps: dict[str, str] | None = None) -> None:
    """The model and the run options `names` (with the device and dtype); `helps`: a
    command's own help for some ({"--dtype": ...}), where it does other than evaluate."""
    parser.add_argument("model", help=OPTIONS["model"].help)
    add_options(lambda flag, **kwargs: parser.add_argument(
        flag, **{**kwargs, "help": (helps or {}).get(flag, kwargs["help"])}),
        prefix="", names=("random-weights", "device", "dtype", *names))


def _run_config(args: argparse.Namespace, quantizer: bool = True) -> RunConfig:
    """The same validated settings the pytest plugin builds from the same options
    (`quantizer`: `RunConfig.build`)."""
    return RunConfig.build(lambda name: getattr(args, OPTIONS[name].dest, None)
                           if name != "model" else args.model, quantizer=quantizer)


def cmd_inspect(args: argparse.Namespace) -> int:
    from quantfair.strategy_syntax import SEED_PARETO

    check_given_strategies(args.strategy)
    session = _session(args, reads_only=True)
    loaded, scheme, resolver = session.loaded, session.config.scheme, session.resolver()
    strategies = [(expr, seed_name, reported)
                  for seed_name, (expr, reported) in SEED_PARETO.items()]
    strategies += [(expr, "", "") for expr in _named(session, args.strategy)
                   if expr not in {e for e, _, _ in strategies}]
    resolved = [(expr, seed, reported, session.overhead(expr))
                for expr, seed, reported in strategies]

    parts = session.bank.parts
    total = sum(c.numel for c in parts.values())
    print(f"model: {loaded.name}  family: {loaded.family}  layers: {resolver.layers}  "
          f"parameters: {total:,}")
    print(f"source: {loaded.source}")
    if loaded.weights_note:
        print(f"weights: {loaded.weights_note}")
    print()
    rows = [(c.layer if c.layer is not None else "-", c.block, c.role, c.kind, f"{c.numel:,}")
            for c in parts.values()]
    print(_table(["layer", "block", "role", "kind", "params"], rows))
    print()
    print(f"overhead of keeping each strategy's parameters in FP16 next to {scheme.name} codes:")
    rows = [(expr, seed, f"{o.protected:,}", percent(o.fraction),
             f"{100 * o.bytes_fraction:.2f}%", f"{reported}%" if reported else "")
            for expr, seed, reported, o in resolved]
    print(_table(["strategy", "seed name", "protected", "% params", "% bytes", "seed (gpt2)"],
                 rows))
    quantized = sum(c.numel for c in resolver._quantized_parts())
    print(f"% params: of all {total:,} parameters, {quantized:,} of them quantized under "
          f"{scheme.name} (the P% of random:, magnitude:, gradient:, act: and actgap: is of "
          "those, seed:'s of all); % bytes: storage added to the quantized model, each kept "
          "parameter 16 bits in place of its code (no index for single entries); `quantfair "
          "export` writes kept tensors in F32 unless given --protect-as f16, so that the file "
          "holds the audited weights exactly")
    return 0


def _named(session, strategies: Sequence[str], measured: bool = False,
           artifacts: bool = True, entries: bool = True) -> list[str]:
    """The strategies in order, 'suggested' replaced by the cached suggestion, each once in
    its canonical text, its terms once each (`L0 + L0` is `L0`; `measured`, `artifacts`,
    `entries`: see `_suggested`)."""
    named = (_suggested(session, measured, artifacts, entries) if strategy == "suggested"
             else strategy for strategy in dict.fromkeys(strategies))
    return list(dict.fromkeys("+".join(dict.fromkeys(check_strategy_syntax(s).split("+")))
                              for s in named))


def _session(args: argparse.Namespace, before_load=None, reads_only: bool = False,
             quantizer: bool = True):
    """The command's AuditSession, its settings checked first (`before_load(config)`: the
    command's own checks), each a one-line error before torch and the model load.
    `reads_only`: a session without progress bars that runs without a writable cache
    (tensors in memory); it still says on stderr what it loads and computes. Without
    `quantizer`, a `llama.cpp:` scheme's file is neither made nor its quantizer needed."""
    config = _run_config(args, quantizer)
    config.preflight(cache=not reads_only)
    if before_load:
        before_load(config)
    from quantfair.session import AuditSession

    if reads_only:
        return AuditSession(config, quantizer=quantizer)
    return AuditSession(config, progress=token_bars(), quantizer=quantizer)


def cmd_corpus(args: argparse.Namespace) -> int:
    from quantfair.corpus import code_notes
    from quantfair.report import language_metadata

    for name, value in (("model", args.model), ("corpus", args.quantfair_corpus),
                        ("device", args.quantfair_device)):
        refuse_empty(name, value)
    if (args.quantfair_random_weights or args.quantfair_device) and not args.model:
        raise UsageError("--random-weights and --device apply to --model's tokenizer; "
                         "give --model")
    _check_output(args.json, "--json", args)
    corpus = selected_corpus(args.quantfair_corpus, "all" if args.quantfair_languages is None
                             else args.quantfair_languages)
    evaluator = None
    if args.model:
        from quantfair.evaluate import Evaluator
        from quantfair.models import load_model

        evaluator = Evaluator(load_model(args.model, args.quantfair_device,
                                         args.quantfair_random_weights))
    print(f"corpus: {corpus.source}  units per language: {len(corpus.units)}  "
          f"digest: {corpus.digest()}")
    if evaluator:
        note = evaluator.loaded.weights_note
        print(f"tokens: {evaluator.loaded.name}'s tokenizer" + (f" ({note})" if note else ""))
    metadata, records = language_metadata(corpus.texts), []
    for lang, units in corpus.texts.items():
        text = list(units.values())
        records.append({"language": lang, **metadata.get(lang, {}),
                        "units": len(text), "chars": sum(len(t) for t in text),
                        "bytes": sum(len(t.encode()) for t in text)})
        if evaluator:  # tokens scored: each token after the first
            records[-1]["tokens"] = sum(len(evaluator.token_ids(t)) - 1 for t in text)
    if args.json:
        _write(args.json, json.dumps({"corpus": corpus.source, "digest": corpus.digest(),
                                      "units": corpus.units, "tokenizer": evaluator and
                                      evaluator.loaded.name, "languages": records}, indent=2,
                                     ensure_ascii=False), say=False)
    rows = [[r["language"], r.get("name", r["language"]), r.get("script", "unknown"),
             r.get("family", "unknown"), r.get("resource_class", "unknown"), r["units"],
             f"{r['chars']:,}", f"{r['bytes']:,}"]
            + ([f"{r['tokens']:,}", f"{r['tokens'] / r['chars']:.2f}"] if evaluator else [])
            for r in records]
    headers = ["lang", "name", "script", "family", "class", "units", "chars", "bytes"]
    print(_table(headers + (["tokens", "tok/char"] if evaluator else []), rows))
    for note in code_notes(corpus.languages):
        print(f"note: {note}")
    return 0


def _ratio(record: dict, key: str) -> str:
    if record["undefined"]:
        return "undefined"
    return _interval(record, key, digits=2).strip()


def _interval(record: dict, key: str, scale: float = 1.0, digits: int = 6,
              unit: str = "") -> str:
    value, low, high = (record[key + suffix] for suffix in ("", "_low", "_high"))
    if value is None:
        return "n/a"
    shown = _fixed(scale * value, digits, digits + 4)
    unit = f" {unit}" if unit else ""
    if low is None or high is None:
        return f"{shown}{unit} (too few units for an interval)"
    return f"{shown} [{_fixed(scale * low, digits)}, {_fixed(scale * high, digits)}]{unit}"


def _fixed(value: float, digits: int, width: int = 0) -> str:
    """`value` to `digits` decimals, a negative that rounds to zero shown as 0 (a mean KL
    divergence of -1e-9 is summation error, not a sign)."""
    return f"{value if round(value, digits) else 0.0:{width}.{digits}f}"


def _distribution_block(record: dict) -> str:
    """One language's statistics laid out as llama.cpp's `llama-perplexity --kl-divergence`
    prints them ([95% CI] where llama.cpp prints ± one standard error)."""
    disparity = f"undefined ({record['kld_undefined']})" if record["kld_undefined"] else \
        _interval(record, "kld_disparity", digits=3)
    lines = [
        f"====== {record['language']}: {record['scheme']} protecting {record['strategy']} "
        "======",
        f"Mean    ln(PPL(Q)/PPL(base)): {_interval(record, 'ln_ppl_ratio')}",
        f"Mean    KLD: {_interval(record, 'kld_mean')}",
        *(f"{label:<8}KLD: {_fixed(record[key], 6, 10)}" for label, key in (
            ("Maximum", "kld_max"), ("99.9%", "kld_p99_9"), ("99.0%", "kld_p99"),
            ("95.0%", "kld_p95"), ("90.0%", "kld_p90"), ("Median", "kld_median"))),
        f"KLD per byte: {_interval(record, 'kld_per_byte')}",
        f"KLD disparity (per byte, vs en): {disparity}",
        f"Mean    Δp: {_interval(record, 'delta_p_mean', 100, 3, '%')}",
        f"RMS     Δp: {_interval(record, 'delta_p_rms', 100, 3, '%')}",
        f"Same top p: {_interval(record, 'same_top', 100, 3, '%')}",
    ]
    return "\n".join(lines)


def cmd_measure(args: argparse.Namespace) -> int:
    check_given_strategies(args.strategy)  # every strategy before minutes of work
    _check_output(args.json, "--json", args)
    session = _session(args)
    import torch

    from quantfair.corpus import code_notes, names_reference
    from quantfair.report import language_metadata, measurement_records
    from quantfair.strategies import protection_key

    strategies = _named(session, args.strategy or ["none"], measured=True)
    # each resolved (so checked) before any is measured
    kept = {s: protection_key(session.resolver().resolve(s)) for s in strategies}
    records = [record for strategy in strategies for record in measurement_records(
        session.measure(strategy, distribution=True), units=session.corpus.units,
        strategy=strategy, scheme=session.config.scheme.name, length="medium",
        overhead=session.overhead(strategy))]
    if args.json:  # before the tables: a reader that closes the pipe (`| head`) loses none
        _write(args.json, json.dumps({"settings": session.config.settings(),
                                      "device": str(session.loaded.device),  # auto resolved
                                      "threads": torch.get_num_threads(),
                                      "units": session.corpus.units,
                                      "records": records,
                                      "language_metadata": language_metadata(
                                          r["language"] for r in records)},
                                     indent=2),  # corpus digest: settings
               say=False)
    rows = [(r["strategy"], r["language"], significant(r["ppl_fp"], 5),
             significant(r["ppl_q"], 5), f"{r['bpb_q']:.3f}", f"{r['fertility']:.2f}",
             _interval(r, "degradation", scale=100, digits=2).strip(),
             _ratio(r, "seed_disparity"), _ratio(r, "disparity")) for r in records]
    print(f"model: {session.loaded.name}  scheme: {session.config.scheme.name}  "
          f"dtype: {session.config.dtype}  units: {len(session.corpus.units)}  "
          f"texts digest: {session.corpus.digest()}")
    if session.artifact:
        artifact = session.artifact
        print(f"artifact: {artifact.source}  "
              + (f"sha256: {artifact.file_sha256}  " if artifact.file_sha256 else "")
              + f"tensors hash: {artifact.weight_hash[:16]}  types: "
              + ", ".join(f"{kind} {n}" for kind, n in sorted(artifact.type_mix.items())))
    print(_table(["strategy", "lang", "ppl fp", "ppl q", "bits/byte q", "tok/char",
                  "degradation, % [95% CI]", "seed disparity", "disparity [95% CI]"], rows))
    undefined = {r["undefined"] for r in records if r["undefined"]}
    for reason in undefined:
        print(f"note: disparity undefined: {reason}")
    vocabulary = session.loaded.vocabulary
    warnings = (uniform_guess_warning(r, vocabulary, f"{r['scheme']} protecting {r['strategy']}")
                for r in records if r["language"] == REFERENCE)
    for warning in dict.fromkeys(w for w in warnings if w):  # the model's own once
        print(f"warning: {warning}")
    first: dict[str, str] = {}  # a protected set's key -> the first strategy keeping it
    for strategy, key in kept.items():
        if (same := first.setdefault(key, strategy)) != strategy:
            print(f"note: {strategy} keeps the same weights as {same}: the same numbers")
    if all(names_reference(code) for code in session.corpus.languages):
        print(f"note: disparities compare languages with {REFERENCE}, alone here: give another "
              "in --languages")
    for note in code_notes(session.corpus.languages):
        print(f"note: {note}")
    if len(session.corpus.units) < FEW_UNITS:
        print(f"note: {_few_units_note(len(session.corpus.units))}")
    for record in records:
        print()
        print(_distribution_block(record))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _write(path: str | os.PathLike, text: str, say: bool = True) -> None:
    """Write an output file whole or not at all (a hard link to another file is replaced, not
    written through), saying so with `say`; a device or pipe (`/dev/stdout`) is written to.
    An I/O error (a full disk) names the file."""
    from pathlib import Path

    from quantfair.storage import atomic_write

    try:
        if Path(path).exists() and not Path(path).is_file():
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            atomic_write(Path(path), text.encode("utf-8"))
    except OSError as error:
        raise QuantfairError(f"could not write {path}: {error.strerror or error}") from None
    if say:
        print(f"wrote {path}")


def _finite(value: float | None, digits: int) -> str:
    """A search score or disparity: "undefined" where English's NLL did not rise (inf)."""
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "undefined"


def _suggested(session, measured: bool = False, artifacts: bool = True,
               entries: bool = True) -> str:
    """The strategy of the latest `quantfair suggest` result for the session's model and
    scheme, named on stderr with what its search's audit units said against it; `measured`:
    with a warning where the session's units include those it was searched on; `artifacts`:
    whether the command takes `--quantized`; `entries`: whether it uses the single entries
    of the recipe (export lists and writes whole tensors only), which calibrated selectors
    may choose otherwise here. Raises UsageError when there is none."""
    from quantfair.report import searched_with, suggestion_warnings, unsearched_languages
    from quantfair.suggest import (
        load_suggestion,
        no_suggestion,
        other_corpus,
        reselected,
        search_units_given,
        searched_units,
    )

    found = load_suggestion(session)
    if found is None:
        raise no_suggestion(session, artifacts)
    print(f"quantfair: --strategy suggested is {found['strategy']}, the latest suggestion for "
          f"{session.config.scheme.name} ({searched_with(found)})", file=sys.stderr)
    for warning in suggestion_warnings(found):
        print(f"quantfair: warning: {warning}", file=sys.stderr)
    if entries and (corpus := other_corpus(found, session)):  # text its selectors read
        print(f"quantfair: note: the suggestion was searched on another corpus text ({corpus}, "
              "as it read then)", file=sys.stderr)
    if measured and (others := unsearched_languages(found, session.corpus.languages)):
        print("quantfair: warning: the suggestion was searched without these languages of "
              f"this command, so it was not fitted to them: {', '.join(others)}",
              file=sys.stderr)  # OTHER_LANGUAGES speaks of audits, which commands do not run
    if entries and (why := reselected(found, session)):
        print(f"quantfair: warning: {why}", file=sys.stderr)
    if measured and (seen := searched_units(found, session)):
        print(f"quantfair: warning: the suggestion was searched on {some(seen)}, which "
              "these units include: not a held-out measurement; give "
              f"{search_units_given(found)} as in the search", file=sys.stderr)
    return found["strategy"]


def _check_output(path: str | None, flag: str, args: argparse.Namespace) -> None:
    """Before the model loads: a file to write must have a writable directory to go in (one
    that exists: a mistyped folder is not made), and be neither a directory nor a file the
    command reads (the model, its artifact, the corpus)."""
    from pathlib import Path

    if path is None:
        return
    if not path.strip():
        raise UsageError(f"{flag} is empty; give the path of a file")
    if path == "-":
        raise UsageError(f"{flag} -: standard output is not written to; give the path of a file")
    refuse_inputs(path, flag, getattr(args, "model", None),
                  getattr(args, OPTIONS["quantized"].dest, None),
                  getattr(args, OPTIONS["corpus"].dest, None))
    if path.endswith(("/", os.sep)) or Path(path).is_dir():
        raise UsageError(f"{flag} {path} is a directory; give the path of a file")
    folder = Path(path).parent
    if folder.is_file():
        raise UsageError(f"{flag} {path}: {folder} is a file, not a directory")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: no directory {folder}")
    check_folder_writable(Path(path).parent, flag)


def _few_units_note(units: int) -> str:
    """Why decisions on fewer than `FEW_UNITS` units per language are machinery checks."""
    from quantfair.metrics import MIN_UNITS

    what = ("there is no interval" if units < MIN_UNITS else
            "the bootstrap CIs understate the uncertainty")
    return (f"with {units_text(units)} per language {what} (no exact paired test reaches 5% "
            f"below {FEW_UNITS} units): give more --units")


def cmd_suggest(args: argparse.Namespace) -> int:
    budget = parse_percent(args.budget, "--budget")
    if not args.budget.strip().endswith("%"):  # 0.12 meant as a fraction would be 0.12%
        raise UsageError(f"--budget must be a percentage with its % sign, like 12%, got "
                         f"'{args.budget}'")
    if budget == 1:
        raise UsageError("--budget 100% keeps every parameter in full precision: nothing is "
                         "left to search (give a budget below 100%)")
    _check_output(args.json, "--json", args)
    # before the model loads (0 would mean every held-out unit, silently)
    args.calibration_units = integer_option("calibration-units", args.calibration_units, 1)
    args.width = integer_option("width", args.width, 1)
    def searchable(config: RunConfig) -> None:
        require_other_languages(config.languages)
        config.check_search(args.calibration_units, budget)

    session = _session(args, searchable)
    from quantfair.report import (
        fairer_than_none,
        suggestion_warnings,
        trace_label,
        undefined_in_comparison,
    )
    from quantfair.suggest import suggest

    result = suggest(session, budget, calibration_units=args.calibration_units,
                     width=args.width, announce=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:  # before the tables: a reader that closes the pipe (`| head`) loses none
        _write(args.json, json.dumps(result.to_json(), indent=2), say=False)
    print(f"model: {result.model}  scheme: {result.scheme}  budget: {100 * budget:g}%")
    if result.note:
        print(f"note: {result.note}")
    print(f"suggested strategy: {result.strategy}  (overhead {percent(result.overhead)} of "
          "parameters)")
    if result.trace:
        print(f"\nsearch on calibration units {', '.join(result.calibration_units)} "
              f"(this run: {result.forward_passes:,} forward passes, {result.wall_s:.0f} s; "
              "measurements cached by earlier runs are reused; +X: X added to what earlier "
              "steps kept):")
        print(_table(["phase", "step", "candidate", "score", "mean disparity", "overhead",
                      "en KLD (nats)", "chosen"],
                     [(s.phase, s.step, trace_label(s.candidate, s.strategy),
                       _finite(s.score, 4),
                       _finite(s.mean_disparity, 3), percent(s.overhead),
                       f"{s.english_damage:.2f}",
                       "*" if s.chosen else "" if s.allowed else "no: raises damage")
                      for s in result.trace]))
    if result.confirmation:
        print(f"\nfinalists scored again on {len(result.confirmation_units)} held-out units per "
              f"language ({', '.join(result.confirmation_units)}; the lowest of those proven "
              "fairer than none, *, else of all, is refined):")
        print(_table(["finalist", "score", "mean disparity", "worst disparity",
                      "it - none (mean)", "it - none (worst)", "proven"],
                     [(c["strategy"], _finite(c["score"], 4), _finite(c["mean_disparity"], 3),
                       _finite(c["worst_disparity"], 3), cell(c.get("mean_vs_none")),
                       cell(c.get("worst_vs_none")), "*" if c.get("proven") else "")
                      for c in result.confirmation]))
    if result.comparison:
        print("\non the held-out audit units (vs: paired difference suggested - baseline, "
              "95% CI; below 0 the suggestion is better; CIs are plain percentile intervals, "
              "as the search's acceptance was recorded: narrower than the audits' on few "
              "units):")

        print(_table(["", "strategy", "overhead", "mean disparity", "worst disparity",
                      "vs (mean)", "vs (worst)", "en degradation"],
                     [(row["label"] + ("" if row["storable"] else " *"),
                       ", ".join(row["strategies"]),
                       percent(row["overhead"]), cell(row["mean_disparity"]),
                       cell(row["worst_disparity"]), cell(row.get("mean_difference")),
                       cell(row.get("worst_difference")),
                       f"{100 * row['english_degradation']:.1f}%")
                      for row in result.comparison]))
        print(fairer_than_none(result.comparison))
        for reason in undefined_in_comparison(result.comparison):
            print(f"note: disparity undefined: {reason}")
        for warning in suggestion_warnings(result.to_json()):
            print(f"warning: {warning}")
        if not all(row["storable"] for row in result.comparison):
            print(f"* keeps single entries, which a file cannot store under {result.scheme} "
                  "(one type per tensor): simulated here, not a recipe for this format")
        if len(result.audit_units) < FEW_UNITS:
            print(f"note: {_few_units_note(len(result.audit_units))}")
        print(f"audit it: --strategy suggested with this model, scheme, languages and corpus, "
              f"and --units {len(result.audit_units)} as here (more units would take in those "
              "it was searched on)")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantfair.config import DEFAULT_TOLERANCE, tolerance_option
    from quantfair.html import render_html
    from quantfair.report import (
        NothingShared,
        compare,
        comparison_notes,
        load_report,
        regressions_line,
        settle_verdict,
    )

    if args.new is None:
        return _render_report(args)
    tolerance = DEFAULT_TOLERANCE if args.quantfair_tolerance is None else \
        tolerance_option(args.quantfair_tolerance)
    for name, path in (("OLD", args.old), ("NEW", args.new)):
        if not path.strip():
            raise UsageError(f"{name} is empty; give the path of a JSON report")
    _check_output(args.output, "--output", args)
    new_path = Path(args.new)
    output = Path(args.output or new_path.with_name(new_path.stem + "-vs-baseline.html"))
    compared = [Path(path).resolve() for path in (args.old, args.new)]
    compared += [path.with_suffix(".html") for path in compared]
    if output.resolve() in compared or output.exists() and any(  # a hard link too
            path.exists() and output.samefile(path) for path in compared):
        raise UsageError(f"--output {output} would overwrite a report it compares or the HTML "
                         "report beside it")
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--output {output}: the comparison is an HTML page; name it .html "
                         "(NEW is the machine-readable report)")
    old, new = load_report(args.old), load_report(args.new)
    if not args.output:
        _check_default_output(output, "the comparison's HTML")
    if Path(args.old).resolve() == new_path.resolve():
        print(f"note: {args.old} is compared with itself: nothing can differ")
    elif old == new:  # a copy: a gate comparing the baseline with itself by mistake
        print(f"note: {args.new} is a copy of {args.old} (the same report, created "
              f"{old.get('created')}): nothing can differ")
    try:
        # as the run that wrote NEW compared (under --quantfair-strict an audit that passed
        # and is inconclusive now is a regression), or strictly where asked
        strict = args.strict or bool((new.get("settings") or {}).get("strict"))
        new["comparison"] = compare(old, new, tolerance, strict=strict, baseline_file=args.old,
                                    run=f"the run of {args.new}")
        new["comparison"]["strict_option"] = "--strict"  # what its notes name, page and here
    except NothingShared as error:
        settle_verdict(new)
        if not (why := _undecided(new, args.new)):
            raise
        if str(error) not in why:  # NEW's run, against the same baseline, said it already
            why += f"; and the gate was not checked: {error}"
        print(f"quantfair: {why}", file=sys.stderr)
        return 3
    settle_verdict(new)  # a regression fails the run its audits passed
    regressions = new["comparison"]["regressions"]
    for line in comparison_notes(new["comparison"]):
        print(line)
    for line in regressions:
        print(f"REGRESSION: {line}")
    print(regressions_line(new["comparison"]))
    failed = [a for a in new.get("audits", []) if a.get("outcome") == "failed"]
    why = _undecided(new, args.new)  # the exit is then 3, whatever failed
    if not why and not regressions:  # a script gating on this exit alone would ship it
        if failed:
            print(f"note: {plural(len(failed), 'audit')} of {args.new} failed in its own run "
                  "(its exit was 1): this exit code says only that nothing regressed against "
                  f"{args.old}")
        elif new["verdict"] == "failed":  # e.g. inconclusive under strict
            print(f"note: the run of {args.new} failed ({new['summary']['headline']}; its "
                  f"exit was 1): this exit code says only that nothing regressed against "
                  f"{args.old}")
    _write(output, render_html(new))
    if why:
        print(f"quantfair: {why}", file=sys.stderr)
        return 3
    return 1 if regressions else 0


def _render_report(args: argparse.Namespace) -> int:
    """`quantfair report REPORT.json`: its HTML page again (beside it unless --output), e.g.
    after an upgrade or where only the JSON was kept."""
    from pathlib import Path

    from quantfair.html import render_html
    from quantfair.report import load_report, settle_verdict

    for given, name in ((args.quantfair_tolerance is not None, "--tolerance"),
                        (args.strict, "--strict")):
        if given:
            raise UsageError(f"{name} applies to a comparison: give OLD.json and NEW.json")
    if not args.old.strip():
        raise UsageError("REPORT is empty; give the path of a JSON report")
    _check_output(args.output, "--output", args)
    report = load_report(args.old)  # first: an HTML page given for REPORT is said to be one
    settle_verdict(report)  # verdict, counts and headline from its audits, not as stored
    output = Path(args.output or Path(args.old).with_suffix(".html"))
    if output.suffix.lower() not in (".html", ".htm") or output.resolve() == Path(
            args.old).resolve():
        raise UsageError(f"--output {output}: the report is rendered as an HTML page; name it "
                         ".html")
    if not args.output:
        _check_default_output(output, "the HTML report")
    _write(output, render_html(report))
    # a page rendered is the command's success (exit 0): the verdict is said, not gated on
    print(f"verdict: {report['verdict']}: {report['summary']['headline']}")
    return 0


def _check_default_output(output, what: str) -> None:
    """The HTML `quantfair report` writes beside the report it reads where no --output is
    given: that folder, though it exists, may be read-only, or one of quantfair's caches."""
    try:
        check_folder_writable(output.parent, f"{what} {output}")
    except UsageError as error:
        raise UsageError(f"{error}; give --output elsewhere") from None
    refuse_inputs(output, what, None, None, None, elsewhere="give --output elsewhere")


def _undecided(report: dict, path: str) -> str:
    """Why the report at `path`, its verdict settled, cannot pass a release gate (its run is
    incomplete or an audit raised), else ""."""
    if report["verdict"] not in ("incomplete", "error"):
        return ""
    why = "; ".join(report["incomplete"]) or "an audit raised an error instead of a verdict"
    return (f"{path} is the report of a run with verdict {report['verdict']} ({why}): "
            "it cannot pass a release gate")


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    if len(args.strategy) > 1:  # one file holds one recipe
        raise UsageError(f"export takes one --strategy; join terms with +, e.g. "
                         f"{'+'.join(args.strategy)}")
    args.strategy = args.strategy[0]
    protect_as = (args.protect_as or "f32").upper()
    if args.emit == "hf" and args.protect_as and not args.output:
        raise UsageError("--emit hf lists modules transformers leaves unquantized, in the "
                         "model's own dtype: --protect-as does not apply")
    _check_output(args.output, "-o", args)
    if not args.emit and not args.output:
        raise UsageError("export needs -o FILE.gguf, --emit llama-quantize|hf, or both")
    if args.output and not is_gguf(args.output):
        raise UsageError(f"-o {args.output}: a GGUF file's name ends in .gguf (transformers "
                         "and --quantized read no other)")
    if args.strategy != "suggested":  # before the model loads
        _check_expressible(args, args.strategy)

    def writable_as_gguf(config: RunConfig) -> None:
        if args.output:
            from quantfair.export import check_export_source
            from quantfair.models import gguf_source

            check_block_format(config.scheme)
            check_export_source(config.model, gguf_source(config.model, config.random_weights),
                                args.output)

    # a recipe names tensors (a file is written under gguf: types only); a suggestion is
    # looked up by the scheme's file
    session = _session(args, writable_as_gguf, quantizer=args.strategy == "suggested")
    from quantfair.export import (
        export_gguf,
        expressible,
        gguf_names,
        llama_quantize_overrides,
        modules_to_not_convert,
        whole_tensors,
    )
    from quantfair.quantize import in_scope

    # it writes from FP, whole tensors only
    (strategy,) = _named(session, [args.strategy], artifacts=False, entries=False)
    if args.strategy == "suggested":  # its recipe, before its selectors calibrate
        _check_expressible(args, strategy)
    resolver = session.resolver()
    if args.emit:
        protected, element = expressible(resolver, strategy)
        if element and not protected:
            _inexpressible(args, strategy)
        if element:
            print(f"quantfair: {args.emit} cannot express {' + '.join(element)} (single "
                  "weights or columns): left out; the rest of the recipe follows",
                  file=sys.stderr)
    if args.output:
        protected = whole_tensors(resolver.resolve(strategy))
    parts = session.bank.parts
    if args.emit == "llama-quantize":
        names = gguf_names(session.loaded, parts)
        recipe = llama_quantize_overrides(protected, parts, names, protect_as)
        scheme = session.config.scheme
        kept = {names.get(name) for name in protected}
        embedding = [argument for flag, tensor in (("--token-embedding-type", "token_embd"),
                                                   ("--output-tensor-type", "output"))
                     if scheme.gguf_type and f"{tensor}.weight" not in kept  # else f32 below
                     for argument in (flag, scheme.embedding_type.lower())]  # as audited
        print(shlex.join(embedding + recipe))
        if scheme.keeps_entries and protected:  # round to nearest: no llama.cpp type
            print(f"quantfair: {scheme.name} is not a llama.cpp tensor type: llama-quantize "
                  "rounds the rest with its own (and quantizes the token embedding and output "
                  f"head by its rules), so this audit's numbers are not the file's; audit "
                  "under gguf:<type> or llama.cpp:<type> for those", file=sys.stderr)
    elif args.emit == "hf":
        recipe = modules_to_not_convert(protected, parts)
        # the output head: its own matrix, or the token embedding it is tied to
        model = session.loaded.model
        head = [name for name, part in parts.items() if part.block == "head" and part.is_matrix]
        tied = not head and model.config.get_text_config().tie_word_embeddings
        if tied:
            head = [name for name, part in parts.items()
                    if (part.block, part.role) == ("embed", "tok")]
        scheme = session.config.scheme
        output = model.get_output_embeddings()
        output = next((name for name, module in model.named_modules() if module is output), "")
        if not output:  # no output module to name (a model of its own kind)
            head = []
        if tied and set(head) & set(protected) and output not in recipe:
            recipe.append(output)  # tied to the protected token embedding: kept with it
            print(f"quantfair: {output} is listed: it is tied to the token embedding that "
                  f"{strategy} keeps, and given a list transformers' quantizers quantize it "
                  "unless it is on the list", file=sys.stderr)
        elif head and not set(head) & set(protected):
            # transformers' quantizers skip the head by default only where no list is given
            if not scheme.gguf_type and not in_scope(parts[head[0]], scheme):  # kept as audited
                recipe.append(output)
                print(f"quantfair: {output} is listed: this audit kept the output head "
                      f"({scheme.name}), and given a list transformers' quantizers quantize "
                      "it unless it is on the list", file=sys.stderr)
            else:
                audited = (f"stored it as {scheme.embedding_type}" if scheme.gguf_type else
                           "quantized it")
                print(f"quantfair: transformers' quantizers skip the output head (lm_head) by "
                      f"default only where no list is given: with this list they quantize it; "
                      f"this audit {audited} ({scheme.name})", file=sys.stderr)
        print(json.dumps(recipe))
    if args.emit and not protected:
        print(f"quantfair: {strategy} protects nothing: nothing to list", file=sys.stderr)
    elif args.emit and not recipe:
        print(f"quantfair: {args.emit} leaves what {strategy} keeps (norms, biases) "
              "unquantized anyway: nothing to list", file=sys.stderr)
    if args.output:
        mix = export_gguf(session.loaded, parts, session.config.scheme, protected,
                          Path(args.output), protect_as)
        kept = [name for name in protected if in_scope(parts[name], session.config.scheme)]
        if not kept and strategy != "none":
            print(f"quantfair: warning: {strategy} keeps nothing that "
                  f"{session.config.scheme.name} quantizes: the file is the unprotected one",
                  file=sys.stderr)
        print(f"wrote {args.output}: {session.config.scheme.name} protecting {strategy} "
              f"({len(kept)} tensors in {protect_as}"
              f"{', norms and biases F32' if protect_as != 'F32' else ''}); tensor types "
              + ", ".join(f"{kind} {count}" for kind, count in sorted(mix.items())),
              file=sys.stderr if args.emit else sys.stdout)
    return 0


def _check_expressible(args: argparse.Namespace, strategy: str) -> None:
    """UsageError where `strategy` keeps single entries that the export cannot leave out: any
    for a file (`-o`), nothing else for `--emit`."""
    from quantfair.strategy_syntax import element_terms

    terms, element = element_terms(strategy)
    if element and (args.output or element == terms):
        _inexpressible(args, strategy)


def _inexpressible(args: argparse.Namespace, strategy: str) -> None:
    what = f"-o {args.output}" if args.output else f"--emit {args.emit}"
    instead = ("search again under a gguf: scheme (quantfair suggest MODEL --quant gguf:Q4_0), "
               "whose candidates are whole tensors" if args.strategy == "suggested" else
               "give whole tensors (e.g. L0, L0.attn, ln, biases)")
    raise UsageError(f"{what} cannot express {strategy}: it keeps single weights or columns, "
                     f"which GGUF and transformers files do not store; {instead}")


RUN_OPTIONS = ("quant", "embedding-type", "quantized", "quantized-label", "languages", "units",
               "corpus", "threads")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantfair", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="components and strategy overheads of a model")
    _add_model_arguments(inspect, *RUN_OPTIONS)
    inspect.add_argument("--strategy", action="append", default=[],
                         help="extra strategy to size (repeatable; 'suggested': the cached "
                              "`quantfair suggest` result; calibration selectors such as "
                              "act:P%% calibrate on the held-out units of --languages)")
    inspect.set_defaults(run=cmd_inspect)

    corpus = commands.add_parser("corpus", help="languages, units and tokens of the corpus")
    corpus.add_argument("--model", help="also count tokens with this model's tokenizer")
    add_options(corpus.add_argument, prefix="", names=("random-weights", "device", "corpus"))
    corpus.add_argument("--languages", dest=OPTIONS["languages"].dest, metavar="LANGUAGES",
                        help=f"{LANGUAGES_HELP} (default: all)")
    corpus.add_argument("--json", help="also write the table, with each language's ISO 639-3 "
                                       "code and unit names, to this JSON file")
    corpus.set_defaults(run=cmd_corpus)

    measure = commands.add_parser("measure", help="perplexity, degradation and disparity")
    _add_model_arguments(measure, *RUN_OPTIONS)
    measure.add_argument("--strategy", action="append", default=[],
                         help="protection strategy (repeatable; default none; 'suggested': "
                              "the cached `quantfair suggest` result)")
    measure.add_argument("--json", help="also write the numbers to this JSON file")
    measure.set_defaults(run=cmd_measure)

    suggest = commands.add_parser("suggest", help="search this model's critical parameters")
    _add_model_arguments(suggest, *RUN_OPTIONS)
    suggest.add_argument("--budget", required=True, help="share of parameters to keep, e.g. 12%%")
    suggest.add_argument("--calibration-units", default="4",
                         help="held-out units per language scored during the search "
                              "(default %(default)s)")
    suggest.add_argument("--width", default="3",
                         help="whole layers tried per step, lowest score alone first "
                              "(default %(default)s)")
    suggest.add_argument("--json", help="also write the result to this JSON file")
    suggest.set_defaults(run=cmd_suggest)

    export = commands.add_parser("export", help="a protection strategy as a GGUF file or as "
                                                "arguments for llama-quantize / transformers")
    unread = ("taken as measure and suggest take it, so that one set of options serves "
              "every command; export reads no text")
    _add_model_arguments(export, "quant", "embedding-type", "languages", "units", "corpus",
                         helps={"--dtype": "takes the suggestion searched in this dtype "
                                           f"for 'suggested': {', '.join(DTYPES)} (default "
                                           "float32; export evaluates nothing)",
                                **dict.fromkeys(("--languages", "--units", "--corpus"), unread)})
    export.add_argument("--strategy", required=True, action="append",
                        help="protection strategy to keep in F32/F16 ('suggested': the cached "
                             "`quantfair suggest` result); one, its terms joined by +")
    export.add_argument("-o", "--output", help="GGUF file to write (needs --quant gguf:TYPE "
                                               "and a model loaded from a GGUF file)")
    export.add_argument("--protect-as", choices=("f32", "f16"), type=str.lower,
                        help="type of the protected tensors (default f32; not for --emit hf)")
    export.add_argument("--emit", choices=("llama-quantize", "hf"), type=str.lower,
                        help="print llama-quantize --tensor-type overrides, or a "
                             "modules_to_not_convert list for transformers")
    export.set_defaults(run=cmd_export)

    report = commands.add_parser("report", help="compare two JSON reports without re-running, "
                                                 "or render one as HTML again")
    report.add_argument("old", metavar="OLD", help="baseline JSON report (alone: the report "
                                                   "to render)")
    report.add_argument("new", metavar="NEW", nargs="?", help="new JSON report")
    report.add_argument("-o", "--output", help="HTML file (default: NEW-vs-baseline.html; for one "
                                         "report, its .html beside it)")
    add_options(report.add_argument, prefix="", names=("tolerance",))
    report.add_argument("--strict", action="store_true",
                        help="compare as --quantfair-strict does: audits passed before and "
                             "inconclusive, skipped or, for release gates, not run now, and "
                             "growth beyond the tolerance not significant, are regressions "
                             "(default: as NEW's run compared)")
    report.set_defaults(run=cmd_report)
    for command in commands.choices.values():
        command.set_defaults(parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; any failure is one line on stderr and a non-zero exit (the traceback
    only with QUANTFAIR_DEBUG=1)."""
    if sys.stdout is None:  # started with `>&-`: what it prints (--help too) would be lost
        print("quantfair: error: standard output is closed; redirect it (to /dev/null to "
              "discard what is printed)", file=sys.stderr)
        return 2
    _Parser.given = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    args, unknown = build_parser().parse_known_args(_Parser.given)
    if unknown:  # said by the command's own parser, which names its --help
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = flag_variable("QUANTFAIR_DEBUG")
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except BrokenPipeError:  # `quantfair corpus | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # as a shell reports a tool that SIGPIPE ended (not 1,
        # which `report` gives a regression)
    except KeyboardInterrupt as interrupt:
        close_bars()
        terminated = isinstance(interrupt, Terminated)
        print(f"quantfair: {TERMINATED if terminated else 'interrupted'} (finished work is "
              "cached)", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as error:
        if debug:
            raise
        close_bars()
        print(f"quantfair: error: {one_line(_error_text(error))}", file=sys.stderr)
        expected = isinstance(error, (QuantfairError, OSError)) or _out_of_memory(error)
        return 2 if expected else 3


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`timeout`, a CI job cancelled) stops the command as Ctrl-C does: files being
    written are removed, not left half-written."""
    def interrupt(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--budget -5%` as `--budget=-5%`: argparse takes a value starting with a dash for an
    option unless it is a plain number, and says the option lacks its argument; attached, the
    value reaches the option's own check and its one-line error."""
    out: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":  # what follows is positional, as given
            return out + argv[index:]
        if (out and out[-1].startswith("--") and "=" not in out[-1]
                and re.match(r"-[\d.]", token)):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


_BY_DEST = {option.dest: option for option in OPTIONS.values()}
_A_VALUE = Option("value", "", number=True)  # a command's own option: `--width 03` is 3


class _StoreOnce(argparse.Action):
    """argparse's store, refusing an option given twice with different values (`--units 5
    --units 100`, not `--device CPU --device cpu`: `Option.reading`): one would silently win,
    as the pytest plugin refuses too."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", {})
        option = _BY_DEST.get(self.dest, _A_VALUE)
        read = option.reading if isinstance(values, str) else lambda value: value
        if option_string and self.dest in given and read(given[self.dest][1]) != read(values):
            flag, value = given[self.dest]
            parser.error(f"{flag} {shell_word(str(value))}, {option_string} "
                         f"{shell_word(str(values))}: the option is given more than once, with "
                         "different values; give it once")
        given.setdefault(self.dest, (option_string, values))
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other bad input (its subcommands' parsers too);
    an option given twice with different values is one. Options are taken whole, as pytest
    takes its own: an abbreviation (`--lang`) that a later option could make ambiguous
    would break the scripts that use it."""

    given: Sequence[str] = ()  # the command line `main` parses, for `error`'s hint

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, refusing a long option typed with one dash (`-output x.html`, or
        `-out.html`): a short option's value attached, `-o utput`, would be taken silently."""
        both = self._short_and_long()
        for token in args or ():
            if token == "--":
                break
            for short, long in both:
                if token.startswith(short) and not token.startswith("--") and \
                        token[1:].startswith(long[2:5]):
                    self.error(f"{token} is read as {short} {token[2:]}: write {long} with two "
                               f"dashes, or {short} and its value apart")
        return super().parse_known_args(args, namespace)

    def _short_and_long(self) -> list[tuple[str, str]]:
        """(`-o`, `--output`) for each option with both forms that takes a value."""
        return [(short, long) for action in self._actions if action.nargs != 0
                for short in action.option_strings if not short.startswith("--")
                for long in action.option_strings if long.startswith("--")]

    def error(self, message: str):  # the command is named once, by its --help
        unknown = self._unknown_options()
        if unknown and message.startswith("the following arguments are required"):
            # said before what is missing: `--bud` is not a missing --budget, nor `--bogus`
            message = f"unrecognized arguments: {' '.join(flag for flag, _ in unknown)}"
        if message.startswith("unrecognized") and (hint := "; ".join(
                f"{flag} abbreviates {whole}" for flag, whole in unknown if whole)):
            message += f" (options are not abbreviated: {hint})"
        self.exit(2, f"quantfair: error: {one_line(message)} (see {self.prog} --help)\n")

    def _unknown_options(self) -> list[tuple[str, str]]:
        """The options of the command line that this parser does not take, each with the
        options it abbreviates (`--bud`: `--budget`), or "" (negative numbers are attached
        to their options: `_attach_negative_values`)."""
        found = []
        for token in self.given:
            if token == "--":  # what follows is positional
                break
            flag = token.partition("=")[0]
            short = flag[:2] if not flag.startswith("--") else flag  # `-oFILE`: -o and a value
            if flag.startswith("-") and flag != "-" and short not in self._option_string_actions:
                whole = [o for o in self._option_string_actions
                         if flag.startswith("--") and o.startswith(flag)]
                found.append((flag, " or ".join(whole)))
        return found


def _out_of_memory(error: Exception) -> bool:
    # torch.OutOfMemoryError is matched by name: the CLI imports torch only when needed.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def _error_text(error: Exception) -> str:
    if isinstance(error, QuantfairError):
        return str(error)
    if _out_of_memory(error):
        return "out of memory: try fewer --units or languages, or another --device"
    if isinstance(error, OSError):  # exit 2, as any OSError: one line, never "unexpected"
        return os_error_text(error)
    return (f"unexpected {type(error).__name__}: {first_line(error)} "
            "(QUANTFAIR_DEBUG=1 shows the traceback; please report it)")


if __name__ == "__main__":
    sys.exit(main())
