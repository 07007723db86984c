"""How a verdict looks: colour by the finding (not by confidence), always with a word, so that
it is never told apart by hue alone. Shared by the app, the history, the PDF report and the SR.

The verdict's kind is decided once, in utils.core.review; this module only dresses it. No
icon name stands in the text: screen readers and copied text read the words alone.

The app's colours are the theme's named colours, set in .streamlit/config.toml; the PDF's are
darker shades for white paper. tests/test_verdict.py checks both for WCAG AA text contrast
(4.5:1) against their background.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.review import BEYOND_REPAIR, FRACTURED, HEALTHY, NEEDS_REVIEW, NOT_A_RADIOGRAPH


@dataclass(frozen=True)
class VerdictStyle:
    kind: str  # a verdict kind (utils.core.review.VERDICT_KINDS)
    word: str  # what the verdict line says
    theme_colour: str  # Streamlit named colour (theme.<name>Color in .streamlit/config.toml)
    pdf_rgb: tuple[int, int, int]  # text colour on white in the PDF report


STYLES = {
    HEALTHY: VerdictStyle(HEALTHY, "HEALTHY", "green", (0, 110, 40)),
    FRACTURED: VerdictStyle(FRACTURED, "FRACTURED", "orange", (150, 75, 0)),
    BEYOND_REPAIR: VerdictStyle(BEYOND_REPAIR, "BEYOND REPAIR", "red", (175, 20, 20)),
    NEEDS_REVIEW: VerdictStyle(NEEDS_REVIEW, "NEEDS REVIEW", "gray", (85, 85, 85)),
    NOT_A_RADIOGRAPH: VerdictStyle(NOT_A_RADIOGRAPH, "NOT A RADIOGRAPH", "gray", (85, 85, 85)),
}
NOT_CLASSIFIED = "not classified"


def verdict_style(kind: str) -> VerdictStyle:
    """The style of a verdict kind; the finding decides the colour, a film a reader must
    decide on is grey."""
    return STYLES[kind]


def verdict_words(kind: str | None) -> str:
    """The verdict kind in lower-case words for tables and lists ("needs review")."""
    return kind.replace("_", " ") if kind else NOT_CLASSIFIED


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def hex_to_rgb(text: str) -> tuple[int, int, int]:
    text = text.lstrip("#")
    red, green, blue = (int(text[i : i + 2], 16) for i in (0, 2, 4))
    return red, green, blue
