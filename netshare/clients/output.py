"""
How the client programs print results: aligned tables on a terminal, JSON
with C{--json}, sizes in human units unless C{--bytes}.  Standard library
only (see L{netshare.clients.options}).
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata

#: The typing module costs milliseconds to import; the quick path does not need it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any


def printable(value: object) -> str:
    """A cell value with control and format characters escaped, so a field
    can never move the cursor or reorder a terminal line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if all(unicodedata.category(c)[0] != "C" for c in text):
        return text
    return "".join(c if unicodedata.category(c)[0] != "C" else "\\u%04x" % ord(c) for c in text)


def format_table(
    rows: list[dict[str, Any]],
    columns: list[str],
    headers: dict[str, str] | None = None,
    max_width: int | None = None,
) -> str:
    """
    A plain-text table: a header line, a rule, one line per row.  Cells
    longer than C{max_width} are cut with an ellipsis (C{None}: never).
    """
    headers = headers or {}
    cells = [[printable(row.get(c)) for c in columns] for row in rows]
    if max_width:
        cells = [
            [c if len(c) <= max_width else c[: max_width - 1] + "\u2026" for c in line]
            for line in cells
        ]
    titles = [headers.get(c, c) for c in columns]
    widths = [max([len(t)] + [len(line[i]) for line in cells]) for i, t in enumerate(titles)]
    out = [
        "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    out += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(out) + "\n"


def format_object(obj: dict[str, Any], columns: list[str] | None = None) -> str:
    """One object as C{key: value} lines."""
    keys = columns or list(obj)
    width = max((len(k) for k in keys), default=0)
    return "".join("%s: %s\n" % (k.ljust(width), printable(obj.get(k))) for k in keys)


def emit(
    args: argparse.Namespace,
    data: Any,
    columns: list[str] | None = None,
    out: IO[str] | None = None,
    text: str | None = None,
) -> None:
    """
    Print a result: JSON with C{args.json}; otherwise C{text} if given, a
    table for a list, C{key: value} lines for a dict.
    """
    out = out or sys.stdout
    if getattr(args, "json", False):
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
        out.flush()
        return
    if not getattr(args, "bytes", False):
        data = _human_sizes(data)
    if text is not None:
        out.write(text if text.endswith("\n") else text + "\n")
    elif isinstance(data, list):
        if data or columns:
            out.write(
                format_table(
                    data,
                    columns or sorted({k for d in data for k in d}),
                    max_width=_cell_width(out),
                )
            )
        out.write("(%d item%s)\n" % (len(data), "" if len(data) == 1 else "s"))
    elif isinstance(data, dict):
        out.write(format_object(data, columns))
    else:
        out.write("%s\n" % (printable(data),))
    out.flush()


#: Fields shown as human-readable sizes in tables (not in JSON).
SIZE_FIELDS = ("size", "bytes", "quota", "max_file_size")


def human_size(n: object) -> object:
    """C{1536} -> C{"1.5 KiB"}; anything not a whole number is left as it is."""
    if not isinstance(n, int) or isinstance(n, bool):
        return n
    if n < 1024:
        return "%d B" % n
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return ("%.1f %s" if value < 100 else "%.0f %s") % (value, unit)
    return n  # (not reached)


def _human_sizes(data: Any) -> Any:
    def row(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: human_size(v) if k in SIZE_FIELDS else v for k, v in d.items()}

    return [row(d) for d in data] if isinstance(data, list) else row(data)


def _cell_width(out: IO[str]) -> int | None:
    # Long cells are cut only on a terminal; piped output stays whole.
    return 48 if hasattr(out, "isatty") and out.isatty() else None
