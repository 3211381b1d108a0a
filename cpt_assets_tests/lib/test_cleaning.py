"""Cleaning rules on small literal inputs, then the whole cleaner on real NIST and IETF PDFs."""

from __future__ import annotations

import pymupdf
import pytest

from cpt_assets.lib.cleaning import (
    DOCUMENT_SEPARATOR,
    CleaningConfig,
    QualityConfig,
    clean_document,
    furniture_key,
    is_boilerplate,
    is_page_number,
    is_rule_line,
    is_toc_line,
    normalize_chars,
    quality_filter,
    remove_dotted_leaders,
    strip_special_tokens,
)

# ---- characters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x00b\x07c\x1bd", "abcd"),  # C0 controls removed
        ("x\x84y\x83z", "xyz"),  # C1 controls removed
        ("col1\tcol2", "col1 col2"),  # tab -> space
        ("\u201cquoted\u201d and \u2018single\u2019", "\"quoted\" and 'single'"),  # curly -> straight
        ("a \u2264 b \u2265 c \u00b1 d \u00d7 e \u2192 f \u00a7 3 \u00b5s", "a ≤ b ≥ c ± d × e → f § 3 µs"),  # kept
        ("caf\u00e9 Kne\u017eevi\u0107 na\u00efve", "café Knežević naïve"),  # accented letters kept
        ("e\u0301", "\u00e9"),  # combining accent composed (NFC)
        ("\ufb01le \ufb00ect", "file ffect"),  # ligatures folded
        ("\U0001d465 + \U0001d466", "x + y"),  # math italic letters folded
        ("a\u00a0b\u2009c", "a b c"),  # no-break and thin spaces -> space
        ("zero\u200bwidth\ufeff", "zerowidth"),  # zero-width characters removed
        ("secu\u00ad\nrity", "secu-\nrity"),  # a soft hyphen ending a line marks a word break
        ("\uf0b7 item one", "\u2022 item one"),  # Symbol-font bullet (private use) -> bullet
        ("text\ue123more", "textmore"),  # other private-use glyphs removed
        ("a\u2010b\u2011c", "a-b-c"),  # Unicode hyphens -> ASCII hyphen
        ("wait\u2026", "wait..."),
        ("page\fbreak\r\nnext", "page\nbreak\nnext"),  # form feed and CRLF -> newline
    ],
)
def test_normalize_chars(raw: str, expected: str) -> None:
    assert normalize_chars(raw)[0] == expected


def test_normalize_chars_counts_deleted_controls() -> None:
    _, edits = normalize_chars("a\x00b\x01c<|endoftext|>")
    assert edits == {"special_token": 1, "control_char": 2}


@pytest.mark.parametrize(
    ("raw", "expected", "removed"),
    [
        ("end<|endoftext|>start", "endstart", 1),
        ("<|im_start|>user<|im_end|>", "user", 2),
        ("<|endo<|im_end|>ftext|>", "", 2),  # removing the inner token must not leave a new outer one
        ("<repo_name>x<file_sep>", "x", 2),
        ("<|custom_token|>kept", "kept", 1),  # any <|...|> string, not only SmolLM2's
        ("a < b and c > d, x <= y", "a < b and c > d, x <= y", 0),  # comparisons are not tokens
        ("<s>in XML</s>", "<s>in XML</s>", 0),
    ],
)
def test_strip_special_tokens(raw: str, expected: str, removed: int) -> None:
    assert strip_special_tokens(raw) == (expected, removed)


def test_fullwidth_special_token_is_removed_after_folding() -> None:
    text, _ = normalize_chars("x\uff1c|endoftext|\uff1ey")  # fullwidth < and > fold to ASCII
    assert "<|endoftext|>" not in text
    assert text == "xy"


