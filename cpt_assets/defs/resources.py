"""Resources: where the lake lives and which sources registry to read.

Both default to the repository's own files and can be pointed elsewhere by environment variable (CPT_DATA_LAKE,
CPT_SOURCES, CPT_MIRROR) or resource config, so tests run the real assets against a temporary lake.
"""

import dataclasses
import os
from pathlib import Path

import dagster as dg

from cpt_assets.lib.lake import Lake
from cpt_assets.lib.sources import Registry, load_registry, registry_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_lake_root() -> str:
    return os.environ.get("CPT_DATA_LAKE", str(REPO_ROOT / "data_lake"))


class LakeResource(dg.ConfigurableResource):
    """The data lake root (parquet per partition, DuckDB views, model files)."""

    root: str = default_lake_root()

    def lake(self) -> Lake:
        return Lake(self.root)


class SourcesResource(dg.ConfigurableResource):
    """The sources registry file and, optionally, a local mirror searched by sha256 before any download."""

    registry: str = str(registry_path())
    mirror: str = ""  # empty: CPT_MIRROR, else the registry's `mirror:` key

    def load(self) -> Registry:
        registry = load_registry(Path(self.registry))
        if self.mirror:
            registry = dataclasses.replace(registry, mirror=Path(self.mirror))
        return registry


@dg.definitions
def resources() -> dg.Definitions:
    """The code location's resources (the defs-folder loader collects this with the assets)."""
    return dg.Definitions(resources={"lake": LakeResource(), "sources": SourcesResource()})
