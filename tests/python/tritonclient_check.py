#!/usr/bin/env python3
"""Compatibility check of a running modelpod server against the official
Triton HTTP client (``tritonclient.http``), used unmodified as a KServe v2
client.

Usage:
    tritonclient_check.py HOST:PORT

The server must serve the fixture repository ``tests/fixtures/models``.
Outputs are compared with ``tests/fixtures/reference/<model>.json``.

Every check is run independently; failures are collected and reported at
the end, followed by a summary line ``tritonclient: N passed, M failed``.
The exit status is 0 when every check passed and 1 otherwise.
"""

import json
import os
import sys

import numpy as np
from checks import Checker
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
MODELS_DIR = os.path.join(FIXTURES, "models")
REFERENCE_DIR = os.path.join(FIXTURES, "reference")

INFER_MODELS = ["mlp", "cnn", "embed", "two_inputs", "int_ops"]
FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
ATOL = 1e-4
RTOL = 1e-4


def load_reference(model):
    with open(os.path.join(REFERENCE_DIR, model + ".json")) as f:
        return json.load(f)


def fixture_models():
    return sorted(
        d for d in os.listdir(MODELS_DIR) if os.path.isdir(os.path.join(MODELS_DIR, d))
    )


def to_numpy(spec):
    dtype = triton_to_np_dtype(spec["datatype"])
    return np.array(spec["data"], dtype=dtype).reshape(spec["shape"])


def compare_output(result, name, expected_spec, where):
    actual = result.as_numpy(name)
    assert actual is not None, "%s: output %r missing from response %r" % (
        where,
        name,
        result.get_response(),
    )
    out_meta = result.get_output(name)
    assert out_meta["datatype"] == expected_spec["datatype"], (
        "%s: output %r datatype: expected %s, server answered %s"
        % (where, name, expected_spec["datatype"], out_meta["datatype"])
    )
    expected = to_numpy(expected_spec)
    assert list(actual.shape) == list(expected.shape), (
        "%s: output %r shape: expected %s, got %s"
        % (where, name, list(expected.shape), list(actual.shape))
    )
    if expected_spec["datatype"] in FLOAT_TYPES:
        a = actual.astype(np.float64)
        e = expected.astype(np.float64)
        ok = np.abs(a - e) <= ATOL + RTOL * np.abs(e)
        if not ok.all():
            idx = np.argwhere(~ok)[0]
            idx_t = tuple(int(i) for i in idx)
            raise AssertionError(
                "%s: output %r differs from reference at %s: expected %r, got %r "
                "(max abs diff %g)"
                % (
                    where,
                    name,
                    list(idx_t),
                    float(e[idx_t]),
                    float(a[idx_t]),
                    float(np.max(np.abs(a - e))),
                )
            )
    else:
        assert actual.dtype == expected.dtype, "%s: output %r numpy dtype: expected %s, got %s" % (
            where,
            name,
            expected.dtype,
            actual.dtype,
        )
        if not np.array_equal(actual, expected):
            diff = np.argwhere(actual != expected)[0]
            idx_t = tuple(int(i) for i in diff)
            raise AssertionError(
                "%s: output %r differs from reference at %s: expected %r, got %r"
                % (where, name, list(idx_t), expected[idx_t].item(), actual[idx_t].item())
            )


def make_inputs(case, binary):
    inputs = []
    for name, spec in case["inputs"].items():
        arr = to_numpy(spec)
        inp = httpclient.InferInput(name, list(arr.shape), spec["datatype"])
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def infer_case(client, model, idx, case, binary):
    where = "%s case %d (%s)" % (model, idx, "binary" if binary else "json")
    inputs = make_inputs(case, binary)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary) for name in case["outputs"]
    ]
    result = client.infer(model, inputs, outputs=outputs)
    response = result.get_response()
    returned = sorted(o["name"] for o in response.get("outputs", []))
    assert returned == sorted(case["outputs"]), "%s: returned outputs %s, expected %s" % (
        where,
        returned,
        sorted(case["outputs"]),
    )
    for name, spec in case["outputs"].items():
        compare_output(result, name, spec, where)
        meta = result.get_output(name)
        if binary:
            assert "binary_data_size" in meta.get("parameters", {}), (
                "%s: output %r was requested as binary but came back as %r" % (where, name, meta)
            )
        else:
            assert "data" in meta, "%s: output %r was requested as JSON but came back as %r" % (
                where,
                name,
                meta,
            )


def single_output(client, binary):
    model = "two_inputs"
    case = load_reference(model)[0]
    where = "%s prod only (%s)" % (model, "binary" if binary else "json")
    inputs = make_inputs(case, binary)
    result = client.infer(
        model, inputs, outputs=[httpclient.InferRequestedOutput("prod", binary_data=binary)]
    )
    response = result.get_response()
    names = [o["name"] for o in response.get("outputs", [])]
    assert names == ["prod"], "%s: expected only output ['prod'], server returned %s" % (
        where,
        names,
    )
    assert result.as_numpy("sum") is None, "%s: output 'sum' present but not requested" % where
    compare_output(result, "prod", case["outputs"]["prod"], where)