# ---- line predicates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "keep"),
    [
        ("12", False),
        ("   7   ", False),
        ("Page 3", False),
        ("PAGE iv", False),
        ("[Page 12]", False),
        ("iv", False),
        ("A-1", False),
        ("C - 1", False),
        ("ES-2", False),
        ("3 of 40", False),
        ("- 7 -", False),
        ("The 12 rules", True),
        ("Section 3", True),
        ("RFC 8446", True),
        ("1. Introduction", True),
    ],
)
def test_is_page_number(line: str, keep: bool) -> None:
    assert is_page_number(line)[0] is keep
    if not keep:
        assert is_page_number(line)[1] == "page_number"


@pytest.mark.parametrize(
    ("line", "keep"),
    [
        ("   1. Introduction ....................................................6", False),
        ("      4.2.1. Supported Versions .................................39", False),
        ("APPENDIX I  RISK DETERMINATION...................................................................I-1", False),
        ("Executive Summary ..................................................... iv", False),
        ("   1.  Introduction . . . . . . . . . . . . . . . . . . . . . . . .   4", False),
        ("  1. Introduction                                                                     5", False),
        ("     4.1. Insufficient Redirection URI Validation                                          13", False),
        ("The server sends 4 bytes.", True),
        ("See Section 4.2 for details.", True),
        ("Wait... then continue", True),
        ("...", True),
        ("1.2 Scope of this document and its relation to the others", True),
    ],
)
def test_is_toc_line(line: str, keep: bool) -> None:
    assert is_toc_line(line)[0] is keep


@pytest.mark.parametrize(
    ("line", "keep"),
    [
        ("________________________________________________", False),
        ("-----------", False),
        ("===========", False),
        ("+-----------+-------------+", True),  # an ASCII table border is part of the table
        ("- item", True),
        ("---", True),
    ],
)
def test_is_rule_line(line: str, keep: bool) -> None:
    assert is_rule_line(line)[0] is keep


@pytest.mark.parametrize(
    ("line", "expected", "count"),
    [
        ("Value ........ 5", "Value 5", 1),
        ("Value . . . . . 5", "Value 5", 1),
        ("wait... what", "wait... what", 0),
        ("a.b.c.d", "a.b.c.d", 0),
    ],
)
def test_remove_dotted_leaders(line: str, expected: str, count: int) -> None:
    assert remove_dotted_leaders(line) == (expected, count)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("RFC 8446                           TLS                       August 2018", "RFC 8446 TLS August 2018", True),
        ("Rescorla   Standards Track   [Page 30]", "Rescorla Standards Track [Page 4]", True),
        ("PAGE ii", "PAGE xiv", True),
        (
            "NIST SP 800-190   APPLICATION CONTAINER SECURITY GUIDE",
            "nist sp 800-53 application container security guide",
            True,
        ),
        ("Introduction", "Conclusion", False),
    ],
)
def test_furniture_key(a: str, b: str, same: bool) -> None:
    assert (furniture_key(a) == furniture_key(b)) is same


@pytest.mark.parametrize(
    ("paragraph", "keep"),
    [
        ("Status of This Memo", False),
        ("This document is subject to BCP 78 and the IETF Trust's Legal\nProvisions Relating to IETF Documents", False),
        ("Copyright (c) 2018 IETF Trust and the persons identified as the document authors.", False),
        ("Certain commercial entities, equipment, or materials may be identified in this document", False),
        ("Reports on Computer Systems Technology", False),
        (
            "National Institute of Standards and Technology Special Publication 800-190\nNatl. Inst. Stand. Technol.",
            False,
        ),
        ("Comments on this publication may be submitted to:", False),
        ("Siret N\u00b0 348 623 562 00017 - APE 7112B", False),
        ("Copyright Notification", False),
        ("No part may be reproduced or utilized in any form or by any means, electronic or mechanical,", False),
        ("\u00a9 ETSI 2020.\nAll rights reserved.", False),
        ("GSM\u00ae and the GSM logo are trademarks registered and owned by the GSM Association.", False),
        ("Pursuant to the ETSI IPR Policy, no investigation, including IPR searches, has been carried out", False),
        ("Modal verbs terminology", False),
        ("The terminal shall support the copyright notification procedure of clause 5.", True),
        ("Trademarks registered by the operator are listed in the directory.", True),
        ("The server MUST abort the handshake with an illegal_parameter alert.", True),
        ("This document specifies version 1.3 of the Transport Layer Security (TLS) protocol.", True),
        ("The status of this key is recorded in the memo field.", True),
    ],
)
def test_is_boilerplate(paragraph: str, keep: bool) -> None:
    assert is_boilerplate(paragraph)[0] is keep


