"""The unpartitioned corpus_splits asset: every source's chunks -> train/validation/test by document."""

from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.assets import FOLLOW_UPSTREAM, chunks_version, clean_chunks
from cpt_assets.defs.corpus.checks import SPLITS_CHECKS, splits_results
from cpt_assets.defs.metadata import short_hash, table
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.lib.lake import Lake, read_records, write_splits
from cpt_assets.lib.splits import (
    SPLITS,
    Assignment,
    SplitConfig,
    make_splits,
    ratio_deviation,
)
from cpt_assets.lib.types import Chunk

# One writer of data_lake/splits/ and catalog.duckdb at a time (dagster.yaml gives every pool one slot).
SPLITS_POOL = "lake_writer"


class SplitRunConfig(config_class(SplitConfig, "SplitRunConfigBase")):
    """SplitConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


@dataclass(frozen=True)
class Snapshot:
    """The chunks a splits run reads: per source, its data version, or the reason it is left out."""

    chunks: list[Chunk]
    versions: dict[str, str]  # source -> clean_chunks data version used
    missing: dict[str, str]  # source -> why it is not in the splits


def chunk_snapshot(instance: dg.DagsterInstance, lk: Lake, registered: list[str]) -> Snapshot:
    """The latest complete clean_chunks materialisation of every source.

    The chunks on disk are used only when their content hash equals the data version of the partition's latest
    recorded materialisation, so a writer killed between its parquet rename and its materialisation event (or one
    still running) never leaks half a refresh into the splits. A lake with no records in this instance (a new
    DAGSTER_HOME over an old lake) is read as it is, and the metadata says so.
    """
    chunks, versions, missing = [], {}, {}
    for name in registered:
        if not lk.chunks_path(name).exists():
            missing[name] = "no clean_chunks materialisation (its corpus run failed or never ran)"
            continue
        source_chunks = lk.read_chunks(name)
        on_disk = chunks_version(source_chunks).value
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=clean_chunks.key, asset_partitions=[name]), limit=1, ascending=False
        ).records
        materialization = records[0].asset_materialization if records else None
        recorded = materialization.tags.get(DATA_VERSION_TAG) if materialization and materialization.tags else None
        if recorded is not None and recorded != on_disk:
            missing[name] = f"chunks on disk ({on_disk}) are not the last recorded materialisation ({recorded})"
            continue
        chunks += source_chunks
        versions[name] = on_disk if recorded else f"{on_disk} (not recorded in this instance)"
    return Snapshot(chunks, versions, missing)


@dg.asset(
    deps=[clean_chunks],
    group_name="corpus",
    pool=SPLITS_POOL,
    kinds={"parquet", "duckdb", "huggingface"},
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=SPLITS_CHECKS,
    description="Train/validation/test splits assigned per document (70/20/10 of tokens by default), stable as "
    "documents are added; parquet + a datasets DatasetDict under data_lake/splits/, DuckDB catalog over the lake.",
)
def corpus_splits(
    context: dg.AssetExecutionContext, config: SplitRunConfig, lake: LakeResource, sources: SourcesResource
) -> dg.MaterializeResult:
    split_config = to_dataclass(config, SplitConfig)
    lk = lake.lake()
    registered = list(sources.load().names)
    removed = lk.remove_orphans(lk.splits_dir) + lk.remove_orphans(lk.catalog_path.parent, lk.catalog_path.name)
    if removed:
        context.log.warning(f"removed temp files a killed writer left: {[p.name for p in removed]}")
    snapshot = chunk_snapshot(context.instance, lk, registered)
    for name, reason in snapshot.missing.items():
        context.log.warning(f"source {name} is not in these splits: {reason}")
    chunks = snapshot.chunks
    if not chunks:
        raise ValueError(
            f"no chunks in any source partition under {lk.root}; registered sources: {registered}; {snapshot.missing}"
        )

    previous = {a.doc_id: a.split for a in read_records(lk.split_assignments_path, Assignment)}
    result = make_splits(chunks, previous, split_config)
    write_splits(lk, result.rows, result.assignments, Assignment)
    lk.write_catalog()

    per_split = []
    for name in SPLITS:
        rows = result.rows[name]
        per_split.append(
            {
                "split": name,
                "documents": len({c.doc_id for c in rows}),
                "chunks": len(rows),
                "tokens": sum(c.n_tokens for c in rows),
                "token_share": round(result.token_share[name], 3),
                "target": getattr(split_config, name),
                "sources": ", ".join(sorted({c.source for c in rows})),
            }
        )
    deviation = ratio_deviation(result.token_share, split_config)
    return dg.MaterializeResult(
        metadata={
            "documents": len(result.assignments),
            "new_documents": result.new_documents,
            "kept_documents": result.kept_documents,
            "chunks": sum(len(r) for r in result.rows.values()),
            "tokens": sum(c.n_tokens for r in result.rows.values() for c in r),
            "cross_split_duplicates_dropped": result.cross_split_duplicates,
            "max_ratio_deviation": round(max(deviation.values()), 4),
            "sources": dg.MetadataValue.json(sorted(snapshot.versions)),
            # JSON: the CLI's summary and the fault tests read these back (source -> reason / data version)
            "sources_missing": dg.MetadataValue.json(snapshot.missing),
            "chunk_versions_used": dg.MetadataValue.json(snapshot.versions),
            "orphan_temp_files_removed": len(removed),
            "splits": table(per_split, ["split", "documents", "chunks", "tokens", "token_share", "target"]),
            # full hashes: gguf_model's provenance is compared with these (and they are in the lake's split files)
            "split_hashes": dg.MetadataValue.json({name: result.split_hash(name) for name in SPLITS}),
            **{f"{name}_hash": short_hash(result.split_hash(name)) for name in SPLITS},
            "assignments": table(
                [{"doc_id": a.doc_id, "split": a.split, "tokens": a.doc_tokens} for a in result.assignments],
                ["doc_id", "split", "tokens"],
            ),
            "dataset_dict": dg.MetadataValue.path(str(lk.hf_dataset_dir)),
            "catalog": dg.MetadataValue.path(str(lk.catalog_path)),
        },
        data_version=dg.DataVersion("-".join(result.split_hash(name)[:8] for name in SPLITS)),
        check_results=splits_results(
            result.rows, result.token_share, split_config, len(result.assignments), snapshot.missing
        ),
    )
