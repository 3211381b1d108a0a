"""Clean the page text of one standards document before it is chunked.

pymupdf returns everything printed on a page: running headers and footers, page numbers, tables of contents with
dotted leaders, legal boilerplate pages, NIST's vertical "available free of charge" margin stamp, words hyphenated
across lines, hard line breaks every 70-100 characters. Left in, the model learns to emit "[Page 12]" and dotted
leaders instead of the domain's prose. Rules work per document, so a line is furniture because it repeats on the
document's own pages, not because it matches one publisher's layout. The input may be pymupdf's content-order text
(the page-text stage's default: few blank lines, so paragraph ends are inferred from line length, punctuation,
indentation and headings) or its `sort=True` text (blank lines, indentation and column gaps kept). Runs of spaces are
collapsed in prose; tables, code and ASCII art keep their line breaks and alignment.

Where the rules come from:
- Characters: the seed notebooks' cleaner (remove control characters, tabs, runs of spaces, characters outside
  normal text and punctuation), except that non-ASCII letters and symbols that carry meaning in standards
  (é, ≤ ≥ ± × → § µ) are kept, unlike unsloth's ASCII-only cleaner; curly quotes become straight ones and
  ligatures / math-italic letters are folded with NFKC. Tokenizer special-token strings are removed so that PDF text
  never carries an end-of-text marker the packer did not put there.
- Running headers/footers: lines repeated at the top or bottom of many pages of the same document (digits and
  trailing roman numerals normalised), the line-repetition idea of Gopher's repetition filter (Rae et al. 2021) and
  datatrove's `GopherRepetitionFilter`, applied to page edges.
- Tables of contents, dotted leaders, rule lines and boilerplate: line-type ratios per page, in the manner of
  datatrove's C4/FineWeb line filters (a page dominated by TOC lines goes, as a document dominated by bad lines does).
- Chunk quality (`quality_filter`): datatrove's `GopherQualityFilter` (Rae et al. 2021) with thresholds loosened for
  standards text, which is dense in numbers, identifiers and section references.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# SmolLM2's added tokens (tokenizer.json); any "<|...|>" string is removed too, so other base models are covered.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)
# Placed between documents at packing time (the base model's end-of-text token); never left inside cleaned text.
DOCUMENT_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True, slots=True)
class CleaningConfig:
    """Thresholds of the document cleaner; defaults were checked on the NIST and IETF corpus pages."""

    edge_lines: int = 5  # non-empty lines at the top and at the bottom of a page searched for headers/footers
    repeated_line_share: float = 0.3  # an edge line on at least this share of pages is a running header/footer
    repeated_line_min_pages: int = 3  # ...and on at least this many pages (short documents have no furniture rule)
    repeated_line_max_pages: int = 8  # an edge line on this many pages is furniture however long the document is
    # (running heads that change per chapter or appendix)
    toc_page_share: float = 0.5  # a page whose non-empty lines are at least this share TOC entries is dropped
    toc_page_share_with_heading: float = 0.25  # the same under a "Contents"/"List of Figures" heading
    boilerplate_page_share: float = 0.7  # a page whose text is at least this share legal boilerplate is dropped
    boilerplate_page_keeps_prose: int = 300  # ...unless another paragraph of this many characters is on it
    repeated_anywhere_share: float = 0.5  # a line (anywhere on the page, up to digits) on this share of pages is
    # furniture: print slugs ("VerDate Sep<11>2014 16:21 Aug 05, 2020 Jkt 250001") that content order puts mid-page
    repeated_anywhere_min_chars: int = 20  # ...when its normalised form is at least this long
    structural_toc_entries: int = 5  # a page with this many numbered entries followed by page numbers is a TOC
    index_page_share: float = 0.5  # a page whose lines are at least this share "term, 12, 45" entries is an index
    join_long_unknown: int = 14  # "Wider-"+"spruchsbeweisen": a joined word this long whose second part (7+
    # letters) never stands alone in the document is one word broken by typesetting; 0 turns this off
    reflow: bool = True  # join hard-wrapped lines into paragraphs (tables and code keep their line breaks)
    dehyphenate: bool = True  # "secu-\nrity" -> "security" when the document spells the joined word elsewhere
    join_unknown_hyphenation: bool = False  # lowercase "a-\nb" seen in neither form: join (True) or keep the hyphen
    wide_line_share: float = 0.8  # a line at least this share of the document's text width is a wrapped line
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS  # strings removed from the text (plus any "<|...|>")

    def __post_init__(self) -> None:
        if self.edge_lines < 1:
            raise ValueError(f"CleaningConfig.edge_lines must be >= 1, got {self.edge_lines}")
        if self.repeated_line_min_pages < 2:
            raise ValueError(f"CleaningConfig.repeated_line_min_pages must be >= 2, got {self.repeated_line_min_pages}")
        if self.repeated_line_max_pages < self.repeated_line_min_pages:
            raise ValueError(
                "CleaningConfig.repeated_line_max_pages must be >= repeated_line_min_pages="
                f"{self.repeated_line_min_pages}, got {self.repeated_line_max_pages}"
            )
        for name in ("repeated_line_share", "toc_page_share", "toc_page_share_with_heading", "boilerplate_page_share"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"CleaningConfig.{name} must be in (0, 1], got {value}")
        if self.boilerplate_page_keeps_prose < 1:
            raise ValueError(
                f"CleaningConfig.boilerplate_page_keeps_prose must be >= 1, got {self.boilerplate_page_keeps_prose}"
            )
        if not 0.0 < self.wide_line_share <= 1.0:
            raise ValueError(f"CleaningConfig.wide_line_share must be in (0, 1], got {self.wide_line_share}")


@dataclass(frozen=True, slots=True)
class CleanedDocument:
    """The cleaned text of one document and what cleaning removed, per reason, for asset metadata."""

    text: str
    pages_in: int
    pages_kept: int
    chars_in: int
    chars_out: int
    dropped_pages: dict[str, int] = field(default_factory=dict)  # "toc", "boilerplate", "empty"
    removed_lines: dict[str, int] = field(default_factory=dict)  # "header_footer", "page_number", "toc", ...
    edits: dict[str, int] = field(default_factory=dict)  # in-line changes: "dehyphenated", "special_token", ...


# ---- characters -----------------------------------------------------------------------------------------------

_SPECIAL_TOKEN_RE = re.compile(r"<\|[^<>|\s]{1,40}\|>")
_QUOTES = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2033": '"',
    "\u00ab": '"',
    "\u00bb": '"',
}
_DASHES = {"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2015": "\u2014", "\u00ad": ""}
_BULLETS = dict.fromkeys("\u25cf\u25aa\u25a0\u25e6\u2666\u2043\u2023\u25ba\u27a2\u2219\u25cb\u25a1", "\u2022")
_NEWLINES = dict.fromkeys("\r\f\v\x1c\x1d\x1e\x85\u2028\u2029", "\n")
_FOLD_RANGES = ((0xFB00, 0xFB4F), (0x1D400, 0x1D7FF), (0xFF01, 0xFF5E), (0x2460, 0x24FF))  # NFKC-folded
_PUA_BULLET_RE = re.compile(r"(?m)^([ ]*)[\ue000-\uf8ff]+(?=[ \t\ue000-\uf8ff]|$)")
_SOFT_HYPHEN_EOL_RE = re.compile("\u00ad[ \t]*\n")
_CHAR_MAP: dict[str, str | None] = {}  # grown lazily: each distinct character is classified once per process


def _map_char(char: str) -> str | None:
    """The replacement of one character (None deletes it), following the module's character rules."""
    if char in _NEWLINES:
        return "\n"
    if char == "\t":
        return " "
    for table in (_QUOTES, _DASHES, _BULLETS):
        if char in table:
            return table[char]
    if char == "\u2026":
        return "..."
    code = ord(char)
    if any(low <= code <= high for low, high in _FOLD_RANGES):
        return unicodedata.normalize("NFKC", char)
    category = unicodedata.category(char)
    if category == "Zs":
        return " "
    if category == "Co":
        return " " if code in (0xF020, 0xF0A0) else None  # symbol-font spaces; other private glyphs are noise
    if category[0] == "C":  # Cc control, Cf format (zero-width), Cs surrogate, Cn unassigned
        return None
    return char


