"""Build the embedded `imagenette_mini` dataset from the Imagenette 224×224 training archive.

    python -m efficientnet_tf.data.make_embedded [--archive ../shared/data/imagenette2-224sq-train.tar]

Picks, with a fixed seed, `--per_class` images of each of the 10 Imagenette classes from the
archive (read in place, nothing extracted), resizes them to `--size` px squares with area
averaging, re-encodes them as RGB JPEG at `--quality`, and writes the first `--val_per_class` of
each class's picks to `val/<wnid>/`, the rest to `train/<wnid>/`, with `classes.tsv` and
`PROVENANCE.md` beside them. Running it again with the same arguments reproduces the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile

import numpy as np
import tensorflow as tf

# wnid -> readable name, in Imagenette's order.
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
# wnid -> class index in ImageNet-1k's usual order (sorted wnids), as ImageNet-trained heads number them.
IMAGENET_INDEX = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ARCHIVE = os.path.join(REPO_ROOT, "..", "shared", "data", "imagenette2-224sq-train.tar")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenette_mini")

PROVENANCE = """\
# imagenette_mini: the embedded default dataset

A small real-photo dataset shipped inside the `data` package so that training runs out of the box
(`--dataset` defaults to `imagenette_mini`) and the tests have real images to work on.

- **What**: {classes} classes × {per_class} photos ({train} train + {val} val per class), {size}×{size} px,
  RGB JPEG quality {quality}; {total} images, {megabytes:.1f} MB.
- **Classes** (`classes.tsv`, folder = WordNet id): {names}.
- **Source**: Imagenette v2 (the 224×224 copy of its *train* split, `imagenette2-224sq-train.tar`,
  sha256 `{sha256}`). Imagenette is a 10-class subset of ImageNet published by fast.ai
  (https://github.com/fastai/imagenette) under the Apache License 2.0; the photos themselves come
  from ImageNet (Deng et al., 2009) and are for research and non-commercial use.
- **How it was made**: `python -m efficientnet_tf.data.make_embedded --seed {seed} --per_class {per_class}
  --val_per_class {val} --size {size} --quality {quality}`. Per class, the archive's file names are sorted and
  {per_class} are drawn without replacement with `numpy.random.default_rng([{seed}, class index])`;
  the first {val} drawn go to `val/`, the rest to `train/`. Each image is decoded as RGB (greyscale
  ones are expanded to three channels), resized with area averaging and re-encoded with TensorFlow.
  File names keep the Imagenette/ImageNet file stem.
- Because both splits come from Imagenette's *train* split, accuracy on `val/` here is a sanity
  check, not a benchmark.
"""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(
    archive: str, out: str, *, per_class: int, val_per_class: int, size: int, quality: int, seed: int
) -> int:
    """Write the subset to `out` (replacing it); return the number of images written."""
    if not 0 < val_per_class < per_class:
        raise SystemExit("need 0 < --val_per_class < --per_class")
    with tarfile.open(archive) as tar:
        members = {}
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 2 and parts[-2] in IMAGENETTE_CLASSES:
                members.setdefault(parts[-2], []).append(member)
        missing = sorted(set(IMAGENETTE_CLASSES) - set(members))
        if missing:
            raise SystemExit(f"{archive} has no images for classes {missing}")
        if os.path.isdir(out):
            for sub in ("train", "val"):
                shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
        written = 0
        for index, wnid in enumerate(sorted(IMAGENETTE_CLASSES)):
            files = sorted(members[wnid], key=lambda m: m.name)
            if len(files) < per_class:
                raise SystemExit(
                    f"class {wnid} has only {len(files)} images, fewer than --per_class {per_class}"
                )
            picks = np.random.default_rng([seed, index]).choice(len(files), per_class, replace=False)
            for rank, pick in enumerate(picks):
                member = files[int(pick)]
                split = "val" if rank < val_per_class else "train"
                raw = tar.extractfile(member).read()
                image = tf.io.decode_image(raw, channels=3, expand_animations=False)
                image = tf.image.resize(image, [size, size], method="area", antialias=True)
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
                encoded = tf.io.encode_jpeg(
                    image, quality=quality, optimize_size=True, chroma_downsampling=True
                )
                stem = os.path.splitext(os.path.basename(member.name))[0]
                target_dir = os.path.join(out, split, wnid)
                os.makedirs(target_dir, exist_ok=True)
                with open(os.path.join(target_dir, stem + ".jpg"), "wb") as handle:
                    handle.write(encoded.numpy())
                written += 1
    with open(os.path.join(out, "classes.tsv"), "w", encoding="utf-8") as handle:
        handle.write("# folder (WordNet id)\tclass name\n")
        for wnid in sorted(IMAGENETTE_CLASSES):
            handle.write(f"{wnid}\t{IMAGENETTE_CLASSES[wnid]}\n")
    total_bytes = sum(
        os.path.getsize(os.path.join(d, f))
        for sub in ("train", "val")
        for d, _, fs in os.walk(os.path.join(out, sub))
        for f in fs
    )
    with open(os.path.join(out, "PROVENANCE.md"), "w", encoding="utf-8") as handle:
        handle.write(
            PROVENANCE.format(
                classes=len(IMAGENETTE_CLASSES),
                per_class=per_class,
                train=per_class - val_per_class,
                val=val_per_class,
                size=size,
                quality=quality,
                total=written,
                megabytes=total_bytes / 1e6,
                names=", ".join(IMAGENETTE_CLASSES[w] for w in sorted(IMAGENETTE_CLASSES)),
                sha256=_sha256(archive),
                seed=seed,
            )
        )
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=DEFAULT_ARCHIVE, help="imagenette2-224sq-train.tar")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (replaced)")
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--val_per_class", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.archive):
        print(f"archive not found: {args.archive} (pass --archive)", file=sys.stderr)
        return 1
    count = build(
        args.archive,
        args.out,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        quality=args.quality,
        seed=args.seed,
    )
    print(f"wrote {count} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
