#!/usr/bin/env python3
"""Writes N distinct real ONNX models of mixed sizes for the density benchmark.

    .venv/bin/python benches/density/make_models.py N OUT

Every model takes x: FP32 [batch, 64] and returns y: FP32 [batch, 10], so one request body
serves them all. By index: 6 in 10 are small MLPs (64-32-10, 9 KB), 3 in 10 medium MLPs
(64-128-128-10, 103 KB), 1 in 10 small CNNs (x as 1x8x8, two 3x3 convolutions, global
pooling, 6 KB). Weights come from a per-model seed, so every model answers differently.
OUT/expected.json holds ONNX Runtime's answers for 200 sampled models on one fixed input, for
checking that the server answered each request with the right model. Deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
WIDTH_IN, WIDTH_OUT = 64, 10
SAMPLES = 200


def linear(rng, name, fan_in, fan_out):
    w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
    b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def mlp(rng, widths):
    inits, nodes, current = [], [], "x"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        inits += linear(rng, f"l{i}", a, b)
        out = "y" if i == len(widths) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"l{i}_w", f"l{i}_b"], [f"{out}_pre" if out != "y" else "y"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"{out}_pre"], [out]))
        current = out
    return nodes, inits


def cnn(rng):
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
        numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32), "c1_w"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "c1_b"),
        numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) / 8.5).astype(np.float32), "c2_w"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "c2_b"),
    ] + linear(rng, "fc", 16, WIDTH_OUT)
    nodes = [
        helper.make_node("Reshape", ["x", "image_shape"], ["image"]),
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["y"]),
    ]
    return nodes, inits


def model(index: int) -> onnx.ModelProto:
    rng = np.random.default_rng(1_000_003 * index + 17)
    kind = index % 10
    if kind < 6:
        nodes, inits = mlp(rng, [WIDTH_IN, 32, WIDTH_OUT])
    elif kind < 9:
        nodes, inits = mlp(rng, [WIDTH_IN, 128, 128, WIDTH_OUT])
    else:
        nodes, inits = cnn(rng)
    graph = helper.make_graph(
        nodes, f"density_{index}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH_OUT])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelpod-density")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


def name(index: int) -> str:
    return f"m{index:05d}"


def main() -> None:
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-1, 1, WIDTH_IN, dtype=np.float32).reshape(1, WIDTH_IN)
    sampled = set(range(0, count, max(1, count // SAMPLES)))
    expected = {"input": x.ravel().tolist(), "outputs": {}}
    for i in range(count):
        target = out / name(i) / "1" / "model.onnx"
        if target.exists() and i not in sampled:
            continue
        m = model(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = m.SerializeToString()
        target.write_bytes(data)
        if i in sampled:
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            expected["outputs"][name(i)] = session.run(None, {"x": x})[0].ravel().tolist()
    (out / "models.txt").write_text("".join(f"{name(i)}\n" for i in range(count)))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