def _char_table(text: str) -> dict[str, str | None]:
    table = {}
    for char in set(text):
        if " " <= char <= "~" or char == "\n":
            continue
        if char not in _CHAR_MAP:
            _CHAR_MAP[char] = _map_char(char)
        replacement = _CHAR_MAP[char]
        if replacement != char:
            table[char] = replacement
    return table


@functools.lru_cache(maxsize=8)
def _special_token_pattern(special_tokens: tuple[str, ...]) -> re.Pattern[str]:
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    return re.compile("|".join([_SPECIAL_TOKEN_RE.pattern, *map(re.escape, tokens)]))


def strip_special_tokens(text: str, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> tuple[str, int]:
    """Remove tokenizer special-token strings until none is left (removal can join two halves into a new one).

    Returns:
        The text and how many strings were removed.
    """
    pattern = _special_token_pattern(tuple(special_tokens))
    removed = 0
    while True:
        text, count = pattern.subn("", text)
        if not count:
            return text, removed
        removed += count


def normalize_chars(text: str, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> tuple[str, dict[str, int]]:
    """Character-level cleaning of raw page text; keeps line structure (newlines and indentation).

    Returns:
        The text and edit counts: "special_token" strings removed, "control_char" characters deleted.
    """
    text, n_special = strip_special_tokens(text, special_tokens)
    text = text.replace("\r\n", "\n")
    text = _SOFT_HYPHEN_EOL_RE.sub("-\n", text)  # a soft hyphen that ended a line marks a word break
    text = _PUA_BULLET_RE.sub("\\1\u2022", text)  # Symbol/Wingdings bullets live in the private-use area
    n_deleted = 0
    # A few distinct characters change per page: str.replace per character beats str.translate's per-char lookups.
    for char, replacement in _char_table(text).items():
        if replacement is None:
            n_deleted += text.count(char)
        text = text.replace(char, replacement or "")
    text = unicodedata.normalize("NFC", text)
    text, n_special_after = strip_special_tokens(text, special_tokens)  # folding can spell one (fullwidth "<|")
    edits = {}
    if n_special + n_special_after:
        edits["special_token"] = n_special + n_special_after
    if n_deleted:
        edits["control_char"] = n_deleted
    return text, edits


# ---- line predicates: each returns (keep, reason) ---------------------------------------------------------------

_PAGE_NUMBER_RE = re.compile(
    r"""^\s*(?:
        (?:page\s+)?\d{1,4}(?:\s+of\s+\d{1,4})?            # 12 | Page 12 | 3 of 40
      | \[\s*page\s+(?:\d{1,4}|[ivxlc]{1,7})\s*\]            # [Page 12] | [Page ii]
      | (?:page\s+)?[ivxlc]{1,7}                           # iv | Page iv
      | (?:page\s+)?[A-Z]{1,3}\s?-\s?\d{1,3}               # A-1 | ES-2 | C - 1 (appendix pages)
      | [-\u2013\u2014]\s*\d{1,4}\s*[-\u2013\u2014]        # - 3 -
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_EXPLICIT_PAGE_RE = re.compile(r"^\s*\[?\s*page\s+(?:\d{1,4}|[ivxlc]{1,7})\s*\]?\s*$", re.IGNORECASE)  # anywhere
# RFC footer "Author  Track  [Page 3]" (or "[Page ii]" in front matter)
_PAGE_FOOTER_RE = re.compile(r"\[\s*page\s+(?:\d{1,4}|[ivxlc]{1,7})\s*\]\s*$", re.IGNORECASE)
# A dotted leader and an optional page reference ending the line; text must come before it (checked in code).
_TOC_LEADER_RE = re.compile(r"(?:\.\s?){4,}\s*(?:[A-Z]{1,3}-\d{1,3}|\d{1,4}|[ivxlc]{1,7})?\s*$", re.IGNORECASE)
_TOC_SPACED_RE = re.compile(
    r"^\s*(?:\d{1,2}(?:\.\d{1,2})*\.?|[A-Z]\.(?:\d{1,2}\.?)*|appendix\s+[A-Z]\b\S*)\s+\S.*?\s{2,}"
    r"(?:[A-Z]{1,3}-)?\d{1,4}\s*$",
    re.IGNORECASE,
)
_TOC_HEADING_RE = re.compile(
    r"^\s*(?:table\s+of\s+contents|contents|list\s+of\s+(?:figures|tables|appendices|illustrations|exhibits))\s*$",
    re.IGNORECASE,
)
_DOTTED_LEADER_RE = re.compile(r"\s*(?:\.\s?){4,}\s*")
_RULE_LINE_RE = re.compile(r"^\s*[_\-=~*\u2022.\u2500\u2501\u2550\u2014\u2013]{4,}\s*$")


def is_page_number(line: str) -> tuple[bool, str]:
    """A line that is only a page number ("12", "Page 3", "[Page 12]", "iv", "A-1", "3 of 40")."""
    if _PAGE_NUMBER_RE.match(line):
        return False, "page_number"
    return True, ""


def is_toc_line(line: str) -> tuple[bool, str]:
    """A table-of-contents entry: a title with a dotted leader, or a numbered title, spaces and a page number."""
    if "...." in line or ". . ." in line:
        leader = _TOC_LEADER_RE.search(line)
        if leader and line[: leader.start()].strip():
            return False, "toc"
    if "  " in line and line[-1:].isdigit() and _TOC_SPACED_RE.match(line):
        return False, "toc"
    return True, ""


def is_rule_line(line: str) -> tuple[bool, str]:
    """A line drawn with characters ("_____", "-----", "=====")."""
    if _RULE_LINE_RE.match(line):
        return False, "rule_line"
    return True, ""


def remove_dotted_leaders(line: str) -> tuple[str, int]:
    """Replace runs of four or more dots (". . . ." too) with one space; "..." ellipses stay."""
    new, count = _DOTTED_LEADER_RE.subn(" ", line)
    return (new.rstrip() if count else line), count


_ROMAN_TAIL_RE = re.compile(r"\b[ivxlc]{1,7}\s*\]?$")
_DIGITS_RE = re.compile(r"\d+")
_SPACES_RE = re.compile(r"\s+")


def furniture_key(line: str) -> str:
    """A line's identity for header/footer repetition: lowercase, digits and a trailing roman numeral as '#'."""
    key = _DIGITS_RE.sub("#", line.strip().lower())
    key = _ROMAN_TAIL_RE.sub("#", key)
    return _SPACES_RE.sub(" ", key)


# ---- boilerplate ------------------------------------------------------------------------------------------------

# Phrases that only occur in publisher boilerplate (NIST front matter, IETF status/copyright/IPR sections, ETSI's
# legal page, IPR, trademark and modal-verbs notices). Anchored ones are headings: the whole paragraph.
BOILERPLATE_PATTERNS: tuple[str, ...] = (
    r"reports on computer systems technology",
    r"the information technology laboratory \(itl\) at the national institute of standards and technology",
    r"certain commercial entities, equipment, or materials may be identified",
    r"such identification is not intended to imply recommendation or endorsement by (?:the )?national institute",
    r"this publication is available free of charge from",
    r"nothing in this publication should be taken to contradict",
    r"this publication has been developed by nist (?:in accordance with|to further) its statutory",
    r"there may be references in this publication to other publications currently under development",
    r"organizations are encouraged to review all draft publications",
    r"comments on this publication may be submitted to",
    r"all comments are subject to release under the freedom of information act",
    r"natl\. inst\. stand\. technol\.",
    r"coden: ?nspue2",
    r"for sale by the superintendent of documents",
    r"u\.s\. government printing office",
    r"100 bureau drive,? \(?(?:mail )?stop",
    r"itl has requested that holders of patent claims",
    r"no notice of (?:any )?patent claims",
    r"^status of th(?:is|e) memo$",
    r"^copyright notice$",
    r"^full copyright statement$",
    r"^intellectual property(?: statement)?$",
    r"this (?:document|memo) is a product of the internet engineering task force",
    r"this is an internet standards track document",
    r"this memo (?:documents an internet best current practice|provides information for the internet community)",
    r"this document is not an internet standards track specification",
    r"information about the current status of this document, any errata",
    r"distribution of this memo is unlimited",
    r"this document is subject to bcp 78",
    r"this document is subject to the rights, licenses and restrictions contained in bcp 78",
    r"copies of ipr disclosures made to the ietf secretariat",
    r"copyright \(c\) (?:\d{4}(?:-\d{4})? )?(?:the )?(?:ietf trust|internet society)",
    r"this document may contain material from ietf documents or ietf contributions",
    r"this document and translations of it may be copied and furnished to others",
    r"the limited permissions granted above are perpetual",
    r"this document and the information contained herein (?:is|are) provided on an",
    r"the ietf takes no position regarding the validity or scope of any intellectual property",
    r"the ietf invites any interested party to bring to its attention",
    r"funding for the rfc editor function is",
    r"this internet-draft is submitted in full conformance",
    r"internet-drafts are working documents of the internet engineering task force",
    # ETSI: the legal page (address, French registration, notices, copyright, trademarks), IPR and modal verbs
    r"650 route des lucioles",
    r"\bsiret n\S{0,2} ?\d{3} ?\d{3} ?\d{3}",
    r"association \u00e0 but non lucratif",
    r"sous-pr\u00e9fecture de grasse",
    r"^important notice$",
    r"the present document can be downloaded from",
    r"the present document may be made available in electronic versions",
    r"users of the present document should be aware that the document may be subject to revision",
    r"if you find errors in the present document, please send your comment",
    r"^copyright notification$",
    r"no part may be reproduced or utili[sz]ed in any form or by any means",
    r"the copyright and the foregoing restriction extend to reproduction",
    r"^\u00a9 etsi \d{4}",
    r"trademarks? of etsi registered for the benefit of its members",
    r"trademarks? registered and owned by the gsm association",
    r"^intellectual property rights$",
    r"^essential patents$",
    r"iprs essential or potentially essential to normative deliverables",
    r"pursuant to the etsi ipr policy, no investigation",
    r"^trademarks$",
    r"^all (?:registered )?trademarks(?: or trademarks)? (?:belong to|are the property of) their respective",
    r"the present document may include trademarks and/or tradenames",
    r"^modal verbs terminology$",
    r"are to be interpreted as described in clause \d+(?:\.\d+)* of the etsi drafting rules",
    r"\"must\" and \"must not\" are not allowed in etsi deliverables",
)
# Matched against lowercased text: case-insensitive alternations are several times slower in `re`.
_BOILERPLATE_RE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS))
# The headings among them (anchored at both ends): a line of its own, whatever the re-flow rules say.
_BOILERPLATE_HEADING_RE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS if p[0] == "^" and p[-1] == "$"))
# The same phrases without anchors: one search per page finds the pages worth checking paragraph by paragraph.
_BOILERPLATE_ANY_RE = re.compile("|".join(f"(?:{p.strip('^$')})" for p in BOILERPLATE_PATTERNS))


