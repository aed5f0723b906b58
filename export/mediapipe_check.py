"""Each exported .tflite run through MediaPipe Tasks' ImageClassifier, the runtime apps load it with.

MediaPipe reads the model's standard metadata: the input's NormalizationOptions for float models
(uint8 models take the pixels as they are), and the class names from the packed labels file. A
file that loads here and names its classes is a file an Android, iOS, web or Python app can use.
mediapipe is the optional extra `[mobile]`; without it the check is skipped with one line.

MediaPipe runs in a child process (this file run as a script, importing only numpy and
mediapipe): a model it cannot handle may abort the process from C++, and the export must survive
that and report the message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as package_version

import numpy as np

EXTRA_HINT = "pip install -e '.[mobile]'"
TIMEOUT_S = 600


def available() -> bool:
    """Whether mediapipe is installed."""
    return importlib.util.find_spec("mediapipe") is not None


def version() -> str | None:
    """mediapipe's version, or None when it is not installed."""
    if not available():
        return None
    return package_version("mediapipe")


def as_pixels(images: np.ndarray) -> np.ndarray:
    """Float 0..255 images as the uint8 frames an app hands to MediaPipe."""
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)


def classify(path: str, pixels: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[list[str]], list[float]]:
    """MediaPipe's scores [N, num_classes] for uint8 images [N, H, W, 3], the class names it reported
    per image (in index order), and each call's time in seconds. Raises whatever MediaPipe raises."""
    # Imported here: mediapipe is an optional extra and slow to import.
    import mediapipe as mp
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=num_classes)
    scores = np.zeros((len(pixels), num_classes), np.float32)
    names: list[list[str]] = []
    seconds: list[float] = []
    with ImageClassifier.create_from_options(options) as classifier:
        for i, image in enumerate(pixels):
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            started = time.perf_counter()
            result = classifier.classify(frame)
            seconds.append(time.perf_counter() - started)
            by_index = {}
            for category in result.classifications[0].categories:
                scores[i, category.index] = category.score
                by_index[category.index] = category.category_name
            names.append([by_index.get(k, "") for k in range(num_classes)])
    return scores, names, seconds


def names_read_back(reported: list[list[str]], class_names: list[str]) -> bool:
    """Whether MediaPipe named every class it reported as the labels say."""
    return bool(reported) and all(row == list(class_names) for row in reported)


def _error_line(output: str) -> str:
    """The line of MediaPipe's output that says what failed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("RET_CHECK failure", "Error:", "error:", "failed"):
        for line in lines:
            if marker in line and not line.startswith(("File ", "Traceback")):
                return line[:300]
    return lines[-1][:300] if lines else "MediaPipe exited without output"


def classify_isolated(path: str, pixels: np.ndarray, num_classes: int, timeout_s: float = TIMEOUT_S):
    """`classify` in a child process. Returns (scores, names, seconds), or raises RuntimeError with
    MediaPipe's message when the model does not load or run (including a crash or a time-out)."""
    with tempfile.TemporaryDirectory(prefix="mediapipe_check_") as tmp:
        frames, result = os.path.join(tmp, "frames.npy"), os.path.join(tmp, "result.json")
        np.save(frames, np.ascontiguousarray(pixels, np.uint8))
        command = [sys.executable, os.path.abspath(__file__), path, frames, str(int(num_classes)), result]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "GLOG_minloglevel": "2"})  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"MediaPipe did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not os.path.exists(result):
            raise RuntimeError(_error_line(proc.stderr + "\n" + proc.stdout))
        with open(result, encoding="utf-8") as handle:
            out = json.load(handle)
    return np.asarray(out["scores"], np.float32).reshape(len(pixels), num_classes), out["names"], out["seconds"]


def _main(argv: list[str]) -> int:
    path, frames, num_classes, result = argv[1], argv[2], int(argv[3]), argv[4]
    scores, names, seconds = classify(path, np.load(frames), num_classes)
    with open(result, "w", encoding="utf-8") as handle:
        json.dump({"scores": scores.tolist(), "names": names, "seconds": seconds}, handle, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
