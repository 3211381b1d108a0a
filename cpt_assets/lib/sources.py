"""The sources registry and the raw-PDF stage: which documents a source promises, and getting their bytes.

A source is either a folder of PDFs on this machine or a CSV of official URLs with pinned sha256 (the seeds'
workflow). Fetching is idempotent and cheap to repeat, because a scheduled refresh runs it again and again:
a stored file with the expected hash is kept as is; a pinned hash found in the local mirror (an offline install of
the sources) is copied instead of downloaded; a broken download resumes from its `.part` file with an HTTP Range
request. Every document becomes one manifest row, failed ones included, with the reason, so a bad PDF is data
the UI shows rather than an exception that stops the partition.

Stored copies live in the lake (never read in place from a pdf_folder source), so editing a source folder later
never changes what was materialised.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

import requests
import urllib3
import yaml

from cpt_assets.lib.lake import atomic_path, sha256_file
from cpt_assets.lib.pdf import inspect_pdf
from cpt_assets.lib.types import DocumentRef, RawDocument, Source, SourceKind

logger = logging.getLogger(__name__)

SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
NAME_PATTERN = re.compile(r"^[a-z0-9_-]+$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
REGISTRY_KEYS = {"name", "kind", "location", "description", "ocr"}
REPO_ROOT = Path(__file__).resolve().parents[2]
USER_AGENT = "cpt_assets/0.1 (+raw_pdfs fetch)"


# ---- registry ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """The parsed sources registry."""

    path: Path  # the registry file
    sources: list[Source]  # in file order; names are unique
    mirror: Path | None  # local folder searched by sha256 before downloading (CPT_MIRROR or `mirror:`)

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    def get(self, name: str) -> Source:
        """The source called `name`; KeyError listing the known names otherwise."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no source named {name!r} in {self.path}; known sources: {', '.join(self.names) or 'none'}")


def registry_path() -> Path:
    """The registry file: env CPT_SOURCES, else sources.yaml at the repository root."""
    env = os.environ.get("CPT_SOURCES")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "sources.yaml"


