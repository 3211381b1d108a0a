"""PDFs built with pymupdf from known text, one layout feature each, for the corpus tests and the quality bench.

Each builder writes a PDF and returns what a perfect page-text + cleaning pipeline would recover from it: the body
text, the furniture strings that must not survive, the preformatted blocks that must survive with their line breaks,
and the table rows. Text is made of real English words drawn with a fixed seed, so word F1 is meaningful and
reproducible, and line-end hyphenation is decided by the builder (so the right answer is known).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come since "
    "against go came right used take three states himself few house use during without again place around however "
    "home small found thought went say part once general high upon school every does got united left number course "
    "war until always away something fact though water less public put think almost hand enough far took head yet "
    "government system better set told nothing night end why called didn't eyes find going look asked later knew "
    "protocol security message server client certificate authentication encryption negotiation implementation "
    "configuration requirements transmission specification identifier registration organization architecture "
    "interoperability confidentiality vulnerability infrastructure administration verification extensibility"
).split()
LONG_WORDS = [w for w in WORDS if len(w) >= 10]

PAGE_W, PAGE_H = 612.0, 792.0
MARGIN = 72.0
FONT, FONTSIZE, LEADING = "helv", 10.0, 13.0


def sentences(rng: random.Random, n: int, long_share: float = 0.15) -> list[str]:
    """`n` sentences of 8-18 words, a share of them long technical words (the hyphenation candidates)."""
    out = []
    for _ in range(n):
        n_words = rng.randint(8, 18)
        words = [rng.choice(LONG_WORDS) if rng.random() < long_share else rng.choice(WORDS) for _ in range(n_words)]
        out.append(" ".join(words).capitalize() + ".")
    return out


def paragraphs(rng: random.Random, n: int, per: int = 5) -> list[str]:
    return [" ".join(sentences(rng, per)) for _ in range(n)]


def wrap(text: str, width: float, hyphenate: bool = False, fontsize: float = FONTSIZE) -> list[str]:
    """Greedy line breaking by measured width; with `hyphenate`, long words that do not fit are broken with '-'."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if pymupdf.get_text_length(candidate, FONT, fontsize) <= width:
            line = candidate
            continue
        if hyphenate and len(word) >= 8:
            for cut in range(len(word) - 3, 3, -1):
                head = f"{line} {word[:cut]}-" if line else f"{word[:cut]}-"
                if pymupdf.get_text_length(head, FONT, fontsize) <= width:
                    lines.append(head)
                    line = word[cut:]
                    break
            else:
                lines.append(line)
                line = word
            continue
        if line:
            lines.append(line)
        line = word
    if line:
        lines.append(line)
    return lines


@dataclass
class BuiltPdf:
    """A generated PDF and the ground truth for it."""

    feature: str
    path: Path
    body: str  # text that should survive, paragraphs separated by blank lines
    furniture: list[str] = field(default_factory=list)  # strings that must not survive cleaning
    blocks: list[str] = field(default_factory=list)  # preformatted blocks that must survive with their line breaks
    tables: list[list[list[str]]] = field(default_factory=list)  # tables as rows of cells
    expect_status: str = "ok"  # the extraction verdict the document deserves
    pages: int = 0


class _Pages:
    """Places lines top to bottom across pages, calling `decorate(page, number)` on every new page."""

    def __init__(self, doc: pymupdf.Document, decorate: Callable[[pymupdf.Page, int], None] | None = None,
                 top: float = MARGIN + 20, bottom: float = PAGE_H - MARGIN - 20) -> None:  # fmt: skip
        self.doc, self.decorate, self.top, self.bottom = doc, decorate, top, bottom
        self.page: pymupdf.Page | None = None
        self.y = 0.0

    def new_page(self) -> pymupdf.Page:
        self.page = self.doc.new_page(width=PAGE_W, height=PAGE_H)
        if self.decorate:
            self.decorate(self.page, self.doc.page_count)
        self.y = self.top
        return self.page

    def line(self, text: str, x: float = MARGIN, font: str = FONT, fontsize: float = FONTSIZE) -> None:
        if self.page is None or self.y + LEADING > self.bottom:
            self.new_page()
        self.y += LEADING
        if text:
            self.page.insert_text((x, self.y), text, fontname=font, fontsize=fontsize)

    def paragraph(self, text: str, hyphenate: bool = False, width: float = PAGE_W - 2 * MARGIN) -> None:
        for line in wrap(text, width, hyphenate):
            self.line(line)
        self.line("")


