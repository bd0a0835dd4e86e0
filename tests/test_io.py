"""Tests for graphprune.io: loading bad inputs, safe external data, atomic saves."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import io as gio
from graphprune.errors import InputError, OutputError, UsageError


# --------------------------------------------------------------------------- helpers


def tiny_model(weight_shape=(16, 3, 3, 3), opset=17) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(W: 16x3x3x3, 1728 bytes) -> Relu -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal(weight_shape).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(weight_shape[0], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight_shape[0], 8, 8])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def folder_state(folder) -> dict:
    return {name: digest(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name))}


def expect_input_error(path, *words) -> str:
    """load_model(path) raises a one-line InputError mentioning ``words``, and the
    folder holding ``path`` is byte-for-byte unchanged."""
    folder = os.path.dirname(os.path.abspath(path))
    before = folder_state(folder) if os.path.isdir(folder) else None
    with pytest.raises(InputError) as ei:
        gio.load_model(path)
    msg = ei.value.message
    assert msg and "\n" not in msg and "\r" not in msg
    assert str(path) in msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert ei.value.exit_code == 3
    if before is not None:
        assert folder_state(folder) == before
    return msg


def write_external(model: onnx.ModelProto, folder, name="m.onnx", location="m.data"):
    """Save ``model`` with all tensors in external file ``location`` using onnx."""
    path = os.path.join(folder, name)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def set_location(path, location):
    """Rewrite every external-data location of the model file at ``path``."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


# --------------------------------------------------------------------------- load: good


def test_load_roundtrip_inline(tmp_path):
    m = tiny_model()
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    before = digest(p)
    loaded = gio.load_model(p)
    assert loaded == m
    assert digest(p) == before


def test_load_external_data_from_other_cwd(tmp_path, monkeypatch):
    m = tiny_model()
    sub = tmp_path / "model_dir"
    sub.mkdir()
    path = write_external(m, sub)
    before = folder_state(sub)
    monkeypatch.chdir(tmp_path)  # locations are relative to the model, not the cwd
    loaded = gio.load_model(path)
    assert loaded == m
    assert not any(t.external_data for t in loaded.graph.initializer)
    assert folder_state(sub) == before


# --------------------------------------------------------------------------- load: bad


def test_missing_file(tmp_path):
    expect_input_error(tmp_path / "nope.onnx", "not found")


def test_directory(tmp_path):
    d = tmp_path / "dir.onnx"
    d.mkdir()
    expect_input_error(d, "directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    expect_input_error(p, "empty")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    p = tmp_path / "random.onnx"
    p.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_input_error(p, "not an ONNX model")


def test_text_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("hello, this is not a model\n")
    expect_input_error(p, "not an ONNX model")


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.99])
def test_truncated_protobuf(tmp_path, keep):
    data = tiny_model().SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: int(len(data) * keep)])
    expect_input_error(p)


def test_truncated_protobuf_every_cut(tmp_path):
    """No cut point of a real model loads silently or escapes as another error."""
    data = tiny_model(weight_shape=(2, 3, 1, 1)).SerializeToString()
    p = tmp_path / "cut.onnx"
    for cut in range(1, len(data), 7):
        p.write_bytes(data[:cut])
        with pytest.raises(InputError) as ei:
            gio.load_model(p)
        assert "\n" not in ei.value.message


def test_protobuf_without_graph(tmp_path):
    p = tmp_path / "nograph.onnx"
    p.write_bytes(onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString())
    expect_input_error(p, "no graph")


def test_protobuf_graph_without_nodes(tmp_path):
    m = tiny_model()
    del m.graph.node[:]
    p = tmp_path / "nonodes.onnx"
    p.write_bytes(m.SerializeToString())
    expect_input_error(p, "no nodes")


def test_other_protobuf_message(tmp_path):
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "t")
    p = tmp_path / "tensor.pb"
    p.write_bytes(t.SerializeToString())
    expect_input_error(p, "not an ONNX model")


