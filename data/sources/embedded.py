"""The embedded Imagenette subset shipped in the package (`data/imagenette_mini` in the repository)."""

from __future__ import annotations

import os

from efficientnet_tf.errors import UserError

from efficientnet_tf.data.sources.folder import FileListSource, folder_source

EMBEDDED_DIRNAME = "imagenette_mini"
DEFAULT_DATASET = "imagenette_mini"


def embedded_root() -> str:
    """Directory of the embedded Imagenette subset shipped inside this package."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), EMBEDDED_DIRNAME)


def read_class_table(path: str) -> dict[str, str]:
    """Read a `dirname<TAB>display name` table (the embedded dataset's classes.tsv)."""
    table = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition("\t")
                table[key] = value or key
    return table


def embedded_source(*, seed: int) -> FileListSource:
    """The embedded Imagenette subset (10 classes, train/ + val/)."""
    root = embedded_root()
    if not os.path.isdir(os.path.join(root, "train")):
        raise UserError(
            f"the embedded dataset is missing from {root}; reinstall the package or rebuild it with "
            "`python -m efficientnet_tf.data.make_embedded`"
        )
    names = read_class_table(os.path.join(root, "classes.tsv"))
    return folder_source(root, holdout_fraction=0.0, seed=seed, name=DEFAULT_DATASET, display_names=names)
