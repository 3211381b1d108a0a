"""The unpartitioned corpus_splits asset: every source's chunks -> train/validation/test by document."""

import dagster as dg

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.assets import FOLLOW_UPSTREAM, check_result, clean_chunks
from cpt_assets.defs.metadata import markdown_table
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.lib.lake import read_records, write_splits
from cpt_assets.lib.splits import (
    SPLITS,
    Assignment,
    SplitConfig,
    leakage_check,
    make_splits,
    ratio_check,
    ratio_deviation,
)

SplitRunConfig = config_class(SplitConfig, "SplitRunConfig")


@dg.asset(
    deps=[clean_chunks],
    group_name="corpus",
    kinds={"parquet", "duckdb", "huggingface"},
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=[
        # Blocking: a leaked split stops the run before lora_adapter trains on it.
        dg.AssetCheckSpec(
            "no_document_in_two_splits",
            asset="corpus_splits",
            blocking=True,
            description="no document has chunks in two splits (blocking: nothing downstream runs on a leaked split)",
        ),
        dg.AssetCheckSpec("split_ratios_within_tolerance", asset="corpus_splits"),
    ],
    description="Train/validation/test splits assigned per document (70/20/10 of tokens by default), stable as "
    "documents are added; parquet + a datasets DatasetDict under data_lake/splits/, DuckDB catalog over the lake.",
)
def corpus_splits(
    context: dg.AssetExecutionContext, config: SplitRunConfig, lake: LakeResource, sources: SourcesResource
) -> dg.MaterializeResult:
    split_config = to_dataclass(config, SplitConfig)
    lk = lake.lake()
    registered = sources.load().names
    present = [name for name in registered if lk.chunks_path(name).exists()]
    missing = sorted(set(registered) - set(present))
    if missing:
        context.log.warning(f"sources without chunks yet (materialise their partitions first): {missing}")
    chunks = [chunk for name in present for chunk in lk.read_chunks(name)]
    if not chunks:
        raise ValueError(f"no chunks in any source partition under {lk.root}; registered sources: {registered}")

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
                "token_share": f"{result.token_share[name]:.3f}",
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
            "sources": dg.MetadataValue.json(present),
            "sources_missing": dg.MetadataValue.json(missing),
            "splits": dg.MetadataValue.md(
                markdown_table(
                    per_split, ["split", "documents", "chunks", "tokens", "token_share", "target", "sources"]
                )
            ),
            "split_hashes": dg.MetadataValue.json({name: result.split_hash(name) for name in SPLITS}),
            "assignments": dg.MetadataValue.md(
                markdown_table(
                    [{"doc_id": a.doc_id, "split": a.split, "tokens": a.doc_tokens} for a in result.assignments],
                    ["doc_id", "split", "tokens"],
                )
            ),
            "dataset_dict": dg.MetadataValue.path(str(lk.hf_dataset_dir)),
            "catalog": dg.MetadataValue.path(str(lk.catalog_path)),
        },
        data_version=dg.DataVersion("-".join(result.split_hash(name)[:8] for name in SPLITS)),
        check_results=[
            check_result("no_document_in_two_splits", leakage_check(result.rows)),
            check_result(
                "split_ratios_within_tolerance",
                ratio_check(result.token_share, split_config, len(result.assignments)),
            ),
        ],
    )
