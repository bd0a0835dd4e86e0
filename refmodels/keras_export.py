"""A small Keras encoder exported by tf2onnx: the TensorFlow-side reference model of the tests.

Two post-LN blocks (MultiHeadAttention 4 heads x 8, Dense 64 + ReLU, Dense 32) on [batch, 16, 32],
global average pooling, Dense 10; random weights (seed 0). tf2onnx writes Keras' Dense on a 3-D
input as a Tensordot (Reshape to [-1, C] -> MatMul -> Reshape back to a shape computed at run
time from Shape -> Cast -> Gather -> Concat -> Cast) and the attention einsums as
MatMul/Transpose/Reshape chains whose flattened sizes are computed with ReduceProd.

The file it writes, refmodels/keras_encoder.onnx (93 KB), is committed, so the tests need neither
TensorFlow nor tf2onnx (a re-export has the same graph, but tf2onnx's constant names and the
random weights differ from run to run). To re-create it (TensorFlow 2.21 CPU, Keras 3.15, tf2onnx 1.17)::

    python -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu tf2onnx
    /tmp/venv-tf/bin/python refmodels/keras_export.py refmodels/keras_encoder.onnx
"""

import os
import sys


def _convert(model, shape, path: str, opset: int = 17, ir_version: int = 8, input_name: str = "input") -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None,) + tuple(shape), tf.float32, name=input_name),)
    fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    proto.ir_version = min(proto.ir_version, ir_version)   # onnxruntime reads at most IR 13
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def export_application(name: str, path: str, opset: int = 17, ir_version: int = 10) -> None:
    """A keras.applications model (random weights, 224x224x3, NHWC) exported by tf2onnx
    (tools/zoo.py --source keras)."""
    import tensorflow as tf

    tf.random.set_seed(0)
    model = getattr(tf.keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    _convert(model, (224, 224, 3), path, opset, ir_version)


def build_and_export(path: str) -> None:
    import tensorflow as tf

    tf.random.set_seed(0)
    T, C = 16, 32
    inp = tf.keras.Input((T, C), name="x")
    x = inp
    for i in range(2):
        a = tf.keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name=f"mha{i}")(x, x)
        x = tf.keras.layers.LayerNormalization(name=f"ln{i}a")(x + a)
        f = tf.keras.layers.Dense(64, activation="relu", name=f"ff{i}a")(x)
        f = tf.keras.layers.Dense(C, name=f"ff{i}b")(f)
        x = tf.keras.layers.LayerNormalization(name=f"ln{i}b")(x + f)
    out = tf.keras.layers.Dense(10, name="head")(tf.keras.layers.GlobalAveragePooling1D()(x))
    _convert(tf.keras.Model(inp, out), (T, C), path, opset=17, ir_version=8, input_name="x")


if __name__ == "__main__":
    build_and_export(sys.argv[1] if len(sys.argv) > 1 else "refmodels/keras_encoder.onnx")
