"""General English text for the forgetting control and for replay, from a package installed offline.

Continual pretraining on standards text can cost a model its general English; measuring that needs general text
the domain corpus does not contain. Debian's `fortunes` package (installed by scripts/setup.sh and .ci/run) ships
the BSD fortune(6) cookie files: quotations, literature excerpts, riddles, poems and jokes in plain English, about
450,000 words, BSD licence (see /usr/share/doc/fortunes/copyright). Each cookie is one document; a document goes
to the replay part or the held-out control part by a hash of its text, so the split is stable across runs and
machines, and control text is never trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# General-English cookie files; jargon-heavy ones (computers, linux, perl, startrek, ascii-art...) are left out.
FORTUNE_FILES = (
    "literature", "wisdom", "people", "science", "education", "humorists", "politics", "law", "fortunes",
    "riddles", "platitudes", "work", "food", "pets", "love", "news", "songs-poems", "miscellaneous", "sports",
    "kids", "definitions", "paradoxum", "medicine", "art", "magic",
)  # fmt: skip
LICENCE = "BSD-4-Clause-UC (Debian package 'fortunes', BSD fortune(6) data files)"
PACKAGE = "debian:fortunes"


@dataclass(frozen=True)
class ControlTextConfig:
    """Where the general text comes from and how it is split."""

    directory: str = str(FORTUNE_DIR)  # folder of fortune cookie files (Debian package 'fortunes')
    files: tuple[str, ...] = FORTUNE_FILES  # cookie files read from it
    control_share: float = 0.5  # share of documents held out for the control set (the rest is replay text)
    min_characters: int = 40  # shorter cookies (one-liners) are dropped

    def validate(self) -> ControlTextConfig:
        if not 0.0 < self.control_share < 1.0:
            raise ValueError(f"ControlTextConfig.control_share must be in (0, 1), got {self.control_share}")
        if self.min_characters < 0:
            raise ValueError(f"ControlTextConfig.min_characters must be >= 0, got {self.min_characters}")
        if not self.files:
            raise ValueError("ControlTextConfig.files must name at least one file, got ()")
        return self


@dataclass(frozen=True, slots=True)
class ControlDocument:
    doc_id: str  # file name and cookie index, e.g. "literature/12"
    part: str  # "replay" or "control"
    text: str


def read_cookies(path: Path) -> list[str]:
    """The cookies of one fortune file (separated by lines holding a single '%')."""
    text = path.read_text(encoding="utf-8", errors="replace")
    cookies, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            cookies.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    cookies.append("\n".join(current).strip())
    return [c for c in cookies if c]


def part_of(text: str, control_share: float) -> str:
    """Replay or control, by a hash of the text: stable across runs, independent of file order."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "control" if bucket < control_share else "replay"


def load_control_documents(config: ControlTextConfig = ControlTextConfig()) -> list[ControlDocument]:
    """Every cookie of the configured files, assigned to its part; duplicates (across files) kept once.

    Raises:
        FileNotFoundError: the folder or a file is missing, naming ControlTextConfig.directory and the package.
        ValueError: the files hold no usable text.
    """
    config.validate()
    directory = Path(config.directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"ControlTextConfig.directory {directory} does not exist: install the Debian package 'fortunes' "
            "(apt-get install -y fortunes; scripts/setup.sh does) or point the setting at a folder of cookie files"
        )
    documents, seen = [], set()
    for name in config.files:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"ControlTextConfig.files names {name!r}, but {path} does not exist")
        for index, cookie in enumerate(read_cookies(path)):
            if len(cookie) < config.min_characters or cookie in seen:
                continue
            seen.add(cookie)
            documents.append(ControlDocument(f"{name}/{index}", part_of(cookie, config.control_share), cookie))
    if not documents:
        raise ValueError(f"ControlTextConfig: no cookie of {config.min_characters}+ characters in {directory}")
    return documents


def texts_of(documents: list[ControlDocument], part: str) -> dict[str, list[str]]:
    """doc_id -> [text] for one part, the form training and evaluation take."""
    return {d.doc_id: [d.text] for d in documents if d.part == part}


def write_control_documents(lake, documents: list[ControlDocument]) -> Path:
    """The documents as one parquet file at the lake's control-text path (atomically)."""
    from cpt_assets.lib.lake import write_records

    return write_records(documents, ControlDocument, lake.control_text_path)


def read_control_documents(lake) -> list[ControlDocument]:
    from cpt_assets.lib.lake import read_records

    return read_records(lake.control_text_path, ControlDocument)