def _save(doc: pymupdf.Document, path: Path) -> int:
    pages = doc.page_count
    doc.save(path)
    doc.close()
    return pages


def build_running_heads(folder: Path, seed: int = 1) -> BuiltPdf:
    """Running head, page numbers in roman then arabic ("[Page ii]", "Page 3 of 6") and a print slug with varying
    numbers that the content stream writes in the middle of the page's text (so it splits a sentence)."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 36)
    doc = pymupdf.open()
    roman = ["i", "ii", "iii", "iv"]

    def decorate(page: pymupdf.Page, number: int) -> None:
        page.insert_text((MARGIN, 50), "Internet Engineering Task Force            Protocol Notes", fontname=FONT,
                         fontsize=9)  # fmt: skip
        label = f"[Page {roman[number - 1]}]" if number <= len(roman) else f"Page {number} of 9"
        page.insert_text((PAGE_W - MARGIN - 60, PAGE_H - 40), label, fontname=FONT, fontsize=9)

    writer = _Pages(doc, decorate)
    slugged: set[int] = set()
    for para in paras:
        for line in wrap(para, PAGE_W - 2 * MARGIN):
            writer.line(line)
            number = doc.page_count
            if number not in slugged and writer.y > PAGE_H / 2:
                slugged.add(number)
                slug = (f"VerDate Sep<11>2014 16:21 Aug 0{number}, 2020 Jkt 25000{number} PO 00000 "
                        f"Frm 0000{number} Fmt 4701 Sfmt 4701")  # fmt: skip
                writer.page.insert_text((MARGIN, PAGE_H - 25), slug, fontname=FONT, fontsize=6)
        writer.line("")
    path = folder / "running_heads.pdf"
    pages = _save(doc, path)
    furniture = ["Internet Engineering Task Force", "Protocol Notes", "[Page ii]", "[Page iii]", "Page 5 of",
                 "VerDate", "Jkt", "Sfmt"]  # fmt: skip
    return BuiltPdf("running_heads", path, "\n\n".join(paras), furniture, pages=pages)


def build_columns(folder: Path, columns: int, seed: int = 2) -> BuiltPdf:
    """Body text in `columns` columns per page, each column a text box filled in order."""
    rng = random.Random(seed + columns)
    paras = paragraphs(rng, 6 * columns, per=3)
    doc = pymupdf.open()
    gap = 18.0
    col_w = (PAGE_W - 2 * MARGIN - (columns - 1) * gap) / columns
    queue = list(paras)
    while queue:
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        for c in range(columns):
            x, y = MARGIN + c * (col_w + gap), MARGIN
            while queue:
                lines = wrap(queue[0], col_w, fontsize=FONTSIZE)
                if y + LEADING * (len(lines) + 1) > PAGE_H - MARGIN:
                    break
                for line in lines:
                    y += LEADING
                    page.insert_text((x, y), line, fontname=FONT, fontsize=FONTSIZE)
                y += LEADING
                queue.pop(0)
            if not queue:
                break
    path = folder / f"columns{columns}.pdf"
    pages = _save(doc, path)
    return BuiltPdf(f"columns{columns}", path, "\n\n".join(paras), pages=pages)


TOC_ENTRIES = [
    ("1", "Einleitung", 3),
    ("1.1", "Motivation und Zielsetzung", 3),
    ("1.2", "Aufbau der Arbeit", 4),
    ("2", "Grundlagen", 5),
    ("2.1", "Begriffe", 5),
    ("2.2", "Widerspruchsbeweise", 6),
    ("2.3", "Formale Sprachen", 7),
    ("3", "Verwandte Arbeiten", 8),
    ("3.1", "Klassische Ansätze", 8),
    ("3.2", "Neuere Verfahren", 9),
    ("4", "Zusammenfassung", 10),
]


def build_toc(folder: Path, seed: int = 3) -> BuiltPdf:
    """A German table of contents (no English heading words; some entries with leaders, some with a page-number
    column) before the body."""
    rng = random.Random(seed)
    doc = pymupdf.open()
    page = doc.new_page(width=PAGE_W, height=PAGE_H)
    page.insert_text((MARGIN, MARGIN + 10), "Inhaltsverzeichnis", fontname="hebo", fontsize=14)
    y = MARGIN + 40
    furniture = ["Inhaltsverzeichnis"]
    for i, (number, title, page_no) in enumerate(TOC_ENTRIES):
        y += 16
        indent = 0 if "." not in number else 18
        page.insert_text((MARGIN + indent, y), f"{number}  {title}", fontname=FONT, fontsize=FONTSIZE)
        if i % 2:
            width = pymupdf.get_text_length(f"{number}  {title}", FONT, FONTSIZE)
            dots = " ." * int((PAGE_W - 2 * MARGIN - indent - width - 40) / 5)
            page.insert_text((MARGIN + indent + width + 4, y), dots, fontname=FONT, fontsize=FONTSIZE)
        page.insert_text((PAGE_W - MARGIN - 15, y), str(page_no), fontname=FONT, fontsize=FONTSIZE)
        furniture.append(f"{number} {title}")
    paras = paragraphs(rng, 8)
    writer = _Pages(doc)
    for para in paras:
        writer.paragraph(para)
    path = folder / "toc.pdf"
    pages = _save(doc, path)
    return BuiltPdf("toc", path, "\n\n".join(paras), furniture, pages=pages)


INDEX_TERMS = ["Abstract syntax", "Authentication", "Certificate chain", "Cipher suite", "Client hello",
               "Encoding rules", "Extension", "Handshake", "Key exchange", "Message digest", "Negotiation",
               "Object identifier", "Padding", "Record layer", "Session ticket", "Signature", "Transport",
               "Version number", "Widerspruch", "Zertifikat", "Zone file"]  # fmt: skip


def build_index(folder: Path, seed: int = 4) -> BuiltPdf:
    """Body pages, then a two-column back-of-book index (terms with page-number lists)."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 8)
    doc = pymupdf.open()
    writer = _Pages(doc)
    for para in paras:
        writer.paragraph(para)
    page = doc.new_page(width=PAGE_W, height=PAGE_H)
    page.insert_text((MARGIN, MARGIN + 10), "Index", fontname="hebo", fontsize=14)
    furniture = []
    for i, term in enumerate(INDEX_TERMS):
        refs = ", ".join(str(n) for n in sorted(rng.sample(range(1, 40), rng.randint(1, 4))))
        column, row = divmod(i, 11)
        page.insert_text((MARGIN + column * 240, MARGIN + 40 + row * 15), f"{term}, {refs}", fontname=FONT,
                         fontsize=FONTSIZE)  # fmt: skip
        furniture.append(f"{term}, {refs}")
    path = folder / "index.pdf"
    pages = _save(doc, path)
    return BuiltPdf("index", path, "\n\n".join(paras), furniture, pages=pages)


