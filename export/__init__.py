"""SavedModel and TFLite exporters for EfficientNet, their verification, and prediction from artifacts.

    from efficientnet_tf import export
    report = export.run_export(model, class_names=names, image_size=224, resize_method="bicubic",
                               export_dir="out/export", representative_images=calib,
                               eval_images=images, eval_labels=labels)
    print(export.format_report(report))
    print(export.run_predict("out/export/saved_model", ["cat.jpg"]))

Artifacts in `export_dir`: `saved_model/` (signatures `serving_default`: encoded image bytes ->
probabilities, top-k ids, names and probabilities; `serving_images`: float 0..255 images -> the
same), `model_{float32,float16,dynamic,int8}.tflite` (float 0..255 [1, H, W, 3] in, or uint8 pixels
for int8; probabilities out; standard TFLite metadata with the labels packed in, which MediaPipe
Tasks and Android read), `model.onnx` (with the `[onnx]` extra), `labels.txt`, `export_info.json`
and the verification report `export_report.json` (LiteRT, ONNX Runtime and, with the `[mobile]`
extra, MediaPipe's ImageClassifier on the held-out images).
"""

from efficientnet_tf.export import mediapipe_check, metadata, onnx
from efficientnet_tf.export.common import FORMATS, TFLITE_FORMATS, check_formats
from efficientnet_tf.export.exporter import default_formats, run_export
from efficientnet_tf.export.onnx import OnnxModel
from efficientnet_tf.export.predict import format_predictions, load_keras_file, load_predictor, run_predict
from efficientnet_tf.export.saved_model import SavedModelPredictor, export_saved_model
from efficientnet_tf.export.tflite import TFLiteModel
from efficientnet_tf.export.verify import format_report

__all__ = [
    "FORMATS",
    "TFLITE_FORMATS",
    "check_formats",
    "SavedModelPredictor",
    "OnnxModel",
    "TFLiteModel",
    "default_formats",
    "export_saved_model",
    "format_predictions",
    "format_report",
    "load_keras_file",
    "load_predictor",
    "mediapipe_check",
    "metadata",
    "onnx",
    "run_export",
    "run_predict",
]
