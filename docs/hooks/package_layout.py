"""MkDocs hook: the API reference reads the package as it is installed.

setup.py installs three folders of the repository inside the package (`hparams/`, `data/` and
`export/` become `efficientnet_tf.hparams`, `.data` and `.export`). The API reference reads the
source without importing it, and such a reader finds `efficientnet_tf.export` only where the
folders sit as they do once installed. This hook lays that tree out with symbolic links under
`build/api-source/` (git ignores `build/`) when MkDocs starts.
"""

from __future__ import annotations

import ast
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIRROR = os.path.join(ROOT, "build", "api-source")


def mapped_folders() -> dict[str, str]:
    """setup.py's MAPPED (installed package name -> repository folder), read without running setup.py."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MAPPED" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("setup.py has no MAPPED table")


def on_startup(command: str, dirty: bool) -> None:
    """Link efficientnet_tf's own files and the mapped folders into build/api-source/efficientnet_tf/.

    At start-up, before the mkdocstrings handler reads its search paths: a path that does not exist
    yet would be dropped from them."""
    package = os.path.join(MIRROR, "efficientnet_tf")
    shutil.rmtree(MIRROR, ignore_errors=True)
    os.makedirs(package)
    for entry in os.listdir(os.path.join(ROOT, "efficientnet_tf")):
        if entry != "__pycache__":
            os.symlink(os.path.join(ROOT, "efficientnet_tf", entry), os.path.join(package, entry))
    for name, folder in mapped_folders().items():
        os.symlink(os.path.join(ROOT, folder), os.path.join(package, name.split(".", 1)[1]))