ASN1_BLOCK = """\
Example-Module DEFINITIONS AUTOMATIC TAGS ::= BEGIN
  RouteInfo ::= SEQUENCE {
    routeId     OCTET STRING (SIZE (13)),  -- route identifier
    distance    INTEGER (0..255),          -- hop count
    flags       BIT STRING { valid(0), stale(1) }
  }
END"""
ABNF_BLOCK = """\
message     = start-line *( header-field CRLF ) CRLF
start-line  = request-line / status-line
token       = 1*tchar
tchar       = "!" / "#" / "$" / "%" / "&" / "'" / ALPHA"""


def build_code(folder: Path, seed: int = 5, monospace_body: bool = False) -> BuiltPdf:
    """Prose with an ASN.1 module and an ABNF block between paragraphs, all indented like an RFC; with
    `monospace_body` the prose is set in Courier too (RFC text PDFs), so the font cannot tell code from prose."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 4, per=3)
    doc = pymupdf.open()
    writer = _Pages(doc)
    body_font = "cour" if monospace_body else FONT
    blocks = [ASN1_BLOCK, ABNF_BLOCK]
    parts = []
    for i, para in enumerate(paras):
        width = PAGE_W - 2 * MARGIN - 30
        for line in wrap(para, width if not monospace_body else width * 0.75):
            writer.line(line, x=MARGIN + 20, font=body_font)
        writer.line("")
        parts.append(para)
        if i < len(blocks):
            for line in blocks[i].split("\n"):
                indent = len(line) - len(line.lstrip(" "))
                writer.line(line.strip(), x=MARGIN + 40 + indent * 6.0, font="cour", fontsize=10)
            writer.line("")
            parts.append(blocks[i])
    path = folder / ("code_mono.pdf" if monospace_body else "code.pdf")
    pages = _save(doc, path)
    return BuiltPdf("code_mono" if monospace_body else "code", path, "\n\n".join(parts), blocks=blocks, pages=pages)


TABLE_ROWS = [
    ["Field", "Length", "Description"],
    ["RouteId", "13 octets", "Route identifier with D=0"],
    ["Distance", "1 octet", "Hop count to the origin"],
    ["Flags", "2 octets", "Validity and staleness bits"],
    ["Reserved", "4 octets", "Must be zero on transmission"],
]


def build_table(folder: Path, seed: int = 6) -> BuiltPdf:
    """Prose, a ruled table (grid lines drawn, cells filled), then more prose."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 4, per=3)
    doc = pymupdf.open()
    writer = _Pages(doc)
    for para in paras[:2]:
        writer.paragraph(para)
    page = writer.page
    widths = [110.0, 90.0, 230.0]
    x0, y0, row_h = MARGIN, writer.y + 10, 20.0
    for r, row in enumerate(TABLE_ROWS):
        x = x0
        for c, cell in enumerate(row):
            rect = pymupdf.Rect(x, y0 + r * row_h, x + widths[c], y0 + (r + 1) * row_h)
            page.draw_rect(rect, color=(0, 0, 0), width=0.7)
            page.insert_text((x + 4, rect.y1 - 6), cell, fontname="hebo" if r == 0 else FONT, fontsize=FONTSIZE)
            x += widths[c]
    writer.y = y0 + len(TABLE_ROWS) * row_h + 10
    for para in paras[2:]:
        writer.paragraph(para)
    path = folder / "table.pdf"
    pages = _save(doc, path)
    body = "\n\n".join([*paras[:2], *(" ".join(row) for row in TABLE_ROWS), *paras[2:]])
    return BuiltPdf("table", path, body, tables=[TABLE_ROWS], pages=pages)


