#!/usr/bin/env python3
"""The Triton features beyond plain HTTP inference, driven through the unmodified
``tritonclient`` package (HTTP and gRPC clients, its shared memory utilities) the
way Triton's own client examples use them, against a modelpod server that
serves ``tests/fixtures/models``.

Usage:
    triton_protocol_check.py HTTP_HOST:PORT GRPC_HOST:PORT

Every check runs on its own; failures are reported at the end, then a summary
line ``triton protocol: N passed, M failed``. Exit status 0 only if all passed.
"""

import json
import os
import queue
import sys
import time
import urllib.error
import urllib.request
from functools import partial

import grpc
import numpy as np
from checks import Checker
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
REFERENCE_DIR = os.path.join(FIXTURES, "reference")
INFER_MODELS = ["mlp", "cnn", "embed", "two_inputs", "int_ops", "categories", "half_ops", "bf16_ops"]
ATOL = 1e-4
# Relative tolerance by datatype: one unit in the last place for the half-precision types.
RTOL = {"FP32": 1e-4, "FP64": 1e-4, "FP16": 2.0 ** -10, "BF16": 2.0 ** -7}


def reference(model):
    with open(os.path.join(REFERENCE_DIR, model + ".json")) as f:
        return json.load(f)


def to_numpy(spec):
    if spec["datatype"] == "BYTES":
        return np.array([s.encode() for s in spec["data"]], dtype=np.object_).reshape(spec["shape"])
    return np.array(spec["data"], dtype=triton_to_np_dtype(spec["datatype"])).reshape(spec["shape"])


def assert_close(actual, spec, where):
    expected = to_numpy(spec)
    assert actual is not None, "%s: output missing" % where
    assert list(actual.shape) == list(expected.shape), "%s: shape %s, expected %s" % (
        where, list(actual.shape), list(expected.shape))
    assert actual.dtype == expected.dtype, "%s: dtype %s, expected %s" % (where, actual.dtype, expected.dtype)
    if spec["datatype"] in RTOL:
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
        ok = np.abs(actual - expected) <= ATOL + RTOL[spec["datatype"]] * np.abs(expected)
        assert ok.all(), "%s: max abs diff %g" % (where, np.max(np.abs(actual - expected)))
    else:
        assert np.array_equal(actual, expected), "%s: %r != %r" % (where, actual, expected)


