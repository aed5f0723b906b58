"""Exporters for EfficientNet: every format one module (efficientnet_tf/export/formats, listed by
`efficientnet_tf.export.registry`), their verification against the Keras model, and the report.

    from efficientnet_tf import export
    report = export.run_export(model, class_names=names, image_size=224, resize_method="bicubic",
                               export_dir="out/export", representative_images=calib,
                               eval_images=images, eval_labels=labels)
    print(export.format_report(report))

Artifacts in `export_dir`: `saved_model/` (signatures `serving_default`: encoded image bytes ->
probabilities, top-k ids, names and probabilities; `serving_images`: float 0..255 images -> the
same), `model_{float32,float16,dynamic,int8}.tflite` (float 0..255 [1, H, W, 3] in, or uint8 pixels
for int8; probabilities out; standard TFLite metadata with the labels packed in, which MediaPipe
Tasks and Android read), `model.onnx` (with the `[onnx]` extra), `model.xml` + `model.bin` (OpenVINO IR,
with the `[openvino]` extra), `labels.txt`, `export_info.json` and the verification report
`export_report.json` (LiteRT, ONNX Runtime, OpenVINO and, with the `[mobile]` extra, MediaPipe's
ImageClassifier on the held-out images). Prediction with any of them: efficientnet_tf.prediction.

The names below load on first use, so `efficientnet_tf.export.registry` is read without starting TensorFlow.
"""

from __future__ import annotations

from efficientnet_tf.lazy import lazy_names

LAZY_NAMES = {
    "run_export": "efficientnet_tf.export.exporter",
    "format_report": "efficientnet_tf.export.verify",
    "verify_artifacts": "efficientnet_tf.export.verify",
}

__all__ = sorted(LAZY_NAMES)

__getattr__, __dir__ = lazy_names(globals(), LAZY_NAMES)