PROSE = (
    "The client sends a ClientHello message and the server responds with a ServerHello that selects the "
    "version and the cipher suite to be used for the rest of the connection."
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (PROSE, ""),
        ("struct {\n    uint16 number;\n    opaque string<0..10>;\n} V1;", ""),  # protocol structs are domain text
        ("too short", "too_few_words"),
        ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9eyJpc3MiOiJqb2UiLA0KICJleHAiOjEz " * 6, "word_length"),
        ("[123, 34, 105, 115, 115, 34, 58, 34, 106, 111, 101, 34, 44, 13, 10, 32, 34]", "numeric_words"),
        ("# # # # heading ### with ... many ... symbols # here", "symbol_ratio"),
    ],
)
def test_quality_filter(text: str, reason: str) -> None:
    keep, got = quality_filter(text, QualityConfig())
    assert (keep, got) == (reason == "", reason)


def test_quality_filter_stop_words_when_enabled() -> None:
    config = QualityConfig(min_stop_words=2)
    assert quality_filter("Alpha beta gamma delta epsilon zeta eta theta", config) == (False, "few_stop_words")
    assert quality_filter(PROSE, config) == (True, "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"edge_lines": 0}, "edge_lines must be >= 1, got 0"),
        ({"repeated_line_share": 1.5}, "repeated_line_share must be in (0, 1], got 1.5"),
        ({"repeated_line_min_pages": 1}, "repeated_line_min_pages must be >= 2, got 1"),
        ({"repeated_line_min_pages": 5, "repeated_line_max_pages": 4}, "repeated_line_max_pages must be >= "),
        ({"toc_page_share": 0.0}, "toc_page_share must be in (0, 1], got 0.0"),
        ({"boilerplate_page_keeps_prose": 0}, "boilerplate_page_keeps_prose must be >= 1, got 0"),
    ],
)
def test_cleaning_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        CleaningConfig(**kwargs)


# ---- the document cleaner on constructed pages ------------------------------------------------------------------

BODY = [
    "   The handshake protocol is used to negotiate the security parameters of\n"
    "   a connection. Handshake messages are supplied to the record layer.\n",
    "   The record protocol takes messages to be transmitted, fragments the\n"
    "   data into manageable blocks, protects the records and transmits them.\n",
    "   Implementations MUST NOT send zero-length fragments of handshake\n"
    "   types, even if those fragments contain padding.\n",
    "   Alert messages convey a description of the alert and a legacy field\n"
    "   that conveyed the severity level of the message in earlier versions.\n",
]


def rfc_pages(body: list[str]) -> list[str]:
    return [
        f"RFC 9999                    Example Protocol                    May 2020\n\n{text}\n\n"
        f"Doe                          Standards Track                  [Page {i + 1}]\n"
        for i, text in enumerate(body)
    ]


def test_running_headers_footers_and_page_numbers_removed() -> None:
    result = clean_document(rfc_pages(BODY))
    assert "RFC 9999" not in result.text
    assert "[Page" not in result.text
    assert "Standards Track" not in result.text
    assert result.removed_lines["header_footer"] == 8
    assert "Implementations MUST NOT send zero-length fragments" in result.text
    assert result.pages_in == result.pages_kept == 4


