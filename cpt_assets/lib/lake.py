"""The data lake's on-disk layout: the only module that spells a path under data_lake/.

Partitioned stages write one parquet file per source (`stage/source=NAME/...`), so parallel partition runs never
share a file or a DuckDB writer. DuckDB is the query layer: `Lake.connect()` opens an in-memory database with views
over the parquet globs (readers never lock anything), and `Lake.write_catalog()` persists the same views into
`catalog.duckdb` for the DuckDB CLI, from the one unpartitioned asset that owns it.

Every write goes to a temporary name and is renamed into place, so a crash never leaves half a file where a good
one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import types
import typing
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cpt_assets.lib.types import Chunk, DroppedChunk, Page, PageFailure, RawDocument, ScoredBlocks, to_rows

# Views the query layer exposes: name -> (stage folder, file name).
PARTITIONED_TABLES: dict[str, tuple[str, str]] = {
    "raw_pdfs": ("raw", "manifest.parquet"),
    "pages": ("pages", "pages.parquet"),
    "page_failures": ("pages", "failures.parquet"),
    "chunks": ("chunks", "chunks.parquet"),
    "dropped_chunks": ("chunks", "dropped.parquet"),
}
SPLIT_NAMES = ("train", "validation", "test")
# Model artefacts written per version: <kind folder>/versions/<version>/, and <kind folder>/latest -> that version.
VERSIONED_KINDS: dict[str, tuple[str, ...]] = {
    "adapter": ("models", "adapter"),
    "merged": ("models", "merged"),
    "eval": ("eval",),
    "gguf": ("gguf",),
}
VERSIONS_FOLDER = "versions"
LATEST_LINK = "latest"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's name for the adapter config inside the adapter folder
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's name for the adapter weights inside the adapter folder
# File names inside the eval folder (written by evaluation.write_report).
EVAL_REPORT_JSON = "report.json"
EVAL_REPORT_MD = "report.md"
EVAL_CHART = "model_comparison.png"
EVAL_SCORES = "scores.json"  # the adapted model's ScoredBlocks: GGUF verification scores these very blocks
EVAL_CONTROL_BLOCKS = "control_blocks.json"  # the general-text blocks eval_report scored: the gate re-uses them
# File names inside the gguf folder (written by gguf_export.export_gguf) and the registry's version folders.
GGUF_VERIFICATION = "verification.json"  # how each GGUF file compared with F16 and the HF model
MODELFILE = "Modelfile"  # Ollama's: FROM the chosen file, the template and parameters
PROMOTED_GGUF = "model.gguf"  # the promoted version's GGUF, under a stable name in data_lake/promoted/
VERSION_ADAPTER = "adapter"  # a registered version's copy of its adapter folder
IMATRIX_FILE = "imatrix.gguf"  # the domain importance matrix, beside the GGUF files it quantized
KLD_PLOT_FILE = "size_vs_kld.png"  # beside the GGUF files: size vs KL divergence of every candidate
# Files the stages write inside the model folders (the stage modules import these names).
TRAINING_INFO_FILE = "cpt_training.json"  # beside the adapter: config, data and metrics of the run
CONTINUAL_FILE = "cpt_continual.json"  # beside the adapter: parent, mix and every doc id this lineage trained on
SOURCE_MARKER = "cpt_source.json"  # beside an exported base model: which source it came from
RUN_MARKER = "cpt_run.json"  # in the checkpoints folder: the run (config hash, data fingerprint) they belong to
LAUNCH_SPEC_FILE = "launch_spec.json"  # in the checkpoints folder: what a multi-process launch trains
LAUNCH_RESULT_FILE = "launch_result.json"  # ...and what its rank 0 reports back

_ARROW_TYPES: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64(), bool: pa.bool_(), float: pa.float64()}


def arrow_schema(record_type: type) -> pa.Schema:
    """An Arrow schema from a dataclass's annotations, so empty tables still carry typed columns."""
    hints = typing.get_type_hints(record_type)
    columns = []
    for field in fields(record_type):
        hint = hints[field.name]
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            base = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(base) is typing.Literal:
            base = str
        columns.append(pa.field(field.name, _ARROW_TYPES.get(base, pa.string())))
    return pa.schema(columns)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it over `target` only if the block succeeds.

    Works for files and folders. For a folder, the old one is moved aside first and removed after the swap.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        elif tmp.exists():
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def content_version(*parts: Any) -> str:
    """A short, stable version id from the inputs that determine an artefact (hashes, configs as JSON-able data)."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def write_table(table: pa.Table, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_records(records: list[Any], record_type: type, path: Path) -> Path:
    """Write dataclass records to parquet atomically, with a typed schema even when empty."""
    schema = arrow_schema(record_type)
    table = pa.Table.from_pylist(to_rows(records), schema=schema)
    return write_table(table, path)


def read_records(path: Path, record_type: type) -> list[Any]:
    """Read parquet rows back into dataclasses; a missing file reads as no rows."""
    if not Path(path).exists():
        return []
    names = {f.name for f in fields(record_type)}
    return [record_type(**{k: v for k, v in row.items() if k in names}) for row in pq.read_table(path).to_pylist()]


class Lake:
    """Paths and queries over one data_lake/ root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def remove_orphans(self, folder: Path, name: str = "*") -> list[Path]:
        """Remove what `atomic_path` leaves when its writer is killed (`.NAME.tmp-*`, `.NAME.old-*`) in `folder`.

        Only for a stage whose writer is exclusive (a pool of one), so no live writer's temp file is touched.
        """
        removed = []
        for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
            for path in sorted(Path(folder).glob(pattern)):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # ---- partitioned corpus stages -------------------------------------------------------------------------
    def partition_dir(self, stage: str, source: str) -> Path:
        return self.root / stage / f"source={source}"

    def raw_dir(self, source: str) -> Path:
        """Where the source's PDFs are stored, one file per document name."""
        return self.partition_dir("raw", source) / "files"

    def table_path(self, table: str, source: str) -> Path:
        stage, file_name = PARTITIONED_TABLES[table]
        return self.partition_dir(stage, source) / file_name

    def manifest_path(self, source: str) -> Path:
        return self.table_path("raw_pdfs", source)

    def pages_path(self, source: str) -> Path:
        return self.table_path("pages", source)

    def page_failures_path(self, source: str) -> Path:
        return self.table_path("page_failures", source)

    def chunks_path(self, source: str) -> Path:
        return self.table_path("chunks", source)

    def dropped_path(self, source: str) -> Path:
        return self.table_path("dropped_chunks", source)

    def chunk_state_path(self, source: str) -> Path:
        """Config hash and per-document hashes the chunks were made from (for incremental refresh)."""
        return self.partition_dir("chunks", source) / "state.json"

    def splitter_path(self, source: str) -> Path:
        """The source's trained Punkt sentence splitter (JSON), reused so old documents keep their chunks."""
        return self.partition_dir("chunks", source) / "punkt.json"

    def token_histogram_path(self, source: str) -> Path:
        return self.partition_dir("chunks", source) / "token_lengths.png"

    def sources_with(self, table: str) -> list[str]:
        stage, file_name = PARTITIONED_TABLES[table]
        return sorted(p.parent.name.removeprefix("source=") for p in (self.root / stage).glob(f"source=*/{file_name}"))

    def read_manifest(self, source: str) -> list[RawDocument]:
        return read_records(self.manifest_path(source), RawDocument)

    def read_pages(self, source: str) -> list[Page]:
        return read_records(self.pages_path(source), Page)

    def read_page_failures(self, source: str) -> list[PageFailure]:
        return read_records(self.page_failures_path(source), PageFailure)

    def read_chunks(self, source: str) -> list[Chunk]:
        return read_records(self.chunks_path(source), Chunk)

    def read_dropped(self, source: str) -> list[DroppedChunk]:
        return read_records(self.dropped_path(source), DroppedChunk)

    # ---- splits ---------------------------------------------------------------------------------------------
    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    def split_path(self, split: str) -> Path:
        return self.splits_dir / f"{split}.parquet"

    @property
    def split_assignments_path(self) -> Path:
        """doc_id -> split, kept across runs so a document never changes split."""
        return self.splits_dir / "assignments.parquet"

    @property
    def hf_dataset_dir(self) -> Path:
        return self.splits_dir / "hf"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    # ---- model stages ----------------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def base_model_dir(self) -> Path:
        return self.models_dir / "base"

    @property
    def adapter_dir(self) -> Path:
        """The latest adapter (read side); lora_adapter writes a version with version_dir("adapter", ...)."""
        return self.latest_dir("adapter")

    @property
    def tokenizer_cache_dir(self) -> Path:
        """The default base model's tokenizer, extracted once, for chunking before base_model is materialised."""
        return self.models_dir / "tokenizer-cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def training_chart_path(self) -> Path:
        return self.models_dir / "training_loss.png"

    # ---- versioned model artefacts ----------------------------------------------------------------------------
    def kind_dir(self, kind: str) -> Path:
        """The folder holding every version of one artefact kind ("adapter", "merged", "eval", "gguf")."""
        if kind not in VERSIONED_KINDS:
            raise ValueError(f"Unknown versioned artefact kind {kind!r}; known: {sorted(VERSIONED_KINDS)}")
        return self.root.joinpath(*VERSIONED_KINDS[kind])

    def version_dir(self, kind: str, version: str) -> Path:
        """Where one version of an artefact is written; it is never overwritten by another version."""
        if not version or "/" in version or version.startswith("."):
            raise ValueError(f"Bad version id {version!r} for {kind}: a non-empty name without '/'")
        return self.kind_dir(kind) / VERSIONS_FOLDER / version

    def latest_dir(self, kind: str) -> Path:
        """The stable path of the newest published version (a symlink to versions/<version>)."""
        return self.kind_dir(kind) / LATEST_LINK

    def publish_latest(self, kind: str, version: str) -> Path:
        """Point `latest` at an existing version, atomically (a new symlink renamed over the old one)."""
        target = self.version_dir(kind, version)
        if not target.is_dir():
            raise FileNotFoundError(f"Cannot publish {kind} version {version}: {target} does not exist")
        link = self.latest_dir(kind)
        tmp = link.with_name(f".{LATEST_LINK}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(Path(VERSIONS_FOLDER) / version, tmp, target_is_directory=True)  # relative: the lake can move
        os.replace(tmp, link)
        return target

    def versions(self, kind: str) -> list[str]:
        """Every written version of a kind, sorted by name."""
        folder = self.kind_dir(kind) / VERSIONS_FOLDER
        return (
            sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if folder.is_dir()
            else []
        )

    @property
    def merged_model_dir(self) -> Path:
        """The latest merged model (read side); write a version with version_dir("merged", ...)."""
        return self.latest_dir("merged")

    @property
    def eval_dir(self) -> Path:
        """The latest eval report (read side); write a version with version_dir("eval", ...)."""
        return self.latest_dir("eval")

    @property
    def eval_scores_path(self) -> Path:
        """The adapted model's scored test blocks, written by eval_report, read by gguf_model."""
        return self.eval_dir / EVAL_SCORES

    @property
    def eval_control_blocks_path(self) -> Path:
        """The general-text token blocks eval_report scored, read by model_version (the promoted version's)."""
        return self.eval_dir / EVAL_CONTROL_BLOCKS

    @property
    def gguf_dir(self) -> Path:
        """The latest GGUF export (read side); write a version with version_dir("gguf", ...)."""
        return self.latest_dir("gguf")

    # ---- continual pretraining (issue #10): control text, model registry, promoted model ---------------------
    @property
    def control_text_path(self) -> Path:
        """General-text documents with their part (replay / control), one parquet file."""
        return self.root / "control_text" / "documents.parquet"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def versions_path(self) -> Path:
        """One row per trained version (the registry's table; the DuckDB view `model_versions`)."""
        return self.registry_dir / "versions.parquet"

    def registry_version_dir(self, version: str) -> Path:
        """A registered model version's own copy of its adapter and GGUF files, never overwritten."""
        return self.registry_dir / VERSIONS_FOLDER / version

    def registry_adapter_dir(self, version: str) -> Path:
        """A registered version's adapter (the parent a continued training run starts from)."""
        return self.registry_version_dir(version) / VERSION_ADAPTER

    @property
    def gguf_verification_path(self) -> Path:
        """The latest export's verification (fidelity per file, the chosen type)."""
        return self.gguf_dir / GGUF_VERIFICATION

    @property
    def modelfile_path(self) -> Path:
        """The latest export's Modelfile."""
        return self.gguf_dir / MODELFILE

    @property
    def promoted_gguf_path(self) -> Path:
        """The GGUF a user's Ollama or llama.cpp points at: the promoted version's."""
        return self.promoted_dir / PROMOTED_GGUF

    @property
    def registry_chart_path(self) -> Path:
        return self.registry_dir / "versions.png"

    @property
    def promoted_dir(self) -> Path:
        """The stable folder a user's Ollama points at: model.gguf and Modelfile of the promoted version."""
        return self.root / "promoted"

    @property
    def previous_promoted_dir(self) -> Path:
        """The promoted files before the last promotion, kept."""
        return self.root / "promoted_previous"

    # ---- DuckDB query layer ------------------------------------------------------------------------------------
    def view_sql(self) -> list[str]:
        """CREATE VIEW statements over every table that has at least one file."""
        statements = []
        for view, (stage, file_name) in PARTITIONED_TABLES.items():
            files = sorted((self.root / stage).glob(f"source=*/{file_name}"))
            if files:
                listing = ", ".join(f"'{f.as_posix()}'" for f in files)
                statements.append(
                    f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)"
                )
        if self.versions_path.exists():  # issue #10: the model registry
            versions = self.versions_path.as_posix()
            statements.append(f"CREATE OR REPLACE VIEW model_versions AS SELECT * FROM read_parquet('{versions}')")
        for split in SPLIT_NAMES:
            path = self.split_path(split)
            if path.exists():
                statements.append(f"CREATE OR REPLACE VIEW {split} AS SELECT * FROM read_parquet('{path.as_posix()}')")
        return statements

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with views over the lake: no file lock, safe from any number of processes."""
        connection = duckdb.connect(":memory:")
        for statement in self.view_sql():
            connection.execute(statement)
        return connection

    def write_catalog(self) -> Path:
        """Persist the views into catalog.duckdb (atomically) for users of the DuckDB CLI or notebooks."""
        with atomic_path(self.catalog_path) as tmp:
            connection = duckdb.connect(str(tmp))
            try:
                for statement in self.view_sql():
                    connection.execute(statement)
            finally:
                connection.close()
        return self.catalog_path


def write_splits(lake: Lake, rows: dict[str, list[Chunk]], assignments: list[Any], assignment_type: type) -> None:
    """Write the splits as parquet (one file per split), the doc->split assignments, and a datasets DatasetDict.

    The DatasetDict is written to a temporary folder and swapped in, like every other write here.
    """
    import datasets

    schema = arrow_schema(Chunk)
    tables = {name: pa.Table.from_pylist(to_rows(rows.get(name, [])), schema=schema) for name in SPLIT_NAMES}
    for name, table in tables.items():
        write_table(table, lake.split_path(name))
    write_records(assignments, assignment_type, lake.split_assignments_path)
    dataset = datasets.DatasetDict({name: datasets.Dataset(table) for name, table in tables.items()})
    with atomic_path(lake.hf_dataset_dir) as tmp:
        dataset.save_to_disk(str(tmp))


def read_split(lake: Lake, split: str) -> list[Chunk]:
    return read_records(lake.split_path(split), Chunk)


def write_scored_blocks(scored: ScoredBlocks, path: Path) -> Path:
    """ScoredBlocks as JSON, atomically."""
    data = {field.name: getattr(scored, field.name) for field in fields(ScoredBlocks)}
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, allow_nan=False), encoding="utf-8")
    return Path(path)


def write_token_blocks(blocks: Sequence[Sequence[int]], path: Path) -> Path:
    """Token blocks as JSON (a list of lists of ids), atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps([[int(t) for t in block] for block in blocks]), encoding="utf-8")
    return Path(path)


def read_token_blocks(path: Path) -> list[list[int]] | None:
    """The blocks written by `write_token_blocks`, or None when the file does not exist.

    Raises:
        ValueError: the file holds no list of token-id lists (names the file).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [[int(t) for t in block] for block in data]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a token-blocks file: {error}") from error


def read_scored_blocks(path: Path) -> ScoredBlocks | None:
    """The ScoredBlocks written by `write_scored_blocks`, or None when the file does not exist.

    Raises:
        ValueError: the file is not a ScoredBlocks JSON (names the file).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ScoredBlocks(
            model=str(data["model"]),
            dtype=str(data["dtype"]),
            block_size=int(data["block_size"]),
            separator_id=int(data["separator_id"]),
            sources=tuple(data["sources"]),
            blocks=tuple(tuple(int(t) for t in block) for block in data["blocks"]),
            token_nll=tuple(tuple(float(v) for v in nll) for nll in data["token_nll"]),
            adapter_sha256=str(data.get("adapter_sha256", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a scored-blocks file: {error}") from error