def is_boilerplate(paragraph: str) -> tuple[bool, str]:
    """A paragraph carrying publisher boilerplate (legal notices, status-of-memo, copyright, IPR, comment calls)."""
    collapsed = _SPACES_RE.sub(" ", paragraph).strip().lower()
    if _BOILERPLATE_RE.search(collapsed):
        return False, "boilerplate"
    return True, ""


# NIST's vertical margin stamp; pymupdf's sort=True interleaves its words with body lines.
_STAMP_WORDS = frozenset({"this", "publication", "is", "available", "free", "of", "charge", "from:", "from"})
_STAMP_LINE_RE = re.compile(
    r"^\s*(?:this\s+publication\s+is\s+available\s+free\s+of\s+charge\s+from:?)?\s*"
    r"(?:https?://(?:dx\.)?doi\.org/10\.6028/\S*)?\s*$",
    re.IGNORECASE,
)
_STAMP_LEAD_RE = re.compile(r"^\s*(?:This|publication|is|available|free|of|charge|from:)(?=\s{2,}\S)\s*")
_STAMP_GLUED_RE = re.compile(
    r"(?<=[a-z.,;:)?>\]])(?:publication|available|free|charge|from:)(?:\s{2,}|\s*$)"
    r"|(?<=\S)https?://(?:dx\.)?doi(?:\.org(?:/10\.6028/\S*)?)?\s*"
)


