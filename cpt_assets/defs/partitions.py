"""One partition per document source, read from the sources registry when the code location loads.

Static rather than dynamic partitions: the registry is a file in the repository, so the partition set is known at
load time, needs no sensor or daemon (the CLI's main job sees it too), and a source added to the file appears as a
partition on the next code-location reload without code changes.
"""

import dagster as dg

from cpt_assets.lib.sources import load_registry

source_partitions = dg.StaticPartitionsDefinition(load_registry().names)
