"""How a verdict looks: colour by the finding (not by confidence), always with a word and an
icon so that it is never told apart by hue alone. Shared by the app and the PDF report.

The app's colours are the theme's named colours, set in .streamlit/config.toml; the PDF's are
darker shades for white paper. tests/test_verdict.py checks both for WCAG AA text contrast
(4.5:1) against their background.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.guard import is_confident_not_radiograph


@dataclass(frozen=True)
class VerdictStyle:
    kind: str  # healthy | fractured | beyond_repair | uncertain | not_xray
    word: str  # what the verdict line says
    icon: str  # Streamlit material icon shortcode, shown before the word
    theme_colour: str  # Streamlit named colour (theme.<name>Color in .streamlit/config.toml)
    pdf_rgb: tuple[int, int, int]  # text colour on white in the PDF report
    pdf_mark: str  # a text mark before the word in the PDF (its core fonts have no icons)


STYLES = {
    "healthy": VerdictStyle("healthy", "HEALTHY", ":material/check_circle:", "green", (0, 110, 40), "[ok]"),
    "fractured": VerdictStyle("fractured", "FRACTURED", ":material/warning:", "orange", (150, 75, 0), "[!]"),
    "beyond_repair": VerdictStyle(
        "beyond_repair", "BEYOND REPAIR", ":material/dangerous:", "red", (175, 20, 20), "[!!]"
    ),
    "uncertain": VerdictStyle("uncertain", "UNCERTAIN: NEEDS REVIEW", ":material/help:", "gray", (85, 85, 85), "[?]"),
    "not_xray": VerdictStyle(
        "not_xray", "NOT A RADIOGRAPH? NEEDS REVIEW", ":material/help:", "gray", (85, 85, 85), "[?]"
    ),
    "unfamiliar": VerdictStyle(
        "unfamiliar", "UNLIKE THE TRAINING FILMS: NEEDS REVIEW", ":material/help:", "gray", (85, 85, 85), "[?]"
    ),
}


def verdict_style(label: str | None, uncertain: bool, not_xray: bool | str | None) -> VerdictStyle:
    """The finding decides the colour; an uncertain or flagged verdict is grey.

    not_xray: the guard's flag, as its message or as a bool. "Not a radiograph" is kept for
    the flags that are sure of it (photos, documents, blank images); a film the guard finds
    merely unlike the training films says so."""
    if isinstance(not_xray, str):
        return STYLES["not_xray" if is_confident_not_radiograph(not_xray) else "unfamiliar"]
    if not_xray:
        return STYLES["not_xray"]
    if uncertain or label is None:
        return STYLES["uncertain"]
    return STYLES[label]


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
