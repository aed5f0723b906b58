"""The one record of a weights import, whatever the source format: what was loaded, what was left, and why."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ImportReport:
    """What an import did: layers loaded, and layers left as they were with the reason.

    Every import fills `path` (the file, checkpoint or model read) and `kind` ("keras model", "keras file", "keras h5",
    "reference checkpoint", "torch"). Weights loaded by name add `weights_name` (canonical), `source_url`
    (official or mirror URL, or the installed package), `cache_path` (the local file or checkpoint prefix
    read), `hash_status` (verified with which hash, or unverified with the sha256 computed) and
    `normalization` (the input normalisation the model has afterwards). PyTorch files add the naming
    detected, the padding assumed, and every tensor as used, ignored (bookkeeping) or unused with why.
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    path: str = ""
    kind: str = ""
    weights_name: str = ""
    source_url: str = ""
    cache_path: str = ""
    hash_status: str = ""
    normalization: str | None = None
    # PyTorch state dicts
    naming: str = ""
    padding: str = ""
    tensors: int = 0
    values: int = 0
    used: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)  # bookkeeping: num_batches_tracked
    unused: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> why it was not used
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """Human-readable lines: source, counts, skipped layers, unused tensors (first 10), padding, warnings."""
        lines = []
        if self.weights_name:
            lines.append(f"{self.weights_name} weights from {self.source_url} ({self.cache_path}; {self.hash_status})")
        if self.naming:
            lines.append(f"{self.path}: {self.naming} naming, {self.tensors} tensors ({self.values:,} values)")
            lines.append(f"tensors: {len(self.used)} used, {len(self.ignored)} ignored bookkeeping, "
                         f"{len(self.unused)} unused")
        elif self.path and not self.weights_name:
            lines.append(f"{self.path} ({self.kind})")
        lines.append(f"layers: {len(self.loaded)} loaded, {len(self.skipped)} skipped")
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  unused {name}: {why}" for name, why in list(self.unused.items())[:10]]
        if len(self.unused) > 10:
            lines.append(f"  ... and {len(self.unused) - 10} more unused")
        if self.padding:
            lines.append(f"padding assumed by the weights: {self.padding}")
        if self.normalization:
            lines.append(f"input normalization: {self.normalization}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines

    def format(self) -> str:
        """The summary as one printable block."""
        return "\n".join(self.summary_lines())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return dataclasses.asdict(self)
