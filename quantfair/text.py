"""Plain-text output shared by the CLI, the pytest summary and the benchmarks: tables and
intervals. Imports nothing heavy, so `quantfair --help` and usage errors answer at once."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from wcwidth import wcswidth

# ASCII decimal notation: Python's int() and float() also take `1_0` (10) and other scripts'
# digits (`٣`, 3), which a setting is more likely to hold by mistake than to mean; at most 18
# digits, more than any count of units, threads or MiB (and int64's range)
INTEGER = re.compile(r"\s*[+-]?[0-9]{1,18}\s*")


def decimal_integer(text: str) -> int:
    """`int(text)` for ASCII decimal notation of at most 18 digits only (`INTEGER`);
    ValueError otherwise, its message what the value must be ("an integer", or for more
    digits "an integer of at most 18 digits")."""
    if not INTEGER.fullmatch(text):
        long = re.fullmatch(r"\s*[+-]?[0-9]+\s*", text)
        raise ValueError("an integer" + (" of at most 18 digits" if long else ""))
    return int(text)


LINE_HEAD, LINE_TAIL = 600, 300  # characters an over-long error line keeps of each end


def without_colour(text: str) -> str:
    """`text` without terminal colour codes (torch marks the advice of its errors in bold)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, without colour codes ("" where it has
    none)."""
    text = without_colour(str(error)).strip()
    return text.splitlines()[0].strip() if text else ""


def one_line(message: str) -> str:
    """`message` as one error line of a readable length: line breaks shown as `\\n`; past
    `LINE_HEAD + LINE_TAIL` characters (a value typed or pasted whole), its middle left out
    and counted, so that the line keeps how it starts and the advice it ends with."""
    message = message.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    if len(message) <= LINE_HEAD + LINE_TAIL + 100:
        return message
    left_out = len(message) - LINE_HEAD - LINE_TAIL
    return (f"{message[:LINE_HEAD]} [... {left_out:,} characters left out ...] "
            f"{message[-LINE_TAIL:]}")


def shell_word(value: str) -> str:
    """`value` as a shell reads it (`shlex.quote`), quoted also where it holds a comma, so
    that values listed with commas read apart: `--languages 'en,he', --languages he`."""
    quoted = shlex.quote(value)
    return f"'{value}'" if quoted == value and "," in value else quoted


def brief(text: str, limit: int = 40) -> str:
    """`text` as an error message echoes it: at most `limit` characters, the rest counted."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def capitalized(text: str) -> str:
    """`text` with its first letter upper-case, the rest as it is ("95% CI", "en's"), to
    start a sentence; `str.capitalize` would lower the rest."""
    return text[:1].upper() + text[1:]


def some(names: list[str]) -> str:
    """'a, b, c' for a few names; 'a, b, c, d and 2 more' for more than four."""
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def experiment_span(ids: list[str]) -> str:
    """'001/002/003' -> '001-003'; ids that do not run on stay as they are."""
    if len(ids) > 2 and all(i.isdigit() for i in ids) and \
            [int(i) for i in ids] == list(range(int(ids[0]), int(ids[-1]) + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return "/".join(ids)


def plural(count: int, noun: str) -> str:
    """'1 unit', '8 units' (nouns taking an s)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def units_text(count: int) -> str:
    """'1 unit', '8 units'."""
    return plural(count, "unit")


def significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, trailing zeros kept so that a column reads
    alike (`884.90`, `1008.0`, `7.9000e+10`; no bare trailing point: `12346`)."""
    return f"{value:#.{digits}g}".replace(".e", "e").removesuffix(".")


def percent(fraction: float) -> str:
    """A share as a percentage to 3 decimals (`11.185%`), or to 2 significant digits where
    those show 0 but it is not (64 weights of 135M: `4.8e-05%`, not `0.000%`)."""
    value = 100 * fraction
    return f"{value:.2g}%" if 0 < abs(value) < 0.0005 else f"{value:.3f}%"


def interval_text(estimate: dict | None) -> str:
    """`value [low, high]` of an estimate as JSON holds it ("undefined" when it is, "" when
    there is none)."""
    if not estimate:
        return ""
    value = estimate.get("value")
    if estimate.get("undefined") or value is None or value != value:  # None or NaN
        return "undefined"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: two for a wide (CJK) character, none for a
    combining mark (wcwidth, after Unicode's East Asian Width); `len` where it has a control
    character, whose width is undefined."""
    width = wcswidth(text)
    return len(text) if width < 0 else width


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown-style table, numbers and intervals ([low, high]) right-aligned (the layout
    lm-eval's results use), columns as wide as a terminal shows their cells; a `|` inside a
    cell is escaped (`\\|`), as Markdown reads it."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [headers, *rows]]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = []
        for c, w in zip(row, widths):
            pad = " " * (w - display_width(c))
            padded.append(pad + c if c[:1].isdigit() or c[:1] in ("-", "[") else c + pad)
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
