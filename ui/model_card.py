"""The model card as the app shows it: the card's own Markdown, made to fit a browser page."""

from __future__ import annotations

import re

# Relative links to the plots do not resolve in the browser; the page shows the plots instead.
PLOT_LINK = re.compile(r"\[([^\]]+)\]\(eval/[^)]+\)")
SCROLL_OPEN = '<div style="overflow-x: auto">'


def scrollable_tables(markdown: str) -> str:
    """Each Markdown table inside a box that scrolls sideways, so a wide table (the equivalence
    checks have a dozen columns) can be read to its last column instead of being cut off. The
    blank lines around the table keep it Markdown inside the HTML box."""
    out: list[str] = []
    in_table = False
    for line in markdown.splitlines():
        is_row = line.lstrip().startswith("|")
        if is_row and not in_table:
            out += [SCROLL_OPEN, ""]
        elif not is_row and in_table:
            out += ["", "</div>"]
        out.append(line)
        in_table = is_row
    if in_table:
        out += ["", "</div>"]
    return "\n".join(out)


def card_for_browser(markdown: str) -> str:
    """The card without links to plot files, its tables scrollable."""
    return scrollable_tables(PLOT_LINK.sub(r"\1", markdown))