def test_lone_page_numbers_at_page_edges_removed() -> None:
    bodies = ["Keys are generated first.", "Then the server signs them.", "Finally the client verifies."]
    pages = [f"{i + 1}\n{body}\n{i + 1}\n" for i, body in enumerate(bodies)]
    result = clean_document(pages)
    assert result.removed_lines == {"page_number": 6}
    assert all(body in result.text for body in bodies)


def test_reflow_joins_wrapped_lines_and_keeps_code() -> None:
    page = (
        "   The handshake protocol is used to negotiate the security parameters\n"
        "   of a connection between the two peers.\n"
        "\n"
        "   Structure of this message:\n"
        "\n"
        "      struct {\n"
        "          ProtocolVersion legacy_version = 0x0303;    /* TLS v1.2 */\n"
        "          Random random;\n"
        "      } ServerHello;\n"
    )
    text = clean_document([page]).text
    assert "parameters of a connection between the two peers." in text
    assert (
        "struct {\n    ProtocolVersion legacy_version = 0x0303;    /* TLS v1.2 */\n    Random random;\n} ServerHello;"
        in text
    )


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        # "security" is spelled elsewhere: the break is typesetting
        ("This is about the security of the system and how we keep our data secu-\nrity protected always.",
         "data security protected"),
        # a compound continues: the hyphen stays
        ("Encryption protects the connection and must be provided end-to-\nend between all of the peers here.",
         "end-to-end between"),
        # hyphenated elsewhere: the hyphen stays
        ("Flaws in the pattern-matching logic were found in many deployed servers, and pattern-\nmatching is hard.",
         "pattern-matching is hard"),
        # no evidence: the hyphen stays (this corpus breaks lines at real hyphens far more often)
        ("The attack was demonstrated against a number of implementations using a lattice-\nbased approach here.",
         "lattice-based approach"),
        # numbers: joined without a space
        ("The controls are listed in the catalog that NIST publishes as NIST SP 800-\n53 for federal systems today.",
         "NIST SP 800-53 for"),
    ],
)  # fmt: skip
def test_dehyphenation(page: str, expected: str) -> None:
    assert expected in clean_document([page]).text


def test_dehyphenation_can_join_unknown_words() -> None:
    page = "The attack was demonstrated against a number of implementations using a lattice-\nbased approach here."
    config = CleaningConfig(join_unknown_hyphenation=True)
    assert "latticebased approach" in clean_document([page], config).text


def test_dehyphenation_uses_vocabulary_text() -> None:
    page = "The system uses a novel tech-\nnique that nobody described before in any document of this source."
    assert "technique" in clean_document([page], vocabulary_text="A technique is a method.").text


def test_toc_page_dropped() -> None:
    toc = (
        "Table of Contents\n"
        "1. Introduction ....................................... 1\n"
        "   1.1 Purpose ........................................ 2\n"
        "   1.2 Scope .......................................... 3\n"
        "2. Background ......................................... 5\n"
    )
    body = "1. Introduction\nThis guide explains how to conduct risk assessments for federal information systems.\n"
    result = clean_document([toc, body])
    assert result.dropped_pages == {"toc": 1}
    assert "Purpose" not in result.text
    assert "This guide explains how to conduct risk assessments" in result.text


def test_boilerplate_page_dropped_and_paragraph_removed() -> None:
    legal = (
        "Reports on Computer Systems Technology\n\n"
        "The Information Technology Laboratory (ITL) at the National Institute of Standards and Technology (NIST)\n"
        "promotes the U.S. economy and public welfare by providing technical leadership.\n"
    )
    mixed = (
        "Abstract\n\nThis publication explains container security for operators of container platforms.\n\n"
        "Certain commercial entities, equipment, or materials may be identified in this document in order to\n"
        "describe an experimental procedure adequately.\n"
    )
    result = clean_document([legal, mixed])
    assert result.dropped_pages == {"boilerplate": 1}
    assert result.removed_lines["boilerplate"] == 2
    assert "Certain commercial entities" not in result.text
    assert "This publication explains container security" in result.text