def build_hyphenation(folder: Path, seed: int = 7) -> BuiltPdf:
    """Narrow justified-looking paragraphs whose long words are broken at line ends; each long word also occurs
    unbroken elsewhere (the document's own vocabulary is the evidence), and en-dash ranges break after the dash."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 10, per=4)
    paras.append("The registry lists the ranges 2018\u201323\u201351 and 1990\u20131999 for each organization.")
    doc = pymupdf.open()
    writer = _Pages(doc)
    for para in paras[:-1]:
        writer.paragraph(para, hyphenate=True, width=250)
    writer.line("The registry lists the ranges 2018\u2013")
    writer.line("23\u201351 and 1990\u20131999 for each organization.")
    path = folder / "hyphenation.pdf"
    pages = _save(doc, path)
    return BuiltPdf("hyphenation", path, "\n\n".join(paras), ["2018\u2013 23"], pages=pages)


def _image_page(doc: pymupdf.Document) -> None:
    """A page that shows text as an image only (no text layer): a scan."""
    scratch = pymupdf.open()
    src = scratch.new_page(width=PAGE_W, height=PAGE_H)
    src.insert_text((MARGIN, 200), "This page was scanned and has no text layer.", fontname=FONT, fontsize=14)
    pix = src.get_pixmap(dpi=50)
    scratch.close()
    page = doc.new_page(width=PAGE_W, height=PAGE_H)
    page.insert_image(page.rect, pixmap=pix)


def build_no_text_page(folder: Path, seed: int = 8) -> BuiltPdf:
    """Text pages with one image-only page in the middle: the document is partial, the page has no text."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 6)
    doc = pymupdf.open()
    writer = _Pages(doc)
    for para in paras[:3]:
        writer.paragraph(para)
    _image_page(doc)
    writer.page = None
    for para in paras[3:]:
        writer.paragraph(para)
    path = folder / "no_text_page.pdf"
    pages = _save(doc, path)
    return BuiltPdf("no_text_page", path, "\n\n".join(paras), expect_status="partial", pages=pages)


def build_scan(folder: Path) -> BuiltPdf:
    """Only image pages: nothing to extract without OCR."""
    doc = pymupdf.open()
    for _ in range(3):
        _image_page(doc)
    path = folder / "scan.pdf"
    pages = _save(doc, path)
    return BuiltPdf("scan", path, "", expect_status="no_text", pages=pages)


