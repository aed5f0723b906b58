"""The export formats, one module each (`FORMAT`), listed by efficientnet_tf.export.registry; `base` holds what
every format declares and the rows and rules they share, `litert` what the four TFLite flavours share."""