def test_mostly_boilerplate_page_keeps_its_prose() -> None:
    """A legal page goes whole; one that also holds a clause of prose loses only its notices (ETSI's IPR page)."""
    notices = (
        "Intellectual Property Rights\n\nEssential patents\n\n"
        "IPRs essential or potentially essential to normative deliverables may have been declared to ETSI. The\n"
        "information pertaining to these essential IPRs, if any, is publicly available for ETSI members.\n\n"
        "Pursuant to the ETSI IPR Policy, no investigation, including IPR searches, has been carried out by ETSI.\n"
        "No guarantee can be given as to the existence of other IPRs not referenced in ETSI SR 000 314.\n\n"
        "Trademarks\n\n"
        "The present document may include trademarks and/or tradenames which are asserted and/or registered by\n"
        "their owners. ETSI claims no ownership of these except for any which are indicated as being the property\n"
        "of ETSI, and conveys no right to use or reproduce any trademark and/or tradename.\n\nKeywords IoT\n"
    )
    assert clean_document([notices]).dropped_pages == {"boilerplate": 1}
    clause = " ".join([PROSE] * 2)
    result = clean_document([notices + "\nIntroduction\n\n" + clause + "\n"])
    assert result.dropped_pages == {}
    assert clause in result.text and "Introduction" in result.text
    assert "IPR" not in result.text and "Trademarks" not in result.text and "tradenames" not in result.text


def test_boilerplate_heading_is_not_glued_to_the_paragraph_before() -> None:
    """Re-flow would join a short line after a full one ("...the present document." + "Trademarks"); a boilerplate
    heading stands alone, so the heading goes and the paragraph before it stays."""
    wide = "The requirements of this clause apply to every device class listed in the scope of the present document,"
    page = f"{wide}\nwithout exception and in every deployment.\nCopyright Notification\n{wide}\nas stated.\n"
    result = clean_document([page])
    assert "Copyright Notification" not in result.text
    assert result.text.count("The requirements of this clause") == 2


HISTORY_ROWS = [
    "V1.1.1 February 2019 Publication",
    "V2.0.0 May 2020 EN Approval Procedure",
    "V2.1.1 June 2020 Publication",
]


@pytest.mark.parametrize(
    "lines",
    [
        ["History", "Document history", *HISTORY_ROWS],
        ["Document history", "| V1.1.1 | February 2019 | Publication |", "| V1.2.1 | 2021-03 | Publication |"],
        ["History", "V1.1.1", "February 2019", "Publication", "V2.1.1", "June 2020", "Publication"],  # a line a cell
    ],
)
def test_document_history_page_dropped(lines: list[str]) -> None:
    result = clean_document([PROSE, "\n".join(lines)])
    assert result.dropped_pages == {"document_history": 1}
    assert "V1.1.1" not in result.text and PROSE in result.text


@pytest.mark.parametrize(
    "lines",
    [  # a clause called History, in prose; version rows without the heading
        ["History", "The protocol was first published in 2019 as version 1.1.1 and revised twice since then by the "
         "working group, which moved the registry to IANA in 2021 after a long discussion of the alternatives."],
        ["Releases", *HISTORY_ROWS],
        ["History", "Version 2 of the protocol added session resumption in 2020."],
    ],
)  # fmt: skip
def test_history_without_version_rows_is_kept(lines: list[str]) -> None:
    result = clean_document(["\n".join(lines)])
    assert result.dropped_pages == {}
    assert lines[1].split()[0] in result.text


def test_etsi_front_matter_and_history_removed(built_text) -> None:
    from cpt_assets_tests.pdf_builders import ETSI_FOREWORD, furniture_left

    built, text = built_text["etsi"]
    assert furniture_left(text, built) == 0
    assert text.startswith("Foreword\n\n" + ETSI_FOREWORD)


def test_draft_line_numbers_removed() -> None:
    lines = [f"{100 + i}\nLine {i} of the draft text continues the discussion of threat models here" for i in range(30)]
    result = clean_document(["\n".join(lines)])
    assert result.removed_lines["line_number"] == 30
    assert "100" not in result.text
    assert "Line 0 of the draft text" in result.text


