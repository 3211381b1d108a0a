"""A corpus lake materialised once per session through the real assets: two sources, real PDFs and bad inputs.

`ietf` is a local folder of four small real RFCs plus the bad inputs of ../shared/corpus/edge and two made here (a
zero-byte file, an HTML page saved as .pdf); `nist` is a URL list served by a real HTTP server on 127.0.0.1, one of
whose addresses answers 404. Partition keys are the default registry's names, so the static partitions apply.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.lib.lake import Lake, sha256_file
from cpt_assets_tests.lib.http_server import serve_folder

IETF_GOOD = ("rfc2119.txt.pdf", "rfc8174.txt.pdf", "rfc8259.txt.pdf", "rfc7519.txt.pdf")
IETF_BAD = ("invalid.pdf", "libreoffice-writer-password.pdf")
NIST_GOOD = ("FIPS199.pdf", "SP800-145.pdf", "srx-server-protocol-3.0.pdf")
CORPUS_ASSETS = [raw_pdfs, page_text, clean_chunks]


@dataclass
class CorpusLake:
    root: Path
    registry: Path
    ietf_folder: Path
    resources: dict
    results: dict[str, dg.ExecuteInProcessResult]  # "ietf", "nist", "splits"
    instance: dg.DagsterInstance

    @property
    def lake(self) -> Lake:
        return Lake(self.root)

    def materialize(self, assets, partition_key: str | None = None, **kwargs) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            assets, partition_key=partition_key, resources=self.resources, instance=self.instance, **kwargs
        )


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata of the asset's materialisation in this run, as plain values."""
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialised"
    return {key: getattr(value, "value", value) for key, value in events[-1].metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure's message with the messages of its causes (the user's exception is a cause)."""
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def write_registry(path: Path, ietf_folder: Path, nist_csv: Path) -> Path:
    path.write_text(
        "sources:\n"
        f"  - name: ietf\n    kind: pdf_folder\n    location: {ietf_folder}\n"
        f"  - name: nist\n    kind: url_list\n    location: {nist_csv}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def corpus_lake(tmp_path_factory, corpus_dir) -> CorpusLake:
    base = tmp_path_factory.mktemp("corpus_lake")
    ietf = base / "ietf_pdfs"
    ietf.mkdir()
    for name in IETF_GOOD:
        shutil.copy(corpus_dir / "ietf" / name, ietf / name)
    for name in IETF_BAD:
        shutil.copy(corpus_dir / "edge" / name, ietf / name)
    (ietf / "zero-bytes.pdf").write_bytes(b"")
    (ietf / "saved-page.pdf").write_text("<!DOCTYPE html><html><body>Not Found</body></html>", encoding="utf-8")

    served = base / "served"
    served.mkdir()
    for name in NIST_GOOD:
        shutil.copy(corpus_dir / "nist" / name, served / name)
    with serve_folder(served) as server, pytest.MonkeyPatch.context() as env:
        env.delenv("CPT_MIRROR", raising=False)  # the URL path itself is under test: no mirror
        csv = base / "nist.csv"
        lines = ["name,url,sha256"]
        lines += [f"{name},{server.url(name)},{sha256_file(served / name)}" for name in NIST_GOOD]
        lines.append(f"gone.pdf,{server.url('gone.pdf')},")
        csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        registry = write_registry(base / "sources.yaml", ietf, csv)
        resources = {
            "lake": LakeResource(root=str(base / "data_lake")),
            "sources": SourcesResource(registry=str(registry)),
        }
        lake = CorpusLake(base / "data_lake", registry, ietf, resources, {}, dg.DagsterInstance.ephemeral())
        for key in ("ietf", "nist"):
            lake.results[key] = lake.materialize(CORPUS_ASSETS, partition_key=key)
    lake.results["splits"] = lake.materialize([corpus_splits])
    return lake
