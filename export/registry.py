"""The export formats, one module each under efficientnet_tf/export/formats, and the checks of their names.

Each format module defines `FORMAT` (`efficientnet_tf.export.formats.base.ExportFormat`): its name, the
extra it needs, how to write it from a model, how to load it as a predictor, how to verify it and its
acceptance rule. This table is the only list of them: the command line's help, the name checks, the
export loop, the verification, the report and `--mode=predict --checkpoint=<file>` all read it. Adding a
format is adding its module and a line here. Reading the table does not start TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from absl import logging

from efficientnet_tf.errors import UserError

if TYPE_CHECKING:  # the format modules import TensorFlow; they load on first use
    from efficientnet_tf.export.formats.base import ExportFormat

_PACKAGE = "efficientnet_tf.export.formats"
# Name -> module, in the order formats are written and reported.
FORMAT_MODULES: dict[str, str] = {
    "saved_model": f"{_PACKAGE}.saved_model",
    "tflite_float32": f"{_PACKAGE}.tflite_float32",
    "tflite_float16": f"{_PACKAGE}.tflite_float16",
    "tflite_dynamic": f"{_PACKAGE}.tflite_dynamic",
    "tflite_int8": f"{_PACKAGE}.tflite_int8",
    "onnx": f"{_PACKAGE}.onnx",
    "openvino": f"{_PACKAGE}.openvino",
}
NAMES: tuple[str, ...] = tuple(FORMAT_MODULES)
# Names that stand for several formats in --export_formats.
GROUPS: dict[str, tuple[str, ...]] = {"tflite": tuple(n for n in NAMES if n.startswith("tflite_")), "all": NAMES}


def get(name: str) -> ExportFormat:
    """The format called `name` (its module is imported on first use)."""
    if name not in FORMAT_MODULES:
        check([name])
    return importlib.import_module(FORMAT_MODULES[name]).FORMAT


def check(names: Sequence[str] | str) -> tuple[str, ...]:
    """Validate format names (or the groups tflite, all); the formats in the table's order, each once."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    wanted: list[str] = []
    for name in (n.strip().lower() for n in names):
        wanted += GROUPS.get(name, (name,))
    unknown = [n for n in wanted if n not in FORMAT_MODULES]
    choices = ", ".join([*NAMES, *GROUPS])
    if unknown:
        raise UserError(f"unknown export format(s) {', '.join(unknown)}; choose from {choices}")
    if not wanted:
        raise UserError(f"no export format given; choose from {choices}")
    return tuple(n for n in NAMES if n in wanted)


def check_installed(names: Sequence[str]) -> None:
    """A UserError in one line when a requested format's extra is not installed."""
    for name in names:
        fmt = get(name)
        missing = fmt.missing_packages()
        if missing:
            raise UserError(f"the {name} export format needs {' and '.join(missing)}: {fmt.install_hint}")


def default_formats() -> tuple[str, ...]:
    """Every format this installation can write; one log line for each one whose extra is missing."""
    chosen = []
    for name in NAMES:
        fmt = get(name)
        missing = fmt.missing_packages()
        if missing:
            logging.warning("%s export skipped: %s is not installed (%s)", name, " and ".join(missing),
                            fmt.install_hint)
        else:
            chosen.append(name)
    return tuple(chosen)


class Chosen(tuple):
    """Format names already checked against the table and against this installation's extras (what
    `choose` returns): `choose` passes them through unchecked, so a name is checked once per export."""


def choose(names: Sequence[str] | str | None) -> Chosen:
    """The formats to write: every one this installation can write when `names` is empty or None, else
    the named ones (groups expanded, in the table's order), each one's extra checked; a `Chosen` as it is."""
    if isinstance(names, Chosen):
        return names
    chosen = check(names) if names else default_formats()
    check_installed(chosen)
    return Chosen(chosen)


def for_path(path: str) -> ExportFormat | None:
    """The format that reads the file (or directory) at `path`; None when none does."""
    return next((fmt for fmt in map(get, NAMES) if fmt.reads is not None and fmt.reads(path)), None)