def test_margin_stamp_removed() -> None:
    bodies = ["Containers share a kernel.", "Images must be scanned.", "Registries need authentication."]
    stamp = "This publication is available free of charge from: https://doi.org/10.6028/NIST.SP.800-190"
    pages = [  # the stamp mid-page, where only the stamp rule (not the running-header rule) can find it
        "\n".join([f"{body} Point {k}." for k in range(6)] + [stamp] + [f"{body} Point {k}." for k in range(6, 12)])
        for body in bodies
    ]
    result = clean_document(pages)
    assert result.removed_lines["margin_stamp"] == 3
    assert "free of charge" not in result.text
    assert "doi.org/10.6028" not in result.text
    assert all(body in result.text for body in bodies)


def test_special_tokens_never_survive_cleaning() -> None:
    pages = ["The model emits <|endoftext|> at the end.\n<|im_start|>assistant\n", "Next page <|endo<|im_end|>ftext|>."]
    result = clean_document(pages)
    assert DOCUMENT_SEPARATOR not in result.text
    assert "<|" not in result.text
    assert result.edits["special_token"] == 4


def test_empty_pages_dropped() -> None:
    result = clean_document(["", "   \n \n", "Some real content on this page."])
    assert result.dropped_pages == {"empty": 2}
    assert result.text == "Some real content on this page."


# ---- real PDFs ----------------------------------------------------------------------------------------------------


def pdf_pages(path) -> list[str]:
    """Page text as the page-text stage reads it (pymupdf content order)."""
    with pymupdf.open(path) as doc:
        return [page.get_text("text") for page in doc]


def test_real_rfc_loses_furniture_and_keeps_content(corpus_dir) -> None:
    """RFC 2119 (3 pages): running header on pages 2-3, "[Page N]" footers, the status-of-memo boilerplate."""
    result = clean_document(pdf_pages(corpus_dir / "ietf" / "rfc2119.txt.pdf"))
    text = result.text
    assert "[Page" not in text
    assert "RFC Key Words" not in text  # the running header "RFC 2119   RFC Key Words   March 1997"
    assert "Distribution of this memo is unlimited" not in text
    assert 'This phrase, or the phrase "SHALL NOT", mean that the definition is an absolute prohibition' in text
    assert "Imperatives of the type defined in this memo must be used with care and sparingly." in text


def test_real_rfc_with_toc(corpus_dir) -> None:
    result = clean_document(pdf_pages(corpus_dir / "ietf" / "rfc8446.txt.pdf"))
    text = result.text
    assert "[Page" not in text
    assert "RFC 8446                           TLS" not in text
    assert "August 2018\n" not in text.split("Abstract", 1)[1]  # the header's date is gone after the title page
    assert ".........." not in text
    assert result.dropped_pages["toc"] >= 3
    assert "The server will send this message in response to a ClientHello message" in text
    assert "struct {" in text


def test_real_nist_publication_loses_furniture_and_keeps_content(corpus_dir) -> None:
    """SP 800-190: running header, roman page numbers, the vertical "available free of charge" stamp, legal pages."""
    result = clean_document(pdf_pages(corpus_dir / "nist" / "NIST.SP.800-190.pdf"))
    text = result.text
    assert "APPLICATION CONTAINER SECURITY GUIDE" not in text
    assert "available free of charge" not in text
    assert "Certain commercial entities" not in text
    assert "Reports on Computer Systems Technology" not in text
    assert "Use container-specific host OSs instead of general-purpose ones to reduce attack surfaces." in text
    assert "Application container technologies, also known as containers" in text
    assert result.dropped_pages["toc"] >= 2
    assert result.removed_lines["page_number"] > 40


# ---- furniture by evidence, blocks (generated PDFs: cpt_assets_tests.pdf_builders) ------------------------------