def build_no_unicode_map(folder: Path, seed: int = 9) -> BuiltPdf:
    """Text in an embedded font whose ToUnicode map is removed: the glyphs show, the text layer is junk."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 4)
    doc = pymupdf.open()
    font_file = pymupdf.Font("cour").buffer  # an embedded (not base-14) font, written as CID glyphs
    for para in paras:
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        page.insert_font(fontname="F0", fontbuffer=font_file)
        y = MARGIN
        for line in wrap(para, PAGE_W - 2 * MARGIN - 80):
            y += LEADING
            page.insert_text((MARGIN, y), line, fontname="F0", fontsize=FONTSIZE)
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "ToUnicode")[0] != "null":
            doc.xref_set_key(xref, "ToUnicode", "null")
    path = folder / "no_unicode_map.pdf"
    pages = _save(doc, path)
    return BuiltPdf("no_unicode_map", path, "", expect_status="unreadable", pages=pages)


def build_junk_text(folder: Path, seed: int = 10) -> BuiltPdf:
    """A text layer of symbol salad (what a broken font encoding yields): every page is garbage."""
    rng = random.Random(seed)
    doc = pymupdf.open()
    alphabet = '"7+%-#@!*&^()=;:<>/\\|~`'
    for _ in range(2):
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        for row in range(30):
            line = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 7))) for _ in range(10))
            page.insert_text((MARGIN, MARGIN + row * LEADING), line, fontname=FONT, fontsize=FONTSIZE)
    path = folder / "junk_text.pdf"
    pages = _save(doc, path)
    return BuiltPdf("junk_text", path, "", expect_status="unreadable", pages=pages)


# The legal front matter ETSI prints in every deliverable (from ETSI TS 103 645 V2.1.1 and its siblings).
ETSI_HEAD = "ETSI TS 103 645 V2.1.1 (2020-06)"
ETSI_LEGAL_PAGE = [
    "Reference", "RTS/CYBER-0050", "Keywords", "cybersecurity, IoT, privacy", "", "ETSI",
    "650 Route des Lucioles", "F-06921 Sophia Antipolis Cedex - FRANCE", "",
    "Tel.: +33 4 92 94 42 00   Fax: +33 4 93 65 47 16", "", "Siret N\u00b0 348 623 562 00017 - APE 7112B",
    "Association \u00e0 but non lucratif enregistr\u00e9e \u00e0 la",
    "Sous-Pr\u00e9fecture de Grasse (06) N\u00b0 w061004871", "", "Important notice", "",
    "The present document can be downloaded from:", "http://www.etsi.org/standards-search", "",
    "The present document may be made available in electronic versions and/or in print. The content of any",
    "electronic and/or print versions of the present document shall not be modified without the prior written",
    "authorization of ETSI. In case of any existing or perceived difference in contents between such versions",
    "and/or in print, the prevailing version of an ETSI deliverable is the one made publicly available in PDF",
    "format at www.etsi.org/deliver.", "",
    "Users of the present document should be aware that the document may be subject to revision or change of",
    "status. Information on the current status of this and other ETSI documents is available at",
    "https://portal.etsi.org/TB/ETSIDeliverableStatus.aspx", "",
    "If you find errors in the present document, please send your comment to one of the following services:",
    "https://portal.etsi.org/People/CommiteeSupportStaff.aspx", "", "Copyright Notification", "",
    "No part may be reproduced or utilized in any form or by any means, electronic or mechanical, including",
    "photocopying and microfilm except as authorized by written permission of ETSI.",
    "The content of the PDF version shall not be modified without the written authorization of ETSI.",
    "The copyright and the foregoing restriction extend to reproduction in all media.", "",
    "\u00a9 ETSI 2020.", "All rights reserved.", "",
    "DECT\u2122, PLUGTESTS\u2122, UMTS\u2122 and the ETSI logo are trademarks of ETSI registered for the benefit",
    "of its Members.",
    "3GPP\u2122 and LTE\u2122 are trademarks of ETSI registered for the benefit of its Members and of the 3GPP",
    "Organizational Partners.",
    "oneM2M\u2122 logo is a trademark of ETSI registered for the benefit of its Members and of the oneM2M Partners.",
    "GSM\u00ae and the GSM logo are trademarks registered and owned by the GSM Association.",
]  # fmt: skip
ETSI_IPR = [
    "Intellectual Property Rights", "", "Essential patents", "",
    "IPRs essential or potentially essential to normative deliverables may have been declared to ETSI. The",
    "information pertaining to these essential IPRs, if any, is publicly available for ETSI members and",
    "non-members, and can be found in ETSI SR 000 314: \"Intellectual Property Rights (IPRs); Essential, or",
    "potentially Essential, IPRs notified to ETSI in respect of ETSI standards\", which is available from the ETSI",
    "Secretariat. Latest updates are available on the ETSI Web server (https://ipr.etsi.org/).", "",
    "Pursuant to the ETSI IPR Policy, no investigation, including IPR searches, has been carried out by ETSI. No",
    "guarantee can be given as to the existence of other IPRs not referenced in ETSI SR 000 314 (or the updates",
    "on the ETSI Web server) which are, or may be, or may become, essential to the present document.", "",
    "Trademarks", "",
    "The present document may include trademarks and/or tradenames which are asserted and/or registered by their",
    "owners. ETSI claims no ownership of these except for any which are indicated as being the property of ETSI,",
    "and conveys no right to use or reproduce any trademark and/or tradename. Mention of those trademarks in the",
    "present document does not constitute an endorsement by ETSI of products, services or organizations",
    "associated with those trademarks.", "",
]  # fmt: skip
ETSI_FOREWORD = (
    "This Technical Specification (TS) has been produced by ETSI Technical Committee Cyber Security (CYBER)."
)
ETSI_MODAL = [
    "Modal verbs terminology", "",
    "In the present document \"shall\", \"shall not\", \"should\", \"should not\", \"may\", \"need not\", \"will\",",
    "\"will not\", \"can\" and \"cannot\" are to be interpreted as described in clause 3.2 of the ETSI Drafting Rules",
    "(Verbal forms for the expression of provisions).", "",
    "\"must\" and \"must not\" are NOT allowed in ETSI deliverables except when used in direct citation.", "",
]  # fmt: skip
ETSI_HISTORY = [("V1.1.1", "February 2019", "Publication"), ("V2.0.0", "May 2020", "EN Approval Procedure"),
                ("V2.1.1", "June 2020", "Publication")]  # fmt: skip


def build_etsi(folder: Path, seed: int = 11) -> BuiltPdf:
    """An ETSI deliverable: the legal page (address, registration, notices, copyright, trademarks), the IPR and
    trademark notices and modal-verbs text around a real foreword, body clauses, and the closing "History" page of
    version rows, under ETSI's running head and page numbers. Only the foreword and the clauses are content."""
    rng = random.Random(seed)
    paras = paragraphs(rng, 14)
    doc = pymupdf.open()

    def decorate(page: pymupdf.Page, number: int) -> None:
        page.insert_text((MARGIN, 45), ETSI_HEAD, fontname="hebo", fontsize=9)
        page.insert_text((PAGE_W / 2 - 10, PAGE_H - 40), "ETSI", fontname=FONT, fontsize=9)
        page.insert_text((PAGE_W - MARGIN - 10, 45), str(number), fontname=FONT, fontsize=9)

    writer = _Pages(doc, decorate)
    font = pymupdf.Font("helv")  # a TextWriter font maps \u2122 and \u00ae, as ETSI's PDFs do; insert_text loses them
    page = writer.new_page()
    for i, line in enumerate(ETSI_LEGAL_PAGE):  # one page, as ETSI prints it
        if line:
            text = pymupdf.TextWriter(page.rect)
            text.append((MARGIN, MARGIN + 11 * i), line, font=font, fontsize=9)
            text.write_text(page)
    writer.page = None
    for line in ETSI_IPR:
        writer.line(line)
    writer.line("Foreword", font="hebo")
    writer.line("")
    writer.line(ETSI_FOREWORD)
    writer.line("")
    for line in ETSI_MODAL:
        writer.line(line)
    writer.line("Introduction", font="hebo")
    writer.line("")
    for para in paras:
        writer.paragraph(para)
    writer.page = None
    writer.line("History", font="hebo", fontsize=12)
    writer.line("")
    writer.line("Document history", font="hebo")
    for version, date, status in ETSI_HISTORY:
        writer.y += 6
        writer.line(version)
        writer.page.insert_text((MARGIN + 90, writer.y), date, fontname=FONT, fontsize=FONTSIZE)
        writer.page.insert_text((MARGIN + 220, writer.y), status, fontname=FONT, fontsize=FONTSIZE)
    path = folder / "etsi.pdf"
    pages = _save(doc, path)
    furniture = [
        ETSI_HEAD, "RTS/CYBER-0050", "Route des Lucioles", "Siret", "Sous-Pr\u00e9fecture", "Important notice",
        "can be downloaded from", "made available in electronic versions", "should be aware",
        "If you find errors", "Copyright Notification", "No part may be reproduced", "foregoing restriction",
        "\u00a9 ETSI", "trademarks of ETSI", "GSM Association", "Intellectual Property Rights", "Essential patents",
        "IPRs essential", "Pursuant to the ETSI IPR Policy", "may include trademarks", "Modal verbs terminology",
        "ETSI Drafting Rules", "NOT allowed in ETSI deliverables", "Document history", "V1.1.1", "EN Approval",
    ]  # fmt: skip
    body = "\n\n".join(["Foreword", ETSI_FOREWORD, "Introduction", *paras])
    return BuiltPdf("etsi", path, body, furniture, pages=pages)


