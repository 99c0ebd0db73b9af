"""Server-side HTML: one escape rule for the pages of both daemons.

Every piece of text that reaches a page goes through `text`: `mirror.text.printable` (no
control or bidi character from the network), then `html.escape` (no markup, quotes included,
so an attribute value cannot be left either). Nothing from the network is ever inserted as
HTML; the page's script uses ``textContent`` likewise.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

from mirror.text import printable

#: Seconds between two reloads of a page when JavaScript is off (<noscript> meta refresh).
NOSCRIPT_REFRESH = 5


def text(value: object) -> str:
    """``value`` as safe HTML text (and attribute value)."""
    return html.escape(printable(str(value)), quote=True)


def utc(seconds: float | None) -> str:
    """A Unix time as ``2026-11-29 05:40:01 UTC`` (the page's script writes the same)."""
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def page(title: str, body: Iterable[str], script: str | None = None) -> bytes:
    """A whole page: viewport for phones, the stylesheet, and ``script`` if any.

    A page with a script reloads itself every `NOSCRIPT_REFRESH` seconds only when
    JavaScript is off (the script updates it in place otherwise); one without, always.
    """
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{text(title)}</title>",
        '<link rel="stylesheet" href="/static/style.css">',
    ]
    refresh = f'<meta http-equiv="refresh" content="{NOSCRIPT_REFRESH}">'
    if script is not None:
        head.append(f"<noscript>{refresh}</noscript>")
        head.append(f'<script src="/static/{text(script)}" defer></script>')
    else:
        head.append(refresh)
    head.append("</head><body>")
    return "\n".join([*head, *body, "</body></html>", ""]).encode("utf-8")


def table(cls: str, header: list[str], rows: Iterable[tuple[str, list[str]]]) -> str:
    """A table (in a scrolling box, for phones); each row is (class, cells already HTML)."""
    out = [f'<div class="scroll"><table class="{text(cls)}"><thead><tr>']
    out += [f"<th>{text(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row_class, cells in rows:
        out.append(f'<tr class="{text(row_class)}">' + "".join(f"<td>{c}</td>" for c in cells)
                   + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