def grpc_inputs(case):
    inputs = []
    for name, spec in case["inputs"].items():
        array = to_numpy(spec)
        tensor = grpcclient.InferInput(name, list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def expect_error(fn, must_mention, what, status=None):
    try:
        fn()
    except InferenceServerException as e:
        assert must_mention in str(e), "%s: %r does not mention %r" % (what, str(e), must_mention)
        if status is not None:
            assert e.status() == status, "%s: status %r, expected %r" % (what, e.status(), status)
        return
    raise AssertionError("%s: the request succeeded" % what)


def http_post(url, path, body, headers=None):
    """A raw POST, for requests tritonclient cannot be made to send; returns (status, JSON)."""
    request = urllib.request.Request(
        "http://%s%s" % (url, path), data=body, method="POST",
        headers=dict({"Content-Type": "application/json"}, **(headers or {})))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def main(argv):
    if len(argv) != 3:
        print("usage: %s HTTP_HOST:PORT GRPC_HOST:PORT" % argv[0], file=sys.stderr)
        return 2
    http_url, grpc_url = argv[1], argv[2]
    http = httpclient.InferenceServerClient(url=http_url, concurrency=4)
    client = grpcclient.InferenceServerClient(url=grpc_url)
    c = Checker("triton protocol")

    # ---- gRPC health and metadata ------------------------------------------
    def health():
        assert client.is_server_live()
        assert client.is_model_ready("mlp")
        assert not client.is_model_ready("broken")
        assert not client.is_model_ready("no_such_model")

    def server_metadata():
        for metadata in (client.get_server_metadata(as_json=True), http.get_server_metadata()):
            assert metadata["name"] == "modelpod", metadata
            for extension in ("statistics", "system_shared_memory", "classification", "sequence",
                              "binary_tensor_data", "model_repository", "model_configuration"):
                assert extension in metadata["extensions"], (extension, metadata)
            assert "cuda_shared_memory" not in metadata["extensions"], metadata

    def model_metadata():
        metadata = client.get_model_metadata("mlp", as_json=True)
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}], metadata
        assert metadata["outputs"][0]["name"] == "logits", metadata

    def model_config():
        config = client.get_model_config("mlp", as_json=True)["config"]
        assert config["max_batch_size"] == 32, config
        assert config["input"][0]["data_type"] == "TYPE_FP32", config
        assert config["input"][0]["dims"] == ["4"], config
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "500", config

    def grpc_health_v1():
        channel = grpc.insecure_channel(grpc_url)
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        # HealthCheckRequest{} is empty; HealthCheckResponse{status} is 08 01 when SERVING,
        # 08 02 when NOT_SERVING: the server's readiness (false here while 'broken' fails).
        answer = check(b"", timeout=10)
        expected = b"\x08\x01" if client.is_server_ready() else b"\x08\x02"
        assert answer == expected, "grpc.health.v1 answered %r, expected %r" % (answer, expected)
        channel.close()

    c.check("grpc health", health)
    c.check("server metadata lists the extensions", server_metadata)
    c.check("grpc model metadata", model_metadata)
    c.check("grpc model config", model_config)
    c.check("grpc.health.v1 Check", grpc_health_v1)

    # ---- gRPC inference against the reference --------------------------------
    def infer(model, idx, case):
        outputs = [grpcclient.InferRequestedOutput(name) for name in case["outputs"]]
        result = client.infer(model, grpc_inputs(case), outputs=outputs)
        for name, spec in case["outputs"].items():
            assert_close(result.as_numpy(name), spec, "%s[%d].%s" % (model, idx, name))

    for model in INFER_MODELS:
        for idx, case in enumerate(reference(model)):
            c.check("grpc infer %s case %d" % (model, idx), infer, model, idx, case)

    def async_infer():
        case = reference("mlp")[1]
        done = queue.Queue()
        for _ in range(4):
            client.async_infer("mlp", grpc_inputs(case),
                               partial(lambda q, result, error: q.put((result, error)), done))
        for _ in range(4):
            result, error = done.get(timeout=30)
            assert error is None, error
            assert_close(result.as_numpy("logits"), case["outputs"]["logits"], "async grpc")
        pending = [http.async_infer("mlp", [http_input(case)]) for _ in range(4)]
        for request in pending:
            assert_close(request.get_result().as_numpy("logits"), case["outputs"]["logits"], "async http")

    def http_input(case):
        spec = case["inputs"]["input"]
        tensor = httpclient.InferInput("input", spec["shape"], "FP32")
        tensor.set_data_from_numpy(to_numpy(spec))
        return tensor

    def stream_infer():
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        cases = reference("mlp")
        for i, case in enumerate(cases):
            client.async_stream_infer("mlp", grpc_inputs(case), request_id=str(i))
        bad = grpcclient.InferInput("input", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        seen = {}
        for _ in range(len(cases) + 1):
            result, error = results.get(timeout=30)
            if error is not None:
                seen["bad"] = str(error)
            else:
                seen[result.get_response().id] = result
        client.stop_stream()
        for i, case in enumerate(cases):
            assert_close(seen[str(i)].as_numpy("logits"), case["outputs"]["logits"], "stream %d" % i)
        assert "bad" in seen, "the bad request got no error in the stream: %r" % list(seen)

    def half_precision_over_http():
        # FP16 as binary and as JSON numbers; BF16 as binary (tritonclient sends it no other way).
        for model, json_too in (("half_ops", True), ("bf16_ops", False)):
            case = reference(model)[1]
            spec = case["inputs"]["x"]
            for binary in (True, False) if json_too else (True,):
                tensor = httpclient.InferInput("x", spec["shape"], spec["datatype"])
                tensor.set_data_from_numpy(to_numpy(spec), binary_data=binary)
                outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in case["outputs"]]
                result = http.infer(model, [tensor], outputs=outputs)
                for name, out in case["outputs"].items():
                    assert_close(result.as_numpy(name), out, "%s.%s (binary %s)" % (model, name, binary))
        # The protocol has no typed contents field for FP16: a typed request is refused.
        request = service_pb2.ModelInferRequest(model_name="half_ops")
        tensor = request.inputs.add(name="x", datatype="FP16", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
        with grpc.insecure_channel(grpc_url) as channel:
            try:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
                assert "raw_input_contents" in e.details(), e.details()
            else:
                raise AssertionError("typed FP16 contents were accepted")

    c.check("FP16 and BF16 over http", half_precision_over_http)
    c.check("async infer (grpc callbacks, http futures)", async_infer)
    c.check("streaming infer, an error in the stream", stream_infer)

    # ---- system shared memory (simple_grpc_shm_client's steps) ---------------
    def shared_memory(protocol):
        api = client if protocol == "grpc" else http
        module = grpcclient if protocol == "grpc" else httpclient
        case = reference("mlp")[1]
        data = to_numpy(case["inputs"]["input"])
        expected = to_numpy(case["outputs"]["logits"])
        api.unregister_system_shared_memory()
        in_key, out_key = "/modelpod_in_%s" % protocol, "/modelpod_out_%s" % protocol
        in_handle = shm.create_shared_memory_region("input_data", in_key, data.nbytes)
        out_handle = shm.create_shared_memory_region("output_data", out_key, expected.nbytes)
        try:
            shm.set_shared_memory_region(in_handle, [data])
            api.register_system_shared_memory("input_data", in_key, data.nbytes)
            api.register_system_shared_memory("output_data", out_key, expected.nbytes)
            status = api.get_system_shared_memory_status()
            if protocol == "grpc":
                names = sorted(status.regions)
            else:
                names = sorted(region["name"] for region in status)
            assert names == ["input_data", "output_data"], names
            tensor = module.InferInput("input", list(data.shape), "FP32")
            tensor.set_shared_memory("input_data", data.nbytes)
            output = module.InferRequestedOutput("logits")
            output.set_shared_memory("output_data", expected.nbytes)
            result = api.infer("mlp", [tensor], outputs=[output])
            # As simple_*_shm_client: the output names its datatype and shape, its data is
            # in the region (and, as Triton answers, it carries no parameters).
            meta = result.get_output("logits")
            if protocol == "grpc":
                assert meta.datatype == "FP32" and list(meta.shape) == list(expected.shape), meta
                assert not meta.parameters, meta
            else:
                assert meta["datatype"] == "FP32" and "parameters" not in meta, meta
            actual = shm.get_contents_as_numpy(out_handle, np.float32, list(expected.shape))
            assert_close(actual, case["outputs"]["logits"], "shm %s" % protocol)
            # Too small a region for the output is refused, naming the sizes.
            small = module.InferRequestedOutput("logits")
            small.set_shared_memory("output_data", 4)
            expect_error(lambda: api.infer("mlp", [tensor], outputs=[small]),
                         "should be at least", "output region too small")
            # A read past the region's end is refused.
            past = module.InferInput("input", list(data.shape), "FP32")
            past.set_shared_memory("input_data", data.nbytes, offset=8)
            expect_error(lambda: api.infer("mlp", [past]), "out of bounds", "read past the region")
            expect_error(lambda: api.register_system_shared_memory("evil", "/../etc/passwd", 4),
                         "must be one name", "a key outside /dev/shm")
            api.unregister_system_shared_memory("input_data")
            expect_error(lambda: api.infer("mlp", [tensor]), "input_data", "an unregistered region")
        finally:
            api.unregister_system_shared_memory()
            shm.destroy_shared_memory_region(in_handle)
            shm.destroy_shared_memory_region(out_handle)

    def cuda_shared_memory_refused():
        # No CUDA region can be registered: none is listed, unregistering has nothing to do.
        assert not client.get_cuda_shared_memory_status().regions
        assert http.get_cuda_shared_memory_status() == []
        client.unregister_cuda_shared_memory()
        http.unregister_cuda_shared_memory()
        handle = b"\0" * 64
        expect_error(lambda: client.register_cuda_shared_memory("gpu", handle, 0, 64), "not supported",
                     "grpc cuda shm register")
        expect_error(lambda: http.register_cuda_shared_memory("gpu", handle, 0, 64), "not supported",
                     "http cuda shm register")

    c.check("system shared memory (grpc)", shared_memory, "grpc")
    c.check("system shared memory (http)", shared_memory, "http")
    c.check("CUDA shared memory is refused", cuda_shared_memory_refused)

    # ---- classification -------------------------------------------------------
    def classification():
        case = reference("mlp")[1]
        logits = to_numpy(case["outputs"]["logits"])
        labels = ["setosa", "versicolor", "virginica"]
        for protocol in ("grpc", "http"):
            if protocol == "grpc":
                output = grpcclient.InferRequestedOutput("logits", class_count=2)
                result = client.infer("mlp", grpc_inputs(case), outputs=[output])
            else:
                output = httpclient.InferRequestedOutput("logits", class_count=2)
                result = http.infer("mlp", [http_input(case)], outputs=[output])
            classes = result.as_numpy("logits")
            assert classes.shape == (3, 2), classes.shape
            for row, ranked in zip(logits, classes):
                top = np.argsort(-row)[:2]
                for i, entry in zip(top, ranked):
                    value, index, label = entry.decode().split(":")
                    assert int(index) == i and label == labels[i], (entry, row)
                    assert abs(float(value) - row[i]) < 1e-5, (entry, row)

    c.check("classification (grpc and http)", classification)

    # ---- statistics -------------------------------------------------------------
    def statistics():
        before = client.get_inference_statistics("two_inputs", as_json=True)["model_stats"][0]
        case = reference("two_inputs")[0]
        for _ in range(3):
            client.infer("two_inputs", grpc_inputs(case))
        after = client.get_inference_statistics("two_inputs", as_json=True)["model_stats"][0]
        count = lambda s, key: int(s.get("inference_stats", {}).get(key, {}).get("count", 0))
        assert count(after, "success") - count(before, "success") == 3, (before, after)
        rows = case["inputs"]["a"]["shape"][0]
        assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 3 * rows, after
        assert int(after["execution_count"]) >= 1, after
        assert after["batch_stats"], after
        http_stats = http.get_inference_statistics("two_inputs")["model_stats"][0]
        assert http_stats["inference_stats"]["success"]["count"] >= count(after, "success"), http_stats
        everything = http.get_inference_statistics()["model_stats"]
        assert {"mlp", "two_inputs"} <= {s["name"] for s in everything}, everything
        expect_error(lambda: client.get_inference_statistics("no_such_model"), "no_such_model",
                     "statistics of an unknown model")

    c.check("statistics (grpc and http)", statistics)

    # ---- model control ----------------------------------------------------------
    def model_control():
        client.unload_model("int_ops")
        assert not client.is_model_ready("int_ops")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert any(m["name"] == "int_ops" for m in index), index
        client.load_model("int_ops")
        assert client.is_model_ready("int_ops")
        for api in (client, http):
            expect_error(lambda: api.load_model("int_ops", config='{"max_batch_size": 2}'),
                         "'config'", "a config override")
            expect_error(lambda: api.load_model("int_ops", config="{not json"),
                         "'config'", "a malformed config override")

    c.check("model control (grpc)", model_control)

    # ---- sequences: the stateful accumulator ------------------------------------
    def sequence_inputs(module, value):
        tensor = module.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
        return [tensor]

    VALUES = [11, 7, 5, 3, 2, 0, 1]

    def check_step(result, i, seq_id, expected):
        assert result.as_numpy("OUTPUT")[0][0] == expected, (seq_id, i, result.as_numpy("OUTPUT"))
        assert result.as_numpy("CORRID_OUT")[0][0] == seq_id, result.as_numpy("CORRID_OUT")
        controls = [int(i == 0), int(i == len(VALUES) - 1), 1]
        assert list(result.as_numpy("CONTROLS")[0]) == controls, (i, result.as_numpy("CONTROLS"))

    def sequence_sync(module, api, model, first_id):
        # As Triton's simple_*_sequence_sync_infer_client: two sequences interleaved, the
        # second with negated values; OUTPUT is each one's running sum.
        ids = (first_id, first_id + 1)
        sums = [0, 0]
        for i, value in enumerate(VALUES):
            for s, seq_id in enumerate(ids):
                v = value if s == 0 else -value
                result = api.infer(model, sequence_inputs(module, v), sequence_id=seq_id,
                                   sequence_start=(i == 0), sequence_end=(i == len(VALUES) - 1))
                sums[s] += v
                check_step(result, i, seq_id, sums[s])

    def sequence_stream():
        # As Triton's simple_grpc_sequence_stream_infer_client: every request on one stream.
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        ids = (3000, 3001)
        for i, value in enumerate(VALUES):
            for s, seq_id in enumerate(ids):
                client.async_stream_infer(
                    "accumulator", sequence_inputs(grpcclient, value if s == 0 else -value),
                    request_id="%d_%d" % (seq_id, i), sequence_id=seq_id,
                    sequence_start=(i == 0), sequence_end=(i == len(VALUES) - 1))
        seen = {}
        for _ in range(len(VALUES) * len(ids)):
            result, error = results.get(timeout=30)
            assert error is None, error
            seen[result.get_response().id] = result
        client.stop_stream()
        for s, seq_id in enumerate(ids):
            total = 0
            for i, value in enumerate(VALUES):
                total += value if s == 0 else -value
                check_step(seen["%d_%d" % (seq_id, i)], i, seq_id, total)

    def sequence_oldest_and_idle():
        # Four sequences at once, http futures: the oldest strategy batches across them.
        pending = [(seq_id, http.async_infer("accumulator_oldest", sequence_inputs(httpclient, seq_id),
                                             sequence_id=seq_id, sequence_start=True))
                   for seq_id in range(4000, 4004)]
        for seq_id, request in pending:
            assert request.get_result().as_numpy("OUTPUT")[0][0] == seq_id
        # Idle past 300 ms, a sequence has ended: its next request needs START again.
        time.sleep(0.8)
        expect_error(lambda: client.infer("accumulator_oldest", sequence_inputs(grpcclient, 1), sequence_id=4000),
                     "must specify the START flag", "a request after the idle timeout",
                     status="StatusCode.INVALID_ARGUMENT")

    def sequence_refusals():
        inputs = sequence_inputs(grpcclient, 1)
        expect_error(lambda: client.infer("accumulator", inputs, sequence_id=77),
                     "must specify the START flag on the first request of the sequence",
                     "a sequence without START", status="StatusCode.INVALID_ARGUMENT")
        expect_error(lambda: client.infer("accumulator", inputs),
                     "must specify a non-zero or non-empty correlation ID", "no sequence id")
        expect_error(lambda: http.infer("accumulator", sequence_inputs(httpclient, 1), sequence_id="text", sequence_start=True),
                     "does not fit", "a text id for a UINT64 correlation id")
        expect_error(lambda: client.infer("mlp", grpc_inputs(reference("mlp")[0]), sequence_id=5, sequence_start=True),
                     "not stateful", "a sequence id for a stateless model")
        # Clients see INPUT only; the config lists the batcher's controls.
        assert [i["name"] for i in client.get_model_metadata("accumulator", as_json=True)["inputs"]] == ["INPUT"]
        for config in (client.get_model_config("accumulator", as_json=True)["config"],
                       http.get_model_config("accumulator")):
            batching = config["sequence_batching"]
            names = sorted(c["name"] for c in batching["control_input"])
            assert names == ["CORRID", "END", "READY", "START"], batching
            assert "direct" in batching and "dynamic_batching" not in config, config

    c.check("sequence, sync (grpc)", sequence_sync, grpcclient, client, "accumulator", 1000)
    c.check("sequence, sync (http)", sequence_sync, httpclient, http, "accumulator", 2000)
    c.check("sequence, grpc stream", sequence_stream)
    c.check("sequence, oldest strategy and idle timeout", sequence_oldest_and_idle)
    c.check("sequence refusals and config", sequence_refusals)

    # ---- what modelpod refuses instead of ignoring ------------------------------
    def refusals():
        case = reference("mlp")[0]
        expect_error(lambda: client.infer("mlp", grpc_inputs(case), timeout=1000),
                     "'timeout'", "a timeout parameter (grpc)")
        expect_error(lambda: client.infer("mlp", grpc_inputs(case), priority=3),
                     "'priority'", "a priority (grpc)")
        expect_error(lambda: http.infer("mlp", [http_input(case)], parameters={"colour": 1}),
                     "'colour'", "an unknown parameter (http)")
        twice = [grpcclient.InferRequestedOutput("logits"), grpcclient.InferRequestedOutput("logits")]
        expect_error(lambda: client.infer("mlp", grpc_inputs(case), outputs=twice),
                     "more than once", "the same output twice (grpc)")
        spec = case["inputs"]["input"]
        body = {"inputs": [{"name": "input", "shape": spec["shape"], "datatype": "FP32", "data": spec["data"]}],
                "outputs": [{"name": "logits"}, {"name": "logits"}]}
        status, answer = http_post(http_url, "/v2/models/mlp/infer", json.dumps(body).encode())
        assert status == 400 and "more than once" in answer["error"], (status, answer)
        deep = "[" * 120 + "1" + "]" * 120
        text = '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":%s}]}' % deep
        status, answer = http_post(http_url, "/v2/models/mlp/infer", text.encode())
        assert status == 400 and "deeper than 100" in answer["error"], (status, answer)
        status, answer = http_post(http_url, "/v2/trace/setting", b"{}")
        assert status == 400 and "not supported" in answer["error"], (status, answer)
        expect_error(lambda: client.infer("no_such_model", grpc_inputs(case)), "no_such_model",
                     "an unknown model (grpc)", status="StatusCode.NOT_FOUND")
        bad = grpcclient.InferInput("input", [1, 4], "INT64")
        bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.int64))
        expect_error(lambda: client.infer("mlp", [bad]), "FP32", "a wrong datatype (grpc)",
                     status="StatusCode.INVALID_ARGUMENT")

    def raw_binary_request():
        case = reference("mlp")[1]
        data = to_numpy(case["inputs"]["input"]).tobytes()
        request = urllib.request.Request(
            "http://%s/v2/models/mlp/infer" % http_url, data=data, method="POST",
            headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            header_length = int(response.headers["Inference-Header-Content-Length"])
        result = httpclient.InferResult.from_response_body(body, header_length=header_length)
        assert_close(result.as_numpy("logits"), case["outputs"]["logits"], "raw binary request")

    def compression():
        case = reference("mlp")[1]
        for algorithm in ("gzip", "deflate"):
            result = client.infer("mlp", grpc_inputs(case), compression_algorithm=algorithm)
            assert_close(result.as_numpy("logits"), case["outputs"]["logits"], "grpc " + algorithm)
        for algorithm in ("gzip", "deflate"):
            result = http.infer("mlp", [http_input(case)], request_compression_algorithm=algorithm,
                                response_compression_algorithm=algorithm)
            assert_close(result.as_numpy("logits"), case["outputs"]["logits"], "http " + algorithm)
        # The answer really is compressed when asked for.
        spec = case["inputs"]["input"]
        body = json.dumps({"inputs": [{"name": "input", "shape": spec["shape"], "datatype": "FP32",
                                       "data": spec["data"]}]}).encode()
        request = urllib.request.Request("http://%s/v2/models/mlp/infer" % http_url, data=body,
                                         method="POST", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers.get("Content-Encoding") == "gzip", dict(response.headers)
        # An encoding the server cannot inflate is refused, not read as raw bytes.
        status, answer = http_post(http_url, "/v2/models/mlp/infer", body, {"Content-Encoding": "br"})
        assert status == 400 and "Content-Encoding" in answer["error"], (status, answer)

    c.check("refusals instead of silent ignores", refusals)
    c.check("raw binary request", raw_binary_request)
    c.check("compression", compression)

    client.close()
    http.close()
    return c.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