BUILDERS: dict[str, Callable[[Path], BuiltPdf]] = {
    "running_heads": build_running_heads,
    "columns2": lambda folder: build_columns(folder, 2),
    "columns3": lambda folder: build_columns(folder, 3),
    "toc": build_toc,
    "index": build_index,
    "code": build_code,
    "code_mono": lambda folder: build_code(folder, monospace_body=True),
    "table": build_table,
    "hyphenation": build_hyphenation,
    "no_text_page": build_no_text_page,
    "scan": build_scan,
    "no_unicode_map": build_no_unicode_map,
    "junk_text": build_junk_text,
    "etsi": build_etsi,
}


def build_all(folder: Path) -> dict[str, BuiltPdf]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: build(folder) for name, build in BUILDERS.items()}


# ---- scores -----------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _f1(found: Counter, truth: Counter) -> float:
    if not found and not truth:
        return 1.0
    overlap = sum((found & truth).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(found.values()), overlap / sum(truth.values())
    return 2 * precision * recall / (precision + recall)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def word_f1(found: str, truth: str) -> float:
    """F1 of the multisets of lowercase words."""
    return _f1(Counter(words(found)), Counter(words(truth)))


def bigram_f1(found: str, truth: str) -> float:
    """F1 of the multisets of word bigrams: order and joins matter (a furniture line inside a sentence costs)."""
    a, b = words(found), words(truth)
    return _f1(Counter(zip(a, a[1:], strict=False)), Counter(zip(b, b[1:], strict=False)))


def furniture_left(found: str, built: BuiltPdf) -> int:
    """How many of the document's furniture strings survive (whitespace-insensitive)."""
    flat = re.sub(r"\s+", " ", found)
    return sum(1 for item in built.furniture if re.sub(r"\s+", " ", item) in flat)


def _block_lines(block: str) -> list[str]:
    return [re.sub(r"\s+", " ", line.strip()) for line in block.split("\n") if line.strip()]


def block_intact(found: str, block: str) -> bool:
    """Whether the block's lines occur in order as consecutive lines of `found` (indentation may shift)."""
    want = _block_lines(block)
    have = [re.sub(r"\s+", " ", line.strip()) for line in found.split("\n")]
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def block_indented(found: str, block: str) -> bool:
    """Whether relative indentation survived: the lines match with their leading spaces normalised to the first."""
    want = [line for line in block.split("\n") if line.strip()]
    base = min(len(w) - len(w.lstrip()) for w in want)
    rel = [(len(w) - len(w.lstrip()) - base) > 0 for w in want]
    have = found.split("\n")
    first = _block_lines(block)[0]
    for i, line in enumerate(have):
        if re.sub(r"\s+", " ", line.strip()) == first and i + len(want) <= len(have):
            window = have[i : i + len(want)]
            b = len(window[0]) - len(window[0].lstrip())
            if [(len(w) - len(w.lstrip()) - b) > 0 for w in window] == rel:
                return True
    return False


def table_rows_kept(found: str, table: list[list[str]]) -> float:
    """Share of table rows whose cells appear, in order, on one line of `found`."""
    lines = found.split("\n")
    hits = 0
    for row in table:
        pattern = re.compile(r".*?".join(re.escape(cell) for cell in row))
        hits += any(pattern.search(line) for line in lines)
    return hits / len(table)