# Draft NIST publications number every line in the margin ("210    2.   Attack and Defense Basics").
_LEADING_NUMBER_RE = re.compile(r"^\s*(\d{1,5})(?:\s+|$)")
_NUMBERS_ONLY_RE = re.compile(r"^\s*\d{1,5}(?:\s+\d{1,5})*\s*$")


def _has_line_numbers(pages: Sequence[list[str]], min_share: float = 0.4) -> bool:
    """Whether most lines start with a number and those numbers mostly increase (margin line numbering)."""
    numbers = []
    nonempty = 0
    for lines in pages:
        for line in lines:
            if line.strip():
                nonempty += 1
                match = _LEADING_NUMBER_RE.match(line)
                if match:
                    numbers.append(int(match.group(1)))
    if nonempty < 20 or len(numbers) < min_share * nonempty:
        return False
    rising = sum(1 for a, b in zip(numbers, numbers[1:], strict=False) if b > a)
    return rising >= 0.8 * (len(numbers) - 1)


def _has_margin_stamp(pages: Sequence[list[str]]) -> bool:
    hits = 0
    for lines in pages:
        for line in lines:
            stripped = line.strip().lower()
            if stripped in ("charge", "from:") or "available free of charge from" in stripped:
                hits += 1
                break
    return hits >= 2


def _remove_margin_stamp(line: str) -> tuple[str | None, int]:
    """Strip the stamp's words from one line; None when nothing else was on it."""
    stripped = line.strip()
    if stripped and (stripped.lower() in _STAMP_WORDS or _STAMP_LINE_RE.match(stripped)):
        return None, 1
    new = _STAMP_LEAD_RE.sub("", line)
    new, count = _STAMP_GLUED_RE.subn(" ", new)
    count += new != line and not count
    return new, count


# ---- quality predicates for chunks (Gopher) ---------------------------------------------------------------------

