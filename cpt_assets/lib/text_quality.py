"""How much of a text layer is text: a garbage score and an extraction verdict, for pages, documents and chunks.

A PDF can yield characters that are not text: glyphs of a font without a ToUnicode map (MuPDF gives control
characters or U+FFFD for them), private-use glyphs of symbol fonts, a broken encoding's symbol salad (`"7+%-`), or
an OCR layer of noise (`Anno~ncemcnt`, `~ef ined ~~`). Left as "extracted", such pages become junk chunks or vanish
as `too_short` with no trace. The score here is the share of non-space characters that are unmapped, private-use or
inside tokens no vocabulary would hold; no dictionary is needed, so it works for any language in a Latin, Greek or
Cyrillic script, and standards text (identifiers, numbers, ABNF, ASCII-art tables) scores near zero.

The token rules follow the "words without letters" and "symbol ratio" features of Gopher's quality filter (Rae et
al. 2021) and the garbage-token heuristics used for OCR post-correction (Wudtke et al., "Recognizing garbage in OCR
output", 2011): symbols inside a word, no vowel in a long Latin word, runs of one letter.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

ExtractionStatus = Literal["ok", "partial", "no_text", "unreadable"]

_EDGE_PUNCT = "\"'()[]{}<>,.;:!?\u2018\u2019\u201c\u201d"
_ART = frozenset("-+|=_*/.:<>#\\")  # ASCII-art tables, rules and box corners in standards are structure
_NOISE_SYMBOLS = frozenset("~`\u00a3\u00ac\u00a6")  # inside a word: OCR misreads, not spelling
_CODE_CHARS = frozenset("-_'./@:=+<>#&%$*()[]{};,^!?|\\\"\u2018\u2019\u201c\u201d")  # code and markup
_VOWELS = frozenset("aeiouyAEIOUY\u00e0\u00e1\u00e2\u00e4\u00e8\u00e9\u00ea\u00eb\u00ec\u00ed\u00ee\u00ef\u00f2"
                    "\u00f3\u00f4\u00f6\u00f9\u00fa\u00fb\u00fc")  # fmt: skip
_RUN_RE = re.compile(r"([^\W\d_])\1{3,}")  # "lllll": a letter four times running
_WORD_CHARS_RE = re.compile(r"[^\W\d_]")


@dataclass(frozen=True, slots=True)
class TextScore:
    """Character accounting of one text."""

    chars: int  # non-space characters
    unmapped: int  # control characters and U+FFFD: glyphs without a Unicode mapping
    private_use: int  # private-use-area glyphs (symbol fonts)
    garbage_token_chars: int  # characters of tokens no vocabulary would hold
    words: int  # whitespace-delimited tokens

    @property
    def garbage(self) -> float:
        """Share of non-space characters that are not text (0 = clean, 1 = nothing but junk)."""
        if not self.chars:
            return 0.0
        return min(1.0, (self.unmapped + self.private_use + self.garbage_token_chars) / self.chars)


def _implausible(token: str) -> bool:
    """Whether a whitespace-delimited token is not a word, number, identifier or piece of ASCII art."""
    core = token.strip(_EDGE_PUNCT)
    if len(core) < 2 or "://" in core or core.startswith("www."):
        return False
    letters = _WORD_CHARS_RE.findall(core)
    if not letters:
        if any(c.isdigit() for c in core):
            return sum(not (c.isalnum() or c in "-.,:/+%x()") for c in core) >= 2  # "2^16-1" fine, "7=:/\"@" junk
        return not all(c in _ART for c in core) and len(core) >= 3
    if any(c in _NOISE_SYMBOLS for c in core) or "\ufffd" in core:
        return True
    odd = sum(not (c.isalnum() or c in _CODE_CHARS) for c in core)
    if odd >= 2:
        return True
    if _RUN_RE.search(core):
        return True
    latin = [c for c in letters if c.isascii()]
    # A long all-letter Latin word with no vowel: "Jkt" is short, "HTTP"/"CRLF" are capitals, "lllxzzk" is noise.
    return len(latin) >= 5 and len(latin) == len(core) and not core.isupper() and not any(c in _VOWELS for c in core)


_UNMAPPED_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
_PRIVATE_RE = re.compile("[\ue000-\uf8ff\U000f0000-\U0010fffd]")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t\r\x0c.,;:()'\"-/")
_BENIGN_CATEGORIES = frozenset({"Pd", "Pi", "Pf", "Ps", "Pe", "Sm", "Sc", "No", "Zs"})
_ODD_CHARS: dict[str, bool] = {}  # grown lazily: each distinct character is classified once per process


def _odd(char: str) -> bool:
    """Whether a character sends its token to `_implausible`.

    ASCII symbols do, and non-ASCII that is no letter or plain punctuation (curly quotes, dashes, math and currency
    signs are plain).
    """
    if char not in _ODD_CHARS:
        category = unicodedata.category(char)
        if category in ("Cc", "Co") or char == "\ufffd":
            _ODD_CHARS[char] = False  # counted as unmapped or private-use already
        else:
            _ODD_CHARS[char] = char.isascii() or not (char.isalpha() or category in _BENIGN_CATEGORIES)
    return _ODD_CHARS[char]


def score_text(text: str) -> TextScore:
    """Character accounting of a text (one page, one document or one chunk).

    Plain words never reach `_implausible`: a regex built from the page's own odd characters picks the tokens that
    hold one, and the control-character and private-use scans run only when the page has such a character, so
    scoring a clean page costs a few C-level passes (it runs on every extracted page: the page-text stage's budget
    is 0.9x a bare pymupdf loop).
    """
    tokens = text.split()
    chars = sum(map(len, tokens))
    rare = "".join(set(text).difference(_PLAIN))
    if not rare:
        return TextScore(chars, 0, 0, 0, len(tokens))
    unmapped = len(_UNMAPPED_RE.findall(text)) if _UNMAPPED_RE.search(rare) else 0
    private = len(_PRIVATE_RE.findall(text)) if _PRIVATE_RE.search(rare) else 0
    # Whitespace never sits inside a token, so an odd whitespace character (U+2028) cannot send one to judgement.
    odd = [c for c in rare if _odd(c) and not c.isspace()]
    garbage_chars = 0
    if odd:
        chars_class = "".join(map(re.escape, odd))
        # A token's start, its plain characters possessively, then an odd one: no backtracking, no mid-token starts.
        holding = re.compile(rf"(?<!\S)[^\s{chars_class}]*+[{chars_class}]\S*")
        for token, n in Counter(holding.findall(text)).items():
            if _implausible(token):
                garbage_chars += n * len(token)
    return TextScore(chars, unmapped, private, garbage_chars, len(tokens))


def nonspace_chars(text: str) -> int:
    """Characters that are not whitespace (what `TextScore.chars` counts)."""
    return sum(map(len, text.split()))


@dataclass(frozen=True, slots=True)
class VerdictConfig:
    """Thresholds of the extraction verdict; defaults checked on the NIST, IETF and edge corpus and generated PDFs."""

    unreadable_garbage: float = 0.4  # a page (or document) scoring at least this is unreadable text
    noisy_garbage: float = 0.12  # ...at least this is noisy text (partial): kept, but flagged
    min_useful_chars: int = 20  # a document with fewer non-space text characters has nothing useful
    ocr_chunk_garbage: float = 0.25  # an OCR'd chunk scoring at least this is dropped as "ocr_noise"


@dataclass(frozen=True, slots=True)
class Verdict:
    status: ExtractionStatus
    reason: str
    garbage: float
    chars: int = 0  # non-space characters judged (a page's; 0 where unknown)


def page_verdict(text: str, has_images: bool, config: VerdictConfig | None = None) -> Verdict:
    """The verdict on one page's text layer: ok, no_text (a scan: images, no text), or unreadable/partial (junk)."""
    config = config or VerdictConfig()
    score = score_text(text)
    if not score.chars:
        if has_images:
            return Verdict("no_text", "no text layer (image only)", 0.0)
        return Verdict("ok", "blank page", 0.0)
    garbage = round(score.garbage, 4)
    if garbage >= config.unreadable_garbage:
        return Verdict("unreadable", _garbage_reason(score), garbage, score.chars)
    if garbage >= config.noisy_garbage:
        return Verdict("partial", "noisy text: " + _garbage_reason(score), garbage, score.chars)
    return Verdict("ok", "", garbage, score.chars)