def _resolve(base: Path, value: str | os.PathLike) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def load_registry(path: Path | str | None = None) -> Registry:
    """Parse and validate a sources registry (YAML with `mirror:` and a `sources:` list).

    Locations resolve relative to the registry file's folder. The mirror is env CPT_MIRROR if set (an empty value
    disables it), else the registry's `mirror:` key, else None. Existence of locations is checked when a source
    is listed, not here, so one missing folder never hides the other sources.

    Args:
        path: the registry file; default `registry_path()`.

    Returns:
        The registry.

    Raises:
        FileNotFoundError: the registry file does not exist.
        ValueError: malformed YAML, an unknown kind or key, a missing, invalid or duplicate name, a missing
            location, a non-boolean `ocr`; the message names the file and the entry.
    """
    path = Path(path).resolve() if path is not None else registry_path()
    if not path.is_file():
        raise FileNotFoundError(f"sources registry {path} does not exist (set CPT_SOURCES to point elsewhere)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"sources registry {path} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"sources registry {path}: expected a mapping with a 'sources:' list, got {type(data).__name__}"
        )
    unknown_top = set(data) - {"mirror", "sources"}
    if unknown_top:
        raise ValueError(f"sources registry {path}: unknown top-level key(s) {sorted(unknown_top)}")
    entries = data.get("sources") or []
    if not isinstance(entries, list):
        raise ValueError(f"sources registry {path}: 'sources' must be a list, got {type(entries).__name__}")

    base = path.parent
    sources: list[Source] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"sources registry {path}, entry {index + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with name, kind, location; got {entry!r}")
        if "name" in entry:
            where = f"{where} ({entry['name']!r})"
        missing = [key for key in ("name", "kind", "location") if entry.get(key) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        unknown = set(entry) - REGISTRY_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(REGISTRY_KEYS)}")
        name = entry["name"]
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"{where}: invalid name {name!r}; names must match [a-z0-9_-]+ (they are partition keys)")
        if name in seen:
            raise ValueError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        kind = entry["kind"]
        if kind not in SOURCE_KINDS:
            raise ValueError(f"{where}: unknown kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
        ocr = entry.get("ocr", False)
        if not isinstance(ocr, bool):
            raise ValueError(f"{where}: 'ocr' must be true or false, got {ocr!r}")
        sources.append(
            Source(
                name=name,
                kind=kind,
                location=_resolve(base, str(entry["location"])),
                ocr=ocr,
                description=str(entry.get("description") or ""),
            )
        )

    mirror: Path | None = None
    if "CPT_MIRROR" in os.environ:
        env = os.environ["CPT_MIRROR"].strip()
        mirror = _resolve(Path.cwd(), env) if env else None
    elif data.get("mirror"):
        mirror = _resolve(base, str(data["mirror"]))
    return Registry(path=path, sources=sources, mirror=mirror)


# ---- listing -----------------------------------------------------------------------------------------------------


def _check_entry_name(source: Source, name: str, row: int) -> None:
    where = f"source {source.name!r} ({source.location}), row {row}"
    if not name:
        raise ValueError(f"{where}: empty name")
    if "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute() or name.startswith("."):
        raise ValueError(
            f"{where}: name {name!r} is a path that escapes the source folder; names must be plain file names"
        )


def list_documents(source: Source) -> list[DocumentRef]:
    """The documents a source promises, sorted by name (pdf_folder) or in CSV order (url_list).

    Raises:
        FileNotFoundError: the folder or CSV does not exist (the message names the source and the path).
        ValueError: a CSV without name/url columns, a row name that escapes the source folder, a duplicate row
            name, or a pinned sha256 that is not 64 hex digits.
    """
    if source.kind == "pdf_folder":
        folder = source.location
        if not folder.is_dir():
            raise FileNotFoundError(f"source {source.name!r}: PDF folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".pdf" and p.is_file())
        return [DocumentRef(source=source.name, name=p.name, path=p) for p in files]
    if source.kind == "url_list":
        return _read_url_list(source)
    raise ValueError(f"source {source.name!r}: unknown kind {source.kind!r}")


def documents_found(source: Source, refs: list[DocumentRef]) -> tuple[bool, str, dict]:
    """The source promises at least one document: "no PDFs found in FOLDER" (a typo in a location) otherwise."""
    if refs:
        return True, f"{len(refs)} document(s) listed", {}
    what = "no PDFs found in" if source.kind == "pdf_folder" else "no documents listed in"
    return False, f"source {source.name!r}: {what} {source.location}", {"location": str(source.location)}


def _read_url_list(source: Source) -> list[DocumentRef]:
    csv_path = source.location
    if not csv_path.is_file():
        raise FileNotFoundError(f"source {source.name!r}: URL list {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip() for c in reader.fieldnames or []}
        if not {"name", "url"} <= columns:
            raise ValueError(
                f"source {source.name!r}: URL list {csv_path} needs columns name,url[,sha256]; found {sorted(columns)}"
            )
        refs: list[DocumentRef] = []
        seen: set[str] = set()
        for row_number, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not any(row.values()):
                continue
            name = row.get("name", "")
            _check_entry_name(source, name, row_number)
            if name in seen:
                raise ValueError(f"source {source.name!r} ({csv_path}), row {row_number}: duplicate name {name!r}")
            seen.add(name)
            sha = row.get("sha256", "").lower() or None
            if sha is not None and not SHA256_PATTERN.match(sha):
                raise ValueError(
                    f"source {source.name!r} ({csv_path}), row {row_number} ({name!r}): "
                    f"sha256 {sha!r} is not 64 hex digits"
                )
            refs.append(DocumentRef(source=source.name, name=name, url=row.get("url") or None, sha256=sha))
    return refs


# ---- mirror ------------------------------------------------------------------------------------------------------

# (resolved path, size, mtime_ns) -> sha256, shared by every MirrorIndex of this process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """sha256 of a file, memoised per process by (path, size, mtime) so a mirror is hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _HASH_CACHE[key] = sha256_file(path)
    return digest


class MirrorIndex:
    """sha256 -> file over every PDF under a local mirror folder (recursive), built on first lookup.

    A missing mirror folder indexes nothing (with a warning): the mirror is an optional offline shortcut.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).resolve()
        self._index: dict[str, Path] | None = None

    def _build(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        if not self.folder.is_dir():
            logger.warning("mirror folder %s does not exist; every document will be downloaded", self.folder)
            return index
        for path in sorted(self.folder.rglob("*")):
            if path.suffix.lower() == ".pdf" and path.is_file():
                index.setdefault(cached_sha256(path), path)
        logger.info("mirror %s: %d PDFs indexed", self.folder, len(index))
        return index

    @property
    def index(self) -> dict[str, Path]:
        if self._index is None:
            self._index = self._build()
        return self._index

    def lookup(self, sha256: str | None) -> Path | None:
        """The mirror file with this content hash, or None."""
        return self.index.get(sha256.lower()) if sha256 else None

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and self.lookup(sha256) is not None

    def __len__(self) -> int:
        return len(self.index)


# ---- fetching ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchConfig:
    """How documents are downloaded."""

    timeout_s: float = 60.0  # connect and read timeout per request
    retries: int = 2  # extra attempts within one run after a broken transfer (each resumes from the .part file)
    chunk_bytes: int = 1 << 16  # streaming block size
    max_workers: int = 4  # documents fetched concurrently (downloads are I/O bound)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"FetchConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"FetchConfig.retries must be >= 0, got {self.retries}")
        if self.chunk_bytes <= 0:
            raise ValueError(f"FetchConfig.chunk_bytes must be > 0, got {self.chunk_bytes}")
        if self.max_workers < 1:
            raise ValueError(f"FetchConfig.max_workers must be >= 1, got {self.max_workers}")


@dataclass
class FetchResult:
    """Manifest rows of one fetch plus what it cost."""

    rows: list[RawDocument]  # one per requested document, in request order
    origins: dict[str, int]  # origin ("cached", "mirror", "download", "folder") -> documents
    bytes_downloaded: int  # body bytes received over HTTP in this run
    bytes_copied: int  # bytes copied from the mirror or a source folder
    seconds: float
    orphans: list[str] = field(default_factory=list)  # files in the store that this run's refs no longer name

    @property
    def ok(self) -> int:
        return sum(row.status == "ok" for row in self.rows)

    @property
    def failed(self) -> list[RawDocument]:
        return [row for row in self.rows if row.status == "failed"]

    @property
    def hash_mismatches(self) -> list[RawDocument]:
        return [row for row in self.rows if row.hash_mismatch]

    @property
    def total_bytes(self) -> int:
        return sum(row.bytes for row in self.rows)


class FetchError(Exception):
    """A document could not be obtained; the message is the manifest row's reason."""


@dataclass
class _Outcome:
    row: RawDocument  # the failed row until the bytes are stored, then the full row
    downloaded: int = 0
    copied: int = 0
    origin: str = ""  # set once the bytes are stored
    sha256: str = ""


def fetch_documents(
    source: Source,
    refs: Iterable[DocumentRef],
    dest_dir: Path,
    mirror: MirrorIndex | None = None,
    previous: Iterable[RawDocument] = (),
    config: FetchConfig | None = None,
    session: requests.Session | None = None,
) -> FetchResult:
    """Materialise each referenced document as `dest_dir/<name>` and describe it in a manifest row.

    Per document, cheapest first: a stored file that already has the expected bytes is kept ("cached"); a pinned
    hash found in the mirror is copied ("mirror"); a URL is downloaded ("download"), resuming `<name>.part`; a
    pdf_folder file is copied in ("folder"). A downloaded file whose hash differs from the pinned one is kept and
    flagged `hash_mismatch`. Anything that fails (HTTP error, unreachable host, bad URL, unreadable PDF) becomes a
    row with status "failed" and the reason. Files in `dest_dir` that `refs` do not name are left alone.

    Args:
        source: the source the refs belong to.
        refs: documents to fetch (from `list_documents`).
        dest_dir: the source's store (`Lake.raw_dir(source)`).
        mirror: local mirror searched by pinned sha256 before downloading.
        previous: the previous manifest rows, used to skip re-inspecting unchanged files.
        config: download settings.
        session: a `requests.Session` to reuse (default: a new one with a User-Agent).

    Returns:
        The rows (one per ref, in order), counts per origin, bytes transferred and seconds.
    """
    started = time.perf_counter()
    config = config or FetchConfig()
    refs = list(refs)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    previous_by_id = {row.doc_id: row for row in previous}
    own_session = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    try:

        def one(ref: DocumentRef) -> _Outcome:
            return _fetch_one(source, ref, dest_dir, mirror, previous_by_id.get(ref.doc_id), config, session)

        if mirror is not None:
            len(mirror)  # build the index once, before the worker threads look things up
        # Threads only move and hash bytes; pymupdf is not thread-safe, so files are inspected here, one by one.
        if config.max_workers > 1 and len(refs) > 1:
            with ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="fetch") as pool:
                outcomes = list(pool.map(one, refs))
        else:
            outcomes = [one(ref) for ref in refs]
    finally:
        if own_session:
            session.close()
    for ref, outcome in zip(refs, outcomes, strict=True):
        if outcome.origin:
            _describe(outcome, ref, dest_dir / ref.name, previous_by_id.get(ref.doc_id))

    wanted = {ref.name for ref in refs}
    orphans = sorted(
        p.name for p in dest_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in wanted
    )
    orphans = [name for name in orphans if not (name.endswith(".part") and name.removesuffix(".part") in wanted)]
    rows = [outcome.row for outcome in outcomes]
    result = FetchResult(
        rows=rows,
        origins=dict(Counter(row.origin for row in rows if row.origin)),
        bytes_downloaded=sum(o.downloaded for o in outcomes),
        bytes_copied=sum(o.copied for o in outcomes),
        seconds=time.perf_counter() - started,
        orphans=orphans,
    )
    logger.info(
        "source %s: %d documents (%d failed), origins %s, %d bytes downloaded in %.2fs",
        source.name,
        len(rows),
        len(result.failed),
        result.origins,
        result.bytes_downloaded,
        result.seconds,
    )
    return result


def _fetch_one(
    source: Source,
    ref: DocumentRef,
    dest_dir: Path,
    mirror: MirrorIndex | None,
    previous: RawDocument | None,
    config: FetchConfig,
    session: requests.Session,
) -> _Outcome:
    target = dest_dir / ref.name
    base = RawDocument(
        doc_id=ref.doc_id,
        source=source.name,
        name=ref.name,
        status="failed",
        path=str(target),
        url=ref.url,
        pinned_sha256=ref.sha256,
    )
    outcome = _Outcome(row=base)
    try:
        if ref.path is not None:
            origin, sha = _copy_from_folder(ref.path, target, outcome)
        else:
            origin, sha = _obtain_url(ref, target, mirror, previous, config, session, outcome)
    except FetchError as error:
        logger.warning("%s: %s", ref.doc_id, error)
        outcome.row = replace(base, path=str(target) if target.exists() else None, error=str(error))
        return outcome
    except OSError as error:  # disk full, permissions: still a row, not a crashed partition
        logger.warning("%s: %s", ref.doc_id, error)
        outcome.row = replace(base, path=None, error=f"cannot store {target}: {error}")
        return outcome
    outcome.origin, outcome.sha256 = origin, sha
    return outcome


def _describe(outcome: _Outcome, ref: DocumentRef, target: Path, previous: RawDocument | None) -> None:
    """Fill the row of a stored file: size, hash check, and what pymupdf says about it."""
    sha = outcome.sha256
    size = target.stat().st_size
    mismatch = bool(ref.sha256) and sha != ref.sha256
    if previous is not None and previous.sha256 == sha and previous.path and (previous.pages or previous.error):
        # Same bytes as last run: the inspection result cannot have changed.
        pages, title, error = previous.pages, previous.title, "" if previous.status == "ok" else previous.error
    else:
        pages, title, error = inspect_pdf(target)
    outcome.row = replace(
        outcome.row,
        status="failed" if error else "ok",
        sha256=sha,
        bytes=size,
        pages=pages,
        title=title,
        origin=outcome.origin,
        hash_mismatch=mismatch,
        error=error,
    )
    if mismatch:
        logger.warning("%s: sha256 %s differs from the pinned %s", ref.doc_id, sha, ref.sha256)


def _copy_from_folder(src: Path, target: Path, outcome: _Outcome) -> tuple[str, str]:
    if not src.is_file():
        raise FetchError(f"{src} no longer exists in the source folder")
    sha = cached_sha256(src)
    if target.is_file() and target.stat().st_size == src.stat().st_size and cached_sha256(target) == sha:
        return "cached", sha
    _copy(src, target)
    outcome.copied += target.stat().st_size
    return "folder", sha


def _copy(src: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)


def _obtain_url(
    ref: DocumentRef,
    target: Path,
    mirror: MirrorIndex | None,
    previous: RawDocument | None,
    config: FetchConfig,
    session: requests.Session,
    outcome: _Outcome,
) -> tuple[str, str]:
    if target.is_file():
        sha = cached_sha256(target)
        if sha == ref.sha256:
            return "cached", sha
        same_as_before = previous is not None and previous.sha256 == sha
        # A stored copy that did not open last time (an HTML error page, a truncated file) is fetched again.
        # Otherwise keep what is there when nothing is pinned, or when it is what the last run downloaded for this
        # same pin (a publisher re-issued the PDF: reported as a mismatch, not re-downloaded on every refresh).
        if not (previous is not None and same_as_before and previous.status == "failed") and (
            ref.sha256 is None or (previous is not None and same_as_before and previous.pinned_sha256 == ref.sha256)
        ):
            return "cached", sha
    if mirror is not None and (found := mirror.lookup(ref.sha256)) is not None:
        _copy(found, target)
        outcome.copied += target.stat().st_size
        return "mirror", cached_sha256(target)
    if not ref.url:
        raise FetchError(
            "no URL in the list and no mirror copy with sha256 "
            f"{ref.sha256 or '(none pinned)'}" + ("" if mirror else " (no mirror configured)")
        )
    parts = urlsplit(ref.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(f"bad URL {ref.url!r}: only http(s) URLs can be downloaded")
    _download(ref.url, target, config, session, outcome)
    return "download", cached_sha256(target)


def _download(url: str, target: Path, config: FetchConfig, session: requests.Session, outcome: _Outcome) -> None:
    """Stream `url` into `<target>.part`, resuming it with Range; rename to `target` only when complete."""
    part = target.with_name(target.name + ".part")
    last_error = ""
    for attempt in range(config.retries + 1):
        try:
            if _download_once(url, part, config, session, outcome):
                os.replace(part, target)
                return
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            last_error = f"download of {url} broke off: {type(error).__name__}: {error}"
        except _Incomplete as error:
            last_error = str(error)
        if attempt < config.retries:
            logger.info("retrying %s (attempt %d of %d): %s", url, attempt + 2, config.retries + 1, last_error)
    kept = part.stat().st_size if part.exists() else 0
    if kept:
        last_error += f"; {kept} bytes kept in {part.name}, the next run resumes from there"
    raise FetchError(last_error)


class _Incomplete(Exception):
    """A transient failure: worth another attempt (which resumes from the .part file)."""


def _download_once(url: str, part: Path, config: FetchConfig, session: requests.Session, outcome: _Outcome) -> bool:
    """One HTTP attempt. True when `part` holds the complete body; raises on HTTP errors and broken transfers."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=config.timeout_s, allow_redirects=True)
    except requests.exceptions.InvalidURL as error:
        raise FetchError(f"bad URL {url!r}: {error}") from error
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _Incomplete(f"cannot reach {url}: {type(error).__name__}: {error}") from error
    with response:
        if response.status_code == 416 and have:
            # Nothing past what we hold: complete if the server's total equals our size, else start over.
            total = _total_from_content_range(response.headers.get("Content-Range", ""))
            if total == have:
                return True
            part.unlink()
            raise _Incomplete(f"server refused to resume {url} at byte {have} (HTTP 416); restarting")
        if response.status_code >= 400:
            raise FetchError(f"HTTP {response.status_code} {response.reason or ''} for {url}".replace("  ", " "))
        if response.status_code == 206 and have:
            start = _start_from_content_range(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Incomplete(f"server resumed {url} at byte {start}, not {have}; restarting")
            mode, expected_total = "ab", _total_from_content_range(response.headers.get("Content-Range", ""))
        else:
            if have:
                logger.info(
                    "%s: server ignored the Range request (HTTP %d); downloading it whole", url, response.status_code
                )
            mode, have = "wb", 0
            length = response.headers.get("Content-Length")
            expected_total = (
                int(length) if length and length.isdigit() and "Content-Encoding" not in response.headers else None
            )
        try:
            with open(part, mode) as handle:
                # read1 hands over whatever has arrived, so the bytes before a dropped connection reach the .part
                # file (iter_content fills whole blocks and loses a partial one when the connection breaks).
                while block := response.raw.read1(config.chunk_bytes, decode_content=True):
                    handle.write(block)
                    outcome.downloaded += len(block)  # counted as it arrives: a broken transfer still counts
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            size = part.stat().st_size
            raise _Incomplete(
                f"download of {url} stopped at {size} of {expected_total or 'unknown'} bytes ({type(error).__name__})"
            ) from error
    size = part.stat().st_size
    if expected_total is not None and size < expected_total:
        raise _Incomplete(f"download of {url} stopped at {size} of {expected_total} bytes")
    return True


def _start_from_content_range(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value)
    return int(match.group(1)) if match else None


def _total_from_content_range(value: str) -> int | None:
    match = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value)
    return int(match.group(1)) if match else None