_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Gopher quality thresholds (datatrove `GopherQualityFilter`), loosened for standards text.

    Gopher was tuned on web pages; in standards, protocol structs, registries, cipher-suite tables and reference
    lists have few stop words and many identifiers, and they are domain text worth keeping. These defaults drop
    machine noise (base64 blobs, byte arrays, hash dumps) and keep those.
    """

    min_words: int = 5  # Gopher: 50 per document; chunks are shorter and min_tokens already bounds them
    min_avg_word_length: float = 2.0  # Gopher: 3
    max_avg_word_length: float = 20.0  # Gopher: 10; TLS cipher-suite names average 14, base64 blobs 40+
    max_symbol_word_ratio: float = 0.1  # Gopher: 0.1 ("#" and "..." per word)
    max_numeric_word_share: float = 0.5  # Gopher counts words without a letter (max 0.2); here only words with
    # digits and no letter count, since table borders ("|", "+----+") are structure, not noise
    min_stop_words: int = 0  # Gopher: 2 of the, be, to, of, and, that, have, with; off, structs have none

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise ValueError(f"QualityConfig.min_words must be >= 0, got {self.min_words}")
        if not 0 < self.min_avg_word_length < self.max_avg_word_length:
            raise ValueError(
                "QualityConfig needs 0 < min_avg_word_length < max_avg_word_length, got "
                f"{self.min_avg_word_length} and {self.max_avg_word_length}"
            )
        if not 0.0 <= self.max_numeric_word_share <= 1.0:
            raise ValueError(
                f"QualityConfig.max_numeric_word_share must be in [0, 1], got {self.max_numeric_word_share}"
            )
        if self.min_stop_words < 0:
            raise ValueError(f"QualityConfig.min_stop_words must be >= 0, got {self.min_stop_words}")


# A whitespace-delimited word with a digit and no letter: "123,", "0x00"-free numbers, "2^16-1".
_NUMERIC_WORD_RE = re.compile(r"(?<!\S)(?:[^\s\w]|[\d_])*\d(?:[^\s\w]|[\d_])*(?!\S)")


def quality_filter(text: str, config: QualityConfig) -> tuple[bool, str]:
    """Gopher-style quality predicate for one chunk: (keep, reason)."""
    words = text.split()
    if len(words) < config.min_words or not words:
        return False, "too_few_words"
    mean_length = sum(len(w) for w in words) / len(words)
    if not config.min_avg_word_length <= mean_length <= config.max_avg_word_length:
        return False, "word_length"
    symbols = text.count("#") + text.count("...")
    if symbols / len(words) > config.max_symbol_word_ratio:
        return False, "symbol_ratio"
    numeric = len(_NUMERIC_WORD_RE.findall(text))
    if numeric / len(words) > config.max_numeric_word_share:
        return False, "numeric_words"
    if config.min_stop_words and len(_STOP_WORDS.intersection(w.lower() for w in words)) < config.min_stop_words:
        return False, "few_stop_words"
    return True, ""


# ---- re-flow ----------------------------------------------------------------------------------------------------

_LIST_MARKER_RE = re.compile(
    r"^(?:[\u2022\u2013\u2014*\-o\u2713]\s|\(?\d{1,2}[.)]\s|\(?[a-z][.)]\s|\([ivx]{1,5}\)\s|\([A-Z]?\d{1,2}\)\s)"
)
_LONE_BULLETS = frozenset({"\u2022", "-", "*", "o", "\u2013", "\u2713"})
_BULLET_GAP_RE = re.compile(r"^([\u2022*\-o\u2713])\s{2,}")
_INNER_GAP_RE = re.compile(r"(?<=\S) {3,}(?=\S)")
_OPERATOR_RUN_RE = re.compile(r"[=<>|+]{2,}")  # "==", "->"-free operators, "+--+" borders, "||"
_FOOTNOTE_RE = re.compile(r"^\d{1,2}\s+[A-Z]")
_LETTER_SPACED_RE = re.compile(r"^(?:[A-Za-z]\s+){5,}[A-Za-z]$")
_HYPHEN_TAIL_RE = re.compile(r"([^\W\d_]+(?:-[^\W\d_]+)*)-$")
_HEAD_WORD_RE = re.compile(r"^([^\W\d_]+)")
_END_PUNCT = ".!?:"


@dataclass(slots=True)
class _Line:
    text: str  # stripped
    indent: int
    pre: bool  # preformatted: a table row, code or ASCII art keeps its line break and indentation


# Syntax of code, ABNF and ASN.1 lines: a definition ("::=", "name = ..."), a "--" comment, a brace or semicolon at
# the end, a module keyword. One such line is prose as often as not; a run of them is a block.
_CODE_SYNTAX_RE = re.compile(
    r"::=|^\S+\s+=\s|\s--\s|[{};]\s*(?:--.*)?$|^[}\])]|^(?:END|BEGIN|IMPORTS|EXPORTS)\b|\bDEFINITIONS\b"
)
CODE_RUN_MIN_LINES = 3  # consecutive syntax lines that make a preformatted block


def code_runs(lines: Sequence[str], min_lines: int = CODE_RUN_MIN_LINES) -> set[int]:
    """Indices of lines inside runs of code/ABNF/ASN.1 syntax (`_CODE_SYNTAX_RE`), decided on syntax and layout.

    A run is at least `min_lines` consecutive non-empty lines of which at least two thirds show syntax and whose
    lines are short or indented like code; a single non-syntax line inside a run (a continuation) joins it.
    """
    flags = [bool(line.strip()) and bool(_CODE_SYNTAX_RE.search(line.strip())) for line in lines]
    runs: set[int] = set()
    i = 0
    while i < len(lines):
        if not flags[i]:
            i += 1
            continue
        j, misses = i, 0
        while (
            j + 1 < len(lines)
            and lines[j + 1].strip()
            and (flags[j + 1] or (misses == 0 and j + 2 < len(lines) and flags[j + 2]))
        ):
            misses += not flags[j + 1]
            j += 1
        run = range(i, j + 1)
        hits = sum(flags[k] for k in run)
        if len(run) >= min_lines and hits >= 2 * len(run) / 3:
            runs.update(run)
        i = j + 1
    return runs


def _is_preformatted(stripped: str) -> bool:
    if "   " in stripped:
        gaps = list(_INNER_GAP_RE.finditer(stripped))
        # Two gaps: table columns. One gap after a long left part: a two-column table. One gap after a short
        # label ("1. MUST   This word...", "Destroy:   Incinerate...") is a definition list: prose.
        if len(gaps) >= 2 or (gaps and gaps[0].start() > 30):
            return True
    if stripped[-1] in "{}" or stripped[0] in "}|+" or stripped.endswith("*/"):
        return True
    if stripped[-1] == ";" and (
        stripped.count(" ") <= 2 or (stripped.count(" ") <= 6 and any(c in stripped for c in "=<>[]"))
    ):
        return True  # a short declaration: "Random random;", "uint8 legacy_compression_method = 0;"
    if stripped.startswith(("/*", "//", "#include")) or _OPERATOR_RUN_RE.search(stripped):
        return True
    if len(stripped) < 16:
        return False  # "RFC 2119." is a line of prose, however few letters it has
    return sum(map(str.isalpha, stripped)) < 0.4 * len(stripped)


class _Dehyphenator:
    """Decides whether "left-" + "right" at a line break is one word broken by typesetting or a real compound.

    The evidence is the document's own spelling: a joined form seen elsewhere wins, then a hyphenated form seen
    elsewhere. Lookups are regex searches over the lowercased text, made only for the few line-end hyphens.
    """

    def __init__(self, text: str, join_unknown: bool, join_long: int = 0) -> None:
        self.text = text
        self.lower: str | None = None
        self.join_unknown = join_unknown
        self.join_long = join_long
        self.joined = 0

    def _count(self, word: str) -> int:
        """How often `word` occurs as a whole word (its own occurrence at the line break included)."""
        if self.lower is None:
            self.lower = self.text.lower()
        return len(re.findall(rf"(?<![\w-]){re.escape(word)}(?![\w-])", self.lower))

    def _seen(self, word: str) -> bool:
        """Whether `word` occurs as a whole word (str.find: regex lookbehinds scan ~100x slower here)."""
        if self.lower is None:
            self.lower = self.text.lower()
        text, start = self.lower, 0
        while (index := text.find(word, start)) >= 0:
            end = index + len(word)
            before = text[index - 1] if index else " "
            after = text[end] if end < len(text) else " "
            if not (before.isalnum() or before in "-_") and not (after.isalnum() or after in "-_"):
                return True
            start = index + 1
        return False

    def join(self, left: str, right: str) -> str:
        """Join line `left` (ending in "-") and line `right`."""
        tail = _HYPHEN_TAIL_RE.search(left)
        head = _HEAD_WORD_RE.match(right)
        if not tail or not head:
            return left + right
        prefix, suffix = tail.group(1), head.group(1)
        last_part = prefix.rsplit("-", 1)[-1]
        if "-" in prefix:
            keep = True  # "end-to-" + "end": a compound continues
        elif self._seen(f"{prefix}-{suffix}".lower()):
            keep = True  # "pattern-" + "matching" spelled with its hyphen elsewhere (checked first: "digitally-
            # signed" must not become "digitallysigned" because a struct is called DigitallySigned)
        elif self._seen((last_part + suffix).lower()):
            keep = False
        elif (
            self.join_long
            and len(last_part) + len(suffix) >= self.join_long
            and len(suffix) >= 7
            and suffix[0].islower()
            and self._count(suffix.lower()) <= 1
        ):
            keep = False  # "Wider-" + "spruchsbeweisen": the second part is no word of this document
        else:
            keep = not (self.join_unknown and last_part[-1].islower() and suffix[0].islower())
        if keep:
            return left + right
        self.joined += 1
        return left[:-1] + right


def _reflow(blocks: list[list[_Line]], width: float, config: CleaningConfig, dehyphenator: _Dehyphenator) -> str:
    """Join wrapped lines into paragraphs.

    Paragraphs, and runs of preformatted lines, are separated by a blank line; list items by a line break. Blank
    lines in the page text always end a paragraph, but pymupdf's content-order text usually has none, so paragraph
    ends are also inferred from the lines (see `_continues`).
    """
    wide = config.wide_line_share * width
    parts: list[str] = []  # output paragraphs, each preceded by its separator
    for block in blocks:
        min_indent = min((ln.indent for ln in block if ln.pre), default=0)
        prev: _Line | None = None
        for line in block:
            text = line.text
            if line.pre:
                indented = " " * min(line.indent - min_indent, 16) + text
                if prev is not None and prev.pre:
                    parts[-1] += "\n" + indented
                else:
                    parts.append(("\n\n" if parts else "") + indented)
            elif prev is not None and not prev.pre and (not config.reflow or not _continues(prev, line, wide)):
                separator = "\n" if not config.reflow or _LIST_MARKER_RE.match(text) else "\n\n"
                parts.append(separator + text)
            elif prev is not None and not prev.pre:
                last = parts[-1]
                if last.endswith("\u2013") and last[-2:-1].isdigit() and text[:1].isdigit():
                    parts[-1] = last + text  # an en-dash range broken after the dash: "2018\u2013" + "23\u201351"
                elif last.endswith("-") and not last[-2:-1].isspace():
                    # A line-end hyphen joins without a space: "secu-|rity" (maybe de-hyphenated), "800-|53".
                    if config.dehyphenate and last[-2:-1].isalpha():
                        parts[-1] = dehyphenator.join(last, text)
                    else:
                        parts[-1] = last + text
                else:
                    parts[-1] = f"{last} {text}"
            else:
                parts.append(("\n\n" if parts else "") + text)
            prev = line
    return "".join(parts)


# Section titles that stand alone in standards; a line before one of them ends its paragraph.
_KNOWN_HEADING_RE = re.compile(
    r"^(?:abstract|status of th(?:is|e) memo|copyright notice|table of contents|contents|introduction|foreword|"
    r"preface|acknowledge?ments?|authority|keywords|audience|executive summary|references|glossary|"
    r"security considerations|iana considerations|authors?'? addresse?s?)$",
    re.IGNORECASE,
)
_NUMBERED_HEADING_RE = re.compile(r"^(?:\d{1,2}(?:\.\d{1,2})*\.?|[A-Z]\.\d{1,2}(?:\.\d{1,2})*\.?)\s+[A-Z][^.!?]*$")
_SECTION_NUMBER_RE = re.compile(
    r"^(?:\d{1,2}(?:\.\d{1,2})*\.?|[A-Z]\.(?:\d{1,2}\.?)*|appendix [A-Z]\.?)$", re.IGNORECASE
)


def _continues(prev: _Line, line: _Line, wide: float) -> bool:
    """Whether `line` continues the paragraph that `prev` (the previous prose line) belongs to."""
    before, text = prev.text, line.text
    if _SECTION_NUMBER_RE.match(before):
        return True  # "2." then "Attack and Defense Basics": a heading's number on its own line
    if _LIST_MARKER_RE.match(text) or _KNOWN_HEADING_RE.match(text):
        return False
    last = before[-1]
    if last in _END_PUNCT:
        if len(before) < wide or _FOOTNOTE_RE.match(text):
            return False  # a short line ending a sentence ends its paragraph; "2 The term...": a footnote
        if line.indent < prev.indent:
            return False  # RFC layout: a full line ends a sentence and the next line steps back out
    if last not in ",;-(" and text[0].isupper():
        if _NUMBERED_HEADING_RE.match(before):
            return False  # "6. Guidance in the use of these Imperatives" before its first sentence
        if len(before) < 0.7 * wide and not before[0].islower():
            return False  # a short line without trailing punctuation before a capital: a heading or a title
    return True


# ---- the document cleaner ---------------------------------------------------------------------------------------


def _edge_indices(lines: list[str], k: int) -> list[int]:
    nonempty = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(nonempty[:k] + nonempty[-k:]))


def _count(counter: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        counter[reason] = counter.get(reason, 0) + n


def clean_document(
    page_texts: Sequence[str], config: CleaningConfig | None = None, vocabulary_text: str | None = None
) -> CleanedDocument:
    """Clean all pages of one document into paragraph text.

    Args:
        page_texts: Page texts in reading order (pymupdf `get_text("text")`, sorted or not).
        config: Cleaning thresholds; defaults when None.
        vocabulary_text: Extra text whose spellings guide de-hyphenation (e.g. the whole source); the document's
            own text is always used.

    Returns:
        The cleaned text (paragraphs separated by blank lines, no page furniture) and per-reason counts.
    """
    config = config or CleaningConfig()
    removed: dict[str, int] = {}
    dropped: dict[str, int] = {}
    edits: dict[str, int] = {}
    chars_in = sum(len(t) for t in page_texts)

    pages: list[list[str]] = []
    for raw in page_texts:
        text, page_edits = normalize_chars(raw, config.special_tokens)
        for reason, n in page_edits.items():
            _count(edits, reason, n)
        pages.append([line.rstrip() for line in text.split("\n")])

    if _has_line_numbers(pages):
        for lines in pages:
            kept = []
            for line in lines:
                if _NUMBERS_ONLY_RE.match(line):
                    _count(removed, "line_number")
                    continue
                new = _LEADING_NUMBER_RE.sub("", line, count=1)
                _count(edits, "line_number", new != line)
                kept.append(new)
            lines[:] = kept

    # Running headers and footers: edge lines whose normalised form repeats on many pages.
    edge_keys = [{furniture_key(lines[i]) for i in _edge_indices(lines, config.edge_lines)} for lines in pages]
    counts = Counter(key for keys in edge_keys for key in keys)
    nonempty_pages = sum(1 for lines in pages if any(line.strip() for line in lines))
    share_pages = math.ceil(config.repeated_line_share * nonempty_pages)
    threshold = max(config.repeated_line_min_pages, min(share_pages, config.repeated_line_max_pages))
    repeated = {key for key, n in counts.items() if n >= threshold and key}
    # The very first or last line of a page repeating on two pages is a running head even in a short document
    # (a three-page RFC has its header on pages 2 and 3).
    outer_keys = [
        {furniture_key(lines[i]) for i in (nonempty[0], nonempty[-1])}
        for lines in pages
        if (nonempty := [i for i, line in enumerate(lines) if line.strip()])
    ]
    outer_counts = Counter(key for keys in outer_keys for key in keys)
    repeated |= {key for key, n in outer_counts.items() if key and n >= 2 and n >= share_pages}
    stamp = _has_margin_stamp(pages)
    anywhere = _repeated_anywhere(pages, config, nonempty_pages)

    width = _text_width(pages)
    kept_pages: list[list[str]] = []
    for lines in pages:
        if not any(line.strip() for line in lines):
            _count(dropped, "empty")
            continue
        edges = set(_edge_indices(lines, config.edge_lines))
        new_lines: list[str] = []
        for i, line in enumerate(lines):
            if i in edges or _EXPLICIT_PAGE_RE.match(line):
                if not is_page_number(line)[0]:
                    _count(removed, "page_number")
                    continue
                if furniture_key(line) in repeated or _PAGE_FOOTER_RE.search(line):
                    _count(removed, "header_footer")
                    continue
            if stamp:
                line, n = _remove_margin_stamp(line)
                if line is None:
                    _count(removed, "margin_stamp")
                    continue
                _count(edits, "margin_stamp", n)
            if anywhere and line.strip() and furniture_key(line) in anywhere:
                _count(removed, "repeated_line")
                continue
            if not is_rule_line(line)[0]:
                _count(removed, "rule_line")
                continue
            if _LETTER_SPACED_RE.match(line.strip()):
                _count(removed, "letter_spaced")  # cover-page decoration: "C O M P U T E R  S E C U R I T Y"
                continue
            new_lines.append(line)
        page_result = _page_verdict(new_lines, config, removed, width)
        if isinstance(page_result, str):
            _count(dropped, page_result)
            continue
        if page_result:
            kept_pages.append(page_result)
        else:
            _count(dropped, "empty")

    # Dotted leaders left inside kept lines (not TOC entries: those went with their pages or lines).
    for lines in kept_pages:
        for i, line in enumerate(lines):
            if "...." in line or ". . . ." in line:
                lines[i], n = remove_dotted_leaders(line)
                _count(edits, "dotted_leader", n)

    text = _assemble(kept_pages, config, vocabulary_text, edits, width)
    text, n_special = strip_special_tokens(text, config.special_tokens)
    _count(edits, "special_token", n_special)
    return CleanedDocument(
        text=text,
        pages_in=len(page_texts),
        pages_kept=len(kept_pages),
        chars_in=chars_in,
        chars_out=len(text),
        dropped_pages=dropped,
        removed_lines=removed,
        edits=edits,
    )


def _repeated_anywhere(pages: Sequence[list[str]], config: CleaningConfig, nonempty_pages: int) -> set[str]:
    """Keys of lines that occur, up to digits, once on each of many pages wherever they stand (print slugs)."""
    if nonempty_pages < config.repeated_line_min_pages:
        return set()
    counts: Counter[str] = Counter()
    for lines in pages:
        keys = Counter(furniture_key(line) for line in lines if len(line.strip()) >= config.repeated_anywhere_min_chars)
        counts.update(key for key, n in keys.items() if n == 1)
    need = max(config.repeated_line_min_pages, math.ceil(config.repeated_anywhere_share * nonempty_pages))
    return {key for key, n in counts.items() if n >= need and len(key) >= config.repeated_anywhere_min_chars}


_ENTRY_RE = re.compile(r"^\s*(?:\d{1,2}(?:\.\d{1,2}){0,4}\.?|[A-Z](?:\.\d{1,2}){1,4}|[IVX]{1,5}\.)\s+\S")
_PAGE_REF_RE = re.compile(r"(?:^|\s|\.)(?:\d{1,4}|[ivxlc]{1,7}|[A-Z]{1,3}-\d{1,3})\s*$", re.IGNORECASE)
_INDEX_ENTRY_RE = re.compile(r"^\s*\S[^,]{0,60},\s*\d{1,4}(?:\s*[,\u2013-]\s*\d{1,4})*\s*$")


def _structural_toc(nonempty: list[str], config: CleaningConfig) -> bool:
    """A table of contents in any language, by structure.

    Numbered entries (1, 1.1, 2, A.1) that end in, or are followed by, a page reference, in rising section order,
    and little prose.
    """
    entries = 0
    numbers: list[tuple[int, ...]] = []
    for i, line in enumerate(nonempty):
        if not _ENTRY_RE.match(line):
            continue
        nxt = nonempty[i + 1].strip() if i + 1 < len(nonempty) else ""
        if _PAGE_REF_RE.search(line.strip()) or _PAGE_NUMBER_RE.match(nxt):
            entries += 1
            head = line.split()[0].rstrip(".")
            if head.replace(".", "").isdigit():
                numbers.append(tuple(int(part) for part in head.split(".") if part))
    if entries < config.structural_toc_entries:
        return False
    rising = sum(1 for a, b in zip(numbers, numbers[1:], strict=False) if b > a)
    prose = sum(
        len(line.strip()) > 90 and ". ." not in line and "...." not in line and not _PAGE_REF_RE.search(line.strip())
        for line in nonempty
    )
    return rising >= 0.7 * max(1, len(numbers) - 1) and prose < 0.2 * len(nonempty)


def _index_page(nonempty: list[str], config: CleaningConfig) -> bool:
    """A back-of-book index: most lines are "term, 12, 45" entries."""
    if len(nonempty) < 8:
        return False
    entries = sum(1 for line in nonempty if _INDEX_ENTRY_RE.match(line))
    return entries >= config.index_page_share * len(nonempty)


_HISTORY_HEADING_RE = re.compile(r"^\s*(?:document|change|revision)?\s*history\s*$", re.IGNORECASE)
_VERSION_ROW_RE = re.compile(r"^\|?\s*V?\d{1,2}\.\d{1,2}\.\d{1,2}(?![\w.])")  # a row (or cell) opens with it
_YEAR_RE = re.compile(r"(?<!\d)(?:19|20)\d{2}(?!\d)")


def _history_page(nonempty: list[str]) -> bool:
    """A document-history page (ETSI's last page): a "History" heading over rows of version, date and status.

    Rows may come as one line ("V1.1.1 | February 2019 | Publication") or a line per cell; either way the page is
    the heading, version numbers and dates, and no prose.
    """
    if not any(_HISTORY_HEADING_RE.match(line) for line in nonempty[:4]):
        return False
    rest = [line.strip() for line in nonempty if not _HISTORY_HEADING_RE.match(line)]
    versions = sum(1 for line in rest if _VERSION_ROW_RE.match(line))
    dated = sum(1 for line in rest if _YEAR_RE.search(line))
    prose = sum(1 for line in rest if len(line) > 90 and not _VERSION_ROW_RE.match(line))
    return versions >= 1 and dated >= 1 and prose == 0 and versions + dated >= 0.5 * len(rest)


def _paragraphs(lines: list[str], wide: float) -> list[list[int]]:
    """A page's paragraphs as line indices, for boilerplate detection.

    They end at blank lines and where the re-flow rules would end one, since content-order text has few blank
    lines; a boilerplate heading ("Trademarks", "Copyright Notification") stands alone, as the re-flow rules would
    otherwise glue it to the end of the paragraph before.
    """
    paragraphs: list[list[int]] = []
    current: list[int] = []
    prev: _Line | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        heading = bool(stripped) and _BOILERPLATE_HEADING_RE.search(_SPACES_RE.sub(" ", stripped).lower()) is not None
        if not stripped or heading:
            prev = None
            if current:
                paragraphs.append(current)
                current = []
            if heading:
                paragraphs.append([i])
            continue
        this = _Line(stripped, len(line) - len(line.lstrip(" ")), False)
        if current and prev is not None and not _continues(prev, this, wide):
            paragraphs.append(current)
            current = []
        current.append(i)
        prev = this
    if current:
        paragraphs.append(current)
    return paragraphs


def _page_verdict(lines: list[str], config: CleaningConfig, removed: dict[str, int], width: float) -> list[str] | str:
    """The page's lines after TOC-entry and boilerplate removal, or the reason to drop the whole page."""
    nonempty = [line for line in lines if line.strip()]
    if not nonempty:
        return []
    if _structural_toc(nonempty, config):
        return "toc"
    if _index_page(nonempty, config):
        return "index"
    if _history_page(nonempty):
        return "document_history"
    toc_flags = [not is_toc_line(line)[0] for line in lines]
    n_toc = sum(toc_flags)
    if n_toc:
        has_heading = any(_TOC_HEADING_RE.match(line) for line in nonempty[:6])
        share = n_toc / len(nonempty)
        if share >= config.toc_page_share or (has_heading and share >= config.toc_page_share_with_heading):
            return "toc"
    # Boilerplate paragraphs; a page mostly made of them goes whole.
    drop: set[int] = set()
    boiler_chars = 0
    paragraphs: list[list[int]] = []
    if _BOILERPLATE_ANY_RE.search(_SPACES_RE.sub(" ", " ".join(nonempty)).lower()):
        paragraphs = _paragraphs(lines, config.wide_line_share * width)
        for paragraph in paragraphs:
            text = "\n".join(lines[i].strip() for i in paragraph)
            if not is_boilerplate(text)[0]:
                drop.update(paragraph)
                boiler_chars += len(text)
    total_chars = sum(len(line.strip()) for line in nonempty)
    if drop and boiler_chars >= config.boilerplate_page_share * total_chars:
        # The leftovers of a legal page (address, reference, keywords) go with it; a paragraph of prose does not
        # (ETSI's foreword and first clause share the page of its IPR and trademark notices).
        if not any(
            sum(len(lines[i].strip()) for i in paragraph) >= config.boilerplate_page_keeps_prose
            for paragraph in paragraphs
            if not drop.intersection(paragraph)
        ):
            return "boilerplate"
    kept = []
    toc_removed = False
    for i, line in enumerate(lines):
        if i in drop:
            _count(removed, "boilerplate")
        elif toc_flags[i] and ("...." in line or ". . ." in line):
            _count(removed, "toc")
            toc_removed = True
        else:
            kept.append(line)
    if toc_removed:  # the "Table of Contents" heading goes with its entries
        headings = [line for line in kept if _TOC_HEADING_RE.match(line)]
        _count(removed, "toc", len(headings))
        kept = [line for line in kept if not _TOC_HEADING_RE.match(line)]
    return kept


def _text_width(pages: Sequence[list[str]]) -> float:
    """The document's text width in characters: the 90th percentile of line lengths (lines of 20+ characters)."""
    lengths = sorted(len(line.strip()) for lines in pages for line in lines if len(line.strip()) >= 20)
    return float(lengths[int(0.9 * (len(lengths) - 1))]) if lengths else 80.0


def _assemble(
    pages: list[list[str]], config: CleaningConfig, vocabulary_text: str | None, edits: dict, width: float
) -> str:
    """Pages -> blocks of classified lines (a paragraph may run across a page break) -> re-flowed text."""
    blocks: list[list[_Line]] = []
    current: list[_Line] = []
    for lines in pages:
        page_lines = [line for line in lines]
        # Trim blank lines at page edges; the page break is a paragraph break unless the sentence runs on.
        while page_lines and not page_lines[0].strip():
            page_lines.pop(0)
        if current and page_lines:
            first = page_lines[0].strip()
            last = current[-1]
            heading = len(first) < 0.5 * width and first[0].isupper() and first[-1] not in ".,;:"
            runs_on = (
                not last.pre
                and last.text[-1] not in _END_PUNCT
                and (
                    first[0].islower()
                    or last.text.endswith(("-", ","))
                    or (len(last.text) >= 0.6 * width and not heading)
                )
            )
            if not runs_on:
                blocks.append(current)
                current = []
        bullet = ""
        code = code_runs(page_lines)
        for number, line in enumerate(page_lines):
            stripped = line.strip()
            if not stripped:
                if current and not bullet:
                    blocks.append(current)
                    current = []
                continue
            if stripped in _LONE_BULLETS:
                bullet = "\u2022 "  # content order puts a list's bullet glyph on its own line, before the item
                continue
            if bullet:
                stripped, bullet = bullet + stripped, ""
            indent = len(line) - len(line.lstrip(" "))
            if "  " in stripped:
                stripped = _BULLET_GAP_RE.sub("\\1 ", stripped)
            pre = number in code or _is_preformatted(stripped)
            if not pre and "  " in stripped:
                stripped = _SPACES_RE.sub(" ", stripped)
            current.append(_Line(stripped, indent, pre))
    if current:
        blocks.append(current)
    corpus = "\n".join(line.text for block in blocks for line in block)
    if vocabulary_text:
        corpus = f"{corpus}\n{vocabulary_text}"
    dehyphenator = _Dehyphenator(corpus, config.join_unknown_hyphenation, config.join_long_unknown)
    text = _reflow(blocks, width, config, dehyphenator)
    _count(edits, "dehyphenated", dehyphenator.joined)
    return text