def test_checker_failure_message_has_first_line(tmp_path):
    m = tiny_model()
    m.graph.node[1].op_type = "NoSuchOp"
    p = tmp_path / "bad.onnx"
    p.write_bytes(m.SerializeToString())
    try:
        onnx.checker.check_model(m)
    except Exception as e:  # noqa: BLE001 - just grab the checker's text
        first = str(e).strip().splitlines()[0]
    msg = expect_input_error(p, "checker")
    assert first in msg


def test_checker_failure_missing_ir_version(tmp_path):
    m = tiny_model()
    m.ClearField("ir_version")
    p = tmp_path / "noir.onnx"
    p.write_bytes(m.SerializeToString())
    expect_input_error(p, "checker")


def test_external_data_missing(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    os.remove(tmp_path / "m.data")
    expect_input_error(path, "m.data", "not found")


def test_external_data_truncated(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    data = (tmp_path / "m.data").read_bytes()
    (tmp_path / "m.data").write_bytes(data[: len(data) // 2])
    expect_input_error(path, "truncated")


def test_external_data_truncated_without_length(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        keep = [(e.key, e.value) for e in t.external_data if e.key != "length"]
        del t.external_data[:]
        for k, v in keep:
            e = t.external_data.add()
            e.key, e.value = k, v
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    data = (tmp_path / "m.data").read_bytes()
    (tmp_path / "m.data").write_bytes(data[:100])
    expect_input_error(path, "truncated")


def test_external_data_length_mismatch(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    m = onnx.load(path, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(int(e.value) - 4)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    expect_input_error(path, "expected")


def test_external_data_location_is_directory(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    (tmp_path / "adir").mkdir()
    set_location(path, "adir")
    expect_input_error(path, "not a regular file")


@pytest.mark.parametrize("loc", ["../secret.bin", "sub/../../secret.bin", "..\\secret.bin"])
def test_external_data_path_traversal_refused(tmp_path, loc):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path = write_external(tiny_model(), model_dir)
    # Put a perfectly good data file outside the folder: it must still be refused.
    (tmp_path / "secret.bin").write_bytes((model_dir / "m.data").read_bytes())
    secret_before = digest(tmp_path / "secret.bin")
    set_location(path, loc)
    expect_input_error(path, "refused")
    assert digest(tmp_path / "secret.bin") == secret_before


def test_external_data_absolute_path_refused(tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path = write_external(tiny_model(), model_dir)
    set_location(path, str(model_dir / "m.data"))  # absolute, even if inside
    expect_input_error(path, "absolute", "refused")


def test_external_data_symlink_escape_refused(tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path = write_external(tiny_model(), model_dir)
    os.replace(model_dir / "m.data", tmp_path / "outside.data")
    os.symlink(tmp_path / "outside.data", model_dir / "m.data")
    expect_input_error(path, "outside", "refused")


def test_messages_are_single_line_even_with_newline_in_path(tmp_path):
    d = tmp_path / "a\nb"
    d.mkdir()
    p = d / "m.onnx"
    p.write_bytes(b"")
    with pytest.raises(InputError) as ei:
        gio.load_model(p)
    assert "\n" not in ei.value.message


# --------------------------------------------------------------------------- IR pin


def test_pin_ir_version():
    m = tiny_model(opset=17)
    assert m.ir_version > gio.ORT_MAX_IR  # onnx 1.23 writes 14
    assert gio.pin_ir_version(m) == 10 and m.ir_version == 10
    old = tiny_model(opset=13)
    old.ir_version = 7
    assert gio.pin_ir_version(old) == 7  # never raised
    new = tiny_model(opset=23)
    v = gio.pin_ir_version(new)
    assert 10 <= v <= gio.ORT_MAX_IR


def test_pinned_model_runs_in_onnxruntime():
    import onnxruntime as ort

    m = tiny_model()
    gio.pin_ir_version(m)
    sess = ort.InferenceSession(gio.model_to_bytes(m), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert y.shape == (1, 16, 8, 8)


# --------------------------------------------------------------------------- save


def test_save_inline_deterministic_and_no_temp_files(tmp_path):
    m = tiny_model()
    before = m.SerializeToString()
    gio.save_model(m, tmp_path / "a.onnx")
    gio.save_model(m, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() == gio.model_to_bytes(m)
    assert m.SerializeToString() == before
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx"]
    assert gio.load_model(tmp_path / "a.onnx") == m


def test_save_overwrites_existing_file(tmp_path):
    p = tmp_path / "a.onnx"
    p.write_bytes(b"old")
    gio.save_model(tiny_model(), p)
    assert gio.load_model(p) == tiny_model()
    assert os.listdir(tmp_path) == ["a.onnx"]


def test_save_external_data_roundtrip(tmp_path):
    m = tiny_model()
    before = m.SerializeToString()
    out = tmp_path / "pruned.onnx"
    gio.save_model(m, out, external_data=True)
    assert m.SerializeToString() == before  # caller's model untouched
    assert sorted(os.listdir(tmp_path)) == ["pruned.onnx", "pruned.onnx.data"]
    # The big weight is in the sidecar, the small bias stayed inline.
    raw = onnx.load(str(out), load_external_data=False)
    w = [t for t in raw.graph.initializer if t.name == "W"][0]
    assert w.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in w.external_data}["location"] == "pruned.onnx.data"
    assert os.path.getsize(tmp_path / "pruned.onnx.data") == 16 * 3 * 3 * 3 * 4
    loaded = gio.load_model(out)
    assert loaded == m
    # Saving the loaded model again gives the same bytes (deterministic).
    gio.save_model(loaded, tmp_path / "again.onnx", external_data=True)
    assert (tmp_path / "again.onnx.data").read_bytes() == (tmp_path / "pruned.onnx.data").read_bytes()
    a = onnx.load(str(tmp_path / "again.onnx"), load_external_data=False)
    p = onnx.load(str(out), load_external_data=False)
    for t in a.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "pruned.onnx.data"
    assert a.SerializeToString(deterministic=True) == p.SerializeToString(deterministic=True)


def test_save_external_data_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    m = tiny_model()
    gio.pin_ir_version(m)
    out = tmp_path / "e.onnx"
    gio.save_model(m, out, external_data=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess2 = ort.InferenceSession(gio.model_to_bytes(m), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], sess2.run(None, {"x": x})[0])


def test_save_typed_field_tensor_external(tmp_path):
    m = tiny_model()
    w = m.graph.initializer[0]
    arr = numpy_helper.to_array(w)
    w.ClearField("raw_data")
    w.float_data.extend(arr.ravel().tolist())
    before = m.SerializeToString()
    gio.save_model(m, tmp_path / "t.onnx", external_data=True)
    assert m.SerializeToString() == before
    loaded = gio.load_model(tmp_path / "t.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), arr)


def test_save_missing_folder_leaves_nothing(tmp_path):
    with pytest.raises(OutputError) as ei:
        gio.save_model(tiny_model(), tmp_path / "missing" / "m.onnx")
    assert "\n" not in ei.value.message and ei.value.exit_code == 4
    assert os.listdir(tmp_path) == []


def test_save_onto_directory_leaves_nothing(tmp_path):
    d = tmp_path / "out.onnx"
    d.mkdir()
    with pytest.raises(OutputError) as ei:
        gio.save_model(tiny_model(), d)
    assert "directory" in ei.value.message
    assert os.listdir(tmp_path) == ["out.onnx"] and os.listdir(d) == []


def test_save_sidecar_is_directory_cleans_temp_files(tmp_path):
    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(OutputError):
        gio.save_model(tiny_model(), tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == ["m.onnx.data"]


def test_rename_failure_cleans_temp_files(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.os, "replace", boom)
    with pytest.raises(OutputError) as ei:
        gio.save_model(tiny_model(), tmp_path / "m.onnx", external_data=True)
    assert "No space left" in ei.value.message
    assert os.listdir(tmp_path) == []


def test_write_failure_cleans_temp_files(tmp_path):
    with pytest.raises(OutputError):
        gio.save_bytes_atomic("not bytes", tmp_path / "r.bin")  # fails inside the write
    assert os.listdir(tmp_path) == []


def test_save_unloaded_external_model_refused(tmp_path):
    path = write_external(tiny_model(), tmp_path)
    raw = onnx.load(path, load_external_data=False)
    out = tmp_path / "sub"
    out.mkdir()
    with pytest.raises(OutputError):
        gio.save_model(raw, out / "x.onnx")
    assert os.listdir(out) == []


def test_save_bytes_and_json_atomic(tmp_path):
    gio.save_bytes_atomic(b"\x00\x01", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    obj = {"zeta": 1, "alpha": np.float32(0.5), "n": np.int64(3), "arr": np.arange(3), "s": "ü"}
    gio.save_json_atomic(obj, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index("zeta") < text.index("alpha")  # insertion order
    assert json.loads(text) == {"zeta": 1, "alpha": 0.5, "n": 3, "arr": [0, 1, 2], "s": "ü"}
    assert '\n  "zeta": 1' in text  # indent 2
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "r.json"]
    with pytest.raises(OutputError):
        gio.save_bytes_atomic(b"x", tmp_path / "nope" / "b.bin")


def test_saved_file_mode_is_not_private(tmp_path):
    gio.save_model(tiny_model(), tmp_path / "m.onnx")
    assert os.stat(tmp_path / "m.onnx").st_mode & 0o044  # readable by others (umask permitting)


def test_model_to_bytes_deterministic():
    m = tiny_model()
    m.metadata_props.add(key="k", value="v")
    assert gio.model_to_bytes(m) == gio.model_to_bytes(tiny_model().__class__.FromString(m.SerializeToString()))


# --------------------------------------------------------------------------- output path


def test_check_output_path(tmp_path, monkeypatch):
    inp = tmp_path / "m.onnx"
    inp.write_bytes(tiny_model().SerializeToString())
    with pytest.raises(UsageError):
        gio.check_output_path(inp, inp)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError):
        gio.check_output_path("./m.onnx", str(inp))
    os.symlink(inp, tmp_path / "link.onnx")
    with pytest.raises(UsageError):
        gio.check_output_path(tmp_path / "link.onnx", inp)
    with pytest.raises(OutputError):
        gio.check_output_path(tmp_path / "missing" / "o.onnx", inp)
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError):
        gio.check_output_path(tmp_path / "d", inp)
    gio.check_output_path(tmp_path / "o.onnx", inp)  # fine
    gio.check_output_path(tmp_path / "o.onnx")


def test_check_output_path_sidecar_collides_with_input_data(tmp_path):
    path = write_external(tiny_model(), tmp_path, location="out.onnx.data")
    with pytest.raises(UsageError):
        gio.check_output_path(tmp_path / "out.onnx", path)


def test_auto_external_data_above_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(gio, "EXTERNAL_DATA_THRESHOLD", 1000)  # stands in for 1.8 GB
    m = tiny_model()
    gio.save_model(m, tmp_path / "big.onnx")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert gio.load_model(tmp_path / "big.onnx") == m
    gio.save_model(m, tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()


def test_large_tensors_are_aligned_in_sidecar(tmp_path):
    m = tiny_model()
    big = numpy_helper.from_array(np.arange(300_000, dtype=np.float32), "big")  # 1.2 MB
    m.graph.initializer.append(big)
    gio.save_model(m, tmp_path / "a.onnx", external_data=True)
    raw = onnx.load(str(tmp_path / "a.onnx"), load_external_data=False)
    info = {e.key: e.value for e in [t for t in raw.graph.initializer if t.name == "big"][0].external_data}
    assert int(info["offset"]) % 65536 == 0 and int(info["offset"]) > 0
    loaded = gio.load_model(tmp_path / "a.onnx")
    np.testing.assert_array_equal(
        numpy_helper.to_array([t for t in loaded.graph.initializer if t.name == "big"][0]), np.arange(300_000, dtype=np.float32)
    )
