"""The `quantfair` command: inspect, corpus, measure, report, suggest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quantfair.errors import QuantfairError


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(
            c.rjust(w) if c[:1].isdigit() or c[:1] == "-" else c.ljust(w)
            for c, w in zip(row, widths)
        ) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="smollm2-135m, a Hugging Face id, a directory or a .gguf")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the architecture from a shipped config, no weights needed")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--quant", default="int4", help="scheme, e.g. int4, int4-g128, int8-channel")


def cmd_inspect(args: argparse.Namespace) -> int:
    from quantfair.models import load_model
    from quantfair.quantize import QuantScheme, WeightBank
    from quantfair.strategies import SEED_PARETO, StrategyResolver

    scheme = QuantScheme.parse(args.quant)
    loaded = load_model(args.model, device=args.device, random_weights=args.random_weights)
    bank = WeightBank(loaded.model)
    resolver = StrategyResolver(bank, scheme)
    strategies = [(expr, seed_name, reported) for seed_name, (expr, reported) in SEED_PARETO.items()]
    strategies += [(expr, "", "") for expr in args.strategy]
    resolved = [(expr, seed, reported, resolver.overhead(resolver.resolve(expr)))
                for expr, seed, reported in strategies]

    total = sum(c.numel for c in bank.parts.values())
    print(f"model: {loaded.name}  family: {loaded.family}  layers: {resolver.layers}  "
          f"parameters: {total:,}")
    print(f"source: {loaded.source}")
    if loaded.weights_note:
        print(f"weights: {loaded.weights_note}")
    print()
    rows = [(c.layer if c.layer is not None else "-", c.block, c.role, c.kind, f"{c.numel:,}")
            for c in bank.parts.values()]
    print(_table(["layer", "block", "role", "kind", "params"], rows))
    print()
    print(f"overhead of keeping each strategy's parameters in FP16 next to {scheme.name} codes:")
    rows = [(expr, seed, f"{o.protected:,}", f"{100 * o.fraction:.3f}%",
             f"{100 * o.bytes_fraction:.2f}%", f"{reported}%" if reported else "")
            for expr, seed, reported, o in resolved]
    print(_table(["strategy", "seed name", "protected", "% params", "% bytes", "seed (gpt2)"],
                 rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantfair", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="components and strategy overheads of a model")
    _add_model_arguments(inspect)
    inspect.add_argument("--strategy", action="append", default=[],
                         help="extra strategy to size (repeatable)")
    inspect.set_defaults(run=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except QuantfairError as error:
        print(f"quantfair: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantfair: interrupted (finished work is cached)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