@pytest.fixture(scope="module")
def built_text(tmp_path_factory):
    """feature -> (BuiltPdf, cleaned text) for the generated PDFs."""
    from cpt_assets.lib.lake import sha256_file
    from cpt_assets.lib.pdf import extract_pages
    from cpt_assets.lib.types import RawDocument
    from cpt_assets_tests.pdf_builders import build_all

    out = {}
    for name, built in build_all(tmp_path_factory.mktemp("built")).items():
        raw = RawDocument(doc_id=f"t/{name}", source="t", name=name, status="ok", path=str(built.path),
                          sha256=sha256_file(built.path))  # fmt: skip
        pages, _ = extract_pages(raw, tables=True)
        out[name] = (built, clean_document([p.text for p in pages]).text if pages else "")
    return out


@pytest.mark.parametrize(
    ("feature", "min_f1"),
    [("running_heads", 0.99), ("columns2", 0.99), ("columns3", 0.99), ("toc", 0.99), ("index", 0.99),
     ("code", 0.99), ("code_mono", 0.99), ("table", 0.99), ("hyphenation", 0.99), ("no_text_page", 0.99),
     ("etsi", 0.99)],
)  # fmt: skip
def test_generated_features_recover_the_known_text(built_text, feature, min_f1):
    from cpt_assets_tests.pdf_builders import bigram_f1, furniture_left, word_f1

    built, text = built_text[feature]
    assert word_f1(text, built.body) >= min_f1
    assert bigram_f1(text, built.body) >= min_f1
    assert furniture_left(text, built) == 0


@pytest.mark.parametrize("feature", ["code", "code_mono"])
def test_code_blocks_keep_their_line_breaks(built_text, feature):
    from cpt_assets_tests.pdf_builders import block_intact

    built, text = built_text[feature]
    assert all(block_intact(text, block) for block in built.blocks)


def test_table_rows_stay_rows(built_text):
    from cpt_assets_tests.pdf_builders import table_rows_kept

    built, text = built_text["table"]
    assert table_rows_kept(text, built.tables[0]) == 1.0


def test_print_slug_repeated_mid_page_is_removed_as_repeated_line() -> None:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()
    pages = [
        "\n".join([f"The {words[(n * 7 + k) % 15]} {words[(n + k * 3) % 15]} sentence runs on here." for k in range(6)]
                  + [f"VerDate Sep<11>2014 16:21 Aug 0{n}, 2020 Jkt 25000{n} PO 00000 Frm 0000{n}"]
                  + [f"Then {words[(n * 5 + k) % 15]} and {words[(n * 2 + k) % 15]} follow it." for k in range(6)])
        for n in range(1, 6)
    ]  # fmt: skip
    result = clean_document(pages)
    assert "VerDate" not in result.text and result.removed_lines["repeated_line"] == 5


def test_roman_page_footer_removed() -> None:
    page = "Some prose line that is long enough to be a body line of the document here.\n"
    result = clean_document([page * 3 + "Author            Informational            [Page ii]"])
    assert "[Page ii]" not in result.text


def test_en_dash_break_joins_without_a_space() -> None:
    result = clean_document(["The registry lists the ranges 2018\u2013\n23\u201351 and more for each organization."])
    assert "2018\u201323\u201351" in result.text


def test_long_unknown_hyphenation_is_joined() -> None:
    page = "Die Arbeit untersucht Wider-\nspruchsbeweisen in formalen Sprachen und deren Grenzen im Detail."
    assert "Widerspruchsbeweisen" in clean_document([page]).text


def test_code_runs_by_syntax() -> None:
    from cpt_assets.lib.cleaning import code_runs

    lines = ["This is prose, with a comma,", "and more prose here.", "Mod DEFINITIONS ::= BEGIN",
             "  A ::= SEQUENCE {", "    b INTEGER,  -- comment", "  }", "END", "Prose again."]  # fmt: skip
    assert code_runs(lines) == {2, 3, 4, 5, 6}