def expect_error(fn, must_mention, what):
    try:
        fn()
    except InferenceServerException as e:
        msg = str(e)
        if must_mention is not None:
            assert must_mention in msg, "%s: error message %r does not mention %r" % (
                what,
                msg,
                must_mention,
            )
        return
    raise AssertionError("%s: expected InferenceServerException, request succeeded" % what)


def main(argv):
    if len(argv) != 2:
        print("usage: %s HOST:PORT" % argv[0], file=sys.stderr)
        return 2
    url = argv[1]
    client = httpclient.InferenceServerClient(url=url, network_timeout=60.0)
    c = Checker("tritonclient")

    # Fail fast (with one clear message) when nothing answers at URL.
    try:
        client.is_server_live()
    except (OSError, InferenceServerException) as e:
        print("FAIL connect: cannot reach a v2 server at %s: %s" % (url, e))
        print("tritonclient: 0 passed, 1 failed")
        return 1

    # ---- health and metadata -------------------------------------------------
    def live():
        assert client.is_server_live() is True, "is_server_live() returned False"

    def ready():
        # Strict readiness is false while the 'broken' model is unavailable;
        # only require a well-formed boolean answer.
        r = client.is_server_ready()
        assert r in (True, False), "is_server_ready() returned %r" % (r,)

    def server_metadata():
        md = client.get_server_metadata()
        assert md.get("name") == "modelpod", "server metadata name: %r" % (md.get("name"),)

    def mlp_ready():
        assert client.is_model_ready("mlp") is True, "is_model_ready('mlp') returned False"

    def broken_not_ready():
        assert client.is_model_ready("broken") is False, "is_model_ready('broken') returned True"

    def mlp_metadata():
        md = client.get_model_metadata("mlp")
        assert md.get("name") == "mlp", "model metadata name: %r" % (md.get("name"),)
        ins = [(i["name"], i["datatype"], list(i["shape"])) for i in md.get("inputs", [])]
        outs = [(o["name"], o["datatype"], list(o["shape"])) for o in md.get("outputs", [])]
        assert ins == [("input", "FP32", [-1, 4])], "mlp metadata inputs: %r" % (ins,)
        assert outs == [("logits", "FP32", [-1, 3])], "mlp metadata outputs: %r" % (outs,)

    def mlp_config():
        cfg = client.get_model_config("mlp")
        assert cfg.get("max_batch_size") == 32, "mlp config max_batch_size: %r" % (
            cfg.get("max_batch_size"),
        )

    def repository_index():
        index = client.get_model_repository_index()
        assert isinstance(index, list), "repository index is not a list: %r" % (index,)
        names = {m.get("name") for m in index}
        missing = [m for m in fixture_models() if m not in names]
        assert not missing, "repository index lacks %s (got %s)" % (missing, sorted(names))

    c.check("server live", live)
    c.check("server ready is boolean", ready)
    c.check("server metadata", server_metadata)
    c.check("model ready mlp", mlp_ready)
    c.check("model not ready broken", broken_not_ready)
    c.check("model metadata mlp", mlp_metadata)
    c.check("model config mlp", mlp_config)
    c.check("repository index", repository_index)

    # ---- inference against the reference ------------------------------------
    for model in INFER_MODELS:
        for idx, case in enumerate(load_reference(model)):
            for binary in (True, False):
                c.check(
                    "infer %s case %d %s" % (model, idx, "binary" if binary else "json"),
                    infer_case,
                    client,
                    model,
                    idx,
                    case,
                    binary,
                )

    for binary in (True, False):
        c.check(
            "single requested output (%s)" % ("binary" if binary else "json"),
            single_output,
            client,
            binary,
        )

    # ---- error handling ------------------------------------------------------
    def unknown_model():
        name = "no_such_model_xyz"
        inp = httpclient.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32), binary_data=True)
        expect_error(lambda: client.infer(name, [inp]), name, "infer on unknown model")

    def wrong_datatype():
        inp = httpclient.InferInput("input", [1, 4], "INT64")
        inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.int64), binary_data=True)
        expect_error(lambda: client.infer("mlp", [inp]), "FP32", "INT64 input to mlp")

    def wrong_shape():
        inp = httpclient.InferInput("input", [1, 5], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32), binary_data=True)
        expect_error(lambda: client.infer("mlp", [inp]), None, "shape [1,5] on mlp")

    c.check("error: unknown model", unknown_model)
    c.check("error: wrong datatype", wrong_datatype)
    c.check("error: wrong shape", wrong_shape)

    # ---- model control -------------------------------------------------------
    def unload_then_not_ready():
        client.unload_model("int_ops")
        assert client.is_model_ready("int_ops") is False, (
            "is_model_ready('int_ops') is True after unload_model"
        )

    def load_then_ready():
        client.load_model("int_ops")
        assert client.is_model_ready("int_ops") is True, (
            "is_model_ready('int_ops') is False after load_model"
        )

    c.check("unload int_ops", unload_then_not_ready)
    c.check("load int_ops", load_then_ready)

    client.close()

    return c.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