def _garbage_reason(score: TextScore) -> str:
    parts = []
    if score.unmapped:
        parts.append(f"{score.unmapped / score.chars:.0%} characters without a Unicode mapping")
    if score.private_use:
        parts.append(f"{score.private_use / score.chars:.0%} private-use glyphs")
    if score.garbage_token_chars:
        parts.append(f"{score.garbage_token_chars / score.chars:.0%} in tokens that are not words")
    return "; ".join(parts) or "garbage text"


def document_verdict(pages: list[tuple[int, Verdict]], config: VerdictConfig | None = None) -> Verdict:
    """The verdict on a document from its pages' (non-space characters, verdict).

    no_text: no page has a text layer. unreadable: the text there is (nearly) all garbage, or fewer than
    `min_useful_chars` characters of text. partial: some pages without text, unreadable or noisy. ok otherwise.
    """
    config = config or VerdictConfig()
    if not pages:
        return Verdict("unreadable", "no pages", 0.0)
    chars = sum(n for n, _ in pages)
    counts: dict[str, int] = {}
    for _, verdict in pages:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    n = len(pages)
    if not chars:
        if counts.get("no_text"):
            return Verdict("no_text", f"no text layer on any of {n} page(s) (image-only scan)", 0.0)
        return Verdict("unreadable", f"all {n} page(s) are blank", 0.0)
    garbage = round(sum(c * v.garbage for c, v in pages) / chars, 4)
    useful = round(chars * (1 - garbage))
    worst = max((v for _, v in pages), key=lambda v: v.garbage)
    if garbage >= config.unreadable_garbage or counts.get("unreadable", 0) == sum(c > 0 for c, _ in pages):
        return Verdict("unreadable", f"text layer is garbage ({garbage:.0%}): {worst.reason}", garbage)
    if useful < config.min_useful_chars:
        return Verdict("unreadable", f"only {useful} characters of text in {n} page(s)", garbage)
    labels = (("no_text", "without a text layer"), ("unreadable", "unreadable"), ("partial", "noisy"))
    problems = [f"{counts[s]} of {n} page(s) {label}" for s, label in labels if counts.get(s)]
    if problems:
        return Verdict("partial", "; ".join(problems), garbage)
    return Verdict("ok", "", garbage)
