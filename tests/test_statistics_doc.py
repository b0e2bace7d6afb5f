"""docs/statistics.md documents ``Statistics`` field by field, for one server and a cluster.

Each of its two tables (the fields, then how a ClusterMultiplexer aggregates them) must
have one row per field of the dataclass, in the dataclass' order, and nothing else: a
field added, renamed or removed without its documentation fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from redismpx_core import Statistics

DOC = Path(__file__).resolve().parent.parent / "docs" / "statistics.md"
CLUSTER_HEADING = "## `ClusterMultiplexer`"
FIELDS = [field.name for field in dataclasses.fields(Statistics)]


def table_fields(text: str) -> list[str]:
    """The backquoted names in the first column of the markdown table rows of ``text``."""
    return re.findall(r"^\| `([a-z_]+)` \|", text, re.M)


def test_every_field_has_a_row() -> None:
    single = DOC.read_text().split(CLUSTER_HEADING)[0]
    assert table_fields(single) == FIELDS


def test_every_field_says_how_a_cluster_aggregates_it() -> None:
    text = DOC.read_text()
    assert text.count(CLUSTER_HEADING) == 1
    cluster = text.split(CLUSTER_HEADING)[1]
    assert table_fields(cluster) == FIELDS
