"""The control_text asset: general English for the forgetting control (held out) and for replay (trained on)."""

import hashlib

import dagster as dg

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.resources import LakeResource
from cpt_assets.lib.control_text import (
    LICENCE,
    PACKAGE,
    ControlTextConfig,
    load_control_documents,
    write_control_documents,
)


class ControlTextRunConfig(config_class(ControlTextConfig, "ControlTextRunConfigBase")):
    """ControlTextConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


@dg.asset(
    group_name="registry",
    kinds={"parquet"},
    description="General English (Debian's fortunes: quotations, literature, riddles, poems; BSD licence), one "
    "document per cookie, split by text hash into a replay part (mixed into training) and a held-out control part "
    "(general-text perplexity, the forgetting control). data_lake/control_text/documents.parquet.",
)
def control_text(config: ControlTextRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    settings = to_dataclass(config, ControlTextConfig)
    documents = load_control_documents(settings)
    path = write_control_documents(lake.lake(), documents)
    words = {part: sum(len(d.text.split()) for d in documents if d.part == part) for part in ("replay", "control")}
    return dg.MaterializeResult(
        metadata={
            "package": PACKAGE,
            "licence": LICENCE,
            "directory": settings.directory,
            "documents": len(documents),
            "replay_documents": sum(d.part == "replay" for d in documents),
            "control_documents": sum(d.part == "control" for d in documents),
            "replay_words": words["replay"],
            "control_words": words["control"],
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(hashlib.sha256("\0".join(d.text for d in documents).encode()).hexdigest()[:16]),
    )
