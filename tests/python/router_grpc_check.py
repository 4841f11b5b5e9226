#!/usr/bin/env python3
"""The router's gRPC front end through the unmodified ``tritonclient.grpc``, the way
Triton's client examples call a server, with the router's two metadata entries passed as
``headers=``: the webservice (``modelpod-service`` or ``modelpod-endpoint``) and its key.

Usage:
    router_grpc_check.py ROUTER_GRPC_HOST:PORT SERVICE_KEY ENDPOINT_KEY

The router serves service ``keyed`` and endpoint ``ep`` over ``tests/fixtures/models``.
A summary line ``router grpc: N passed, M failed`` ends the run; exit status 0 only if
all passed.
"""

import queue
import sys
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
from checks import Checker
from triton_protocol_check import assert_close, expect_error, grpc_inputs, reference


def main(argv):
    if len(argv) != 4:
        print(__doc__)
        return 2
    url, service_key, endpoint_key = argv[1:]
    client = grpcclient.InferenceServerClient(url)
    keyed = {"modelpod-service": "keyed", "authorization": "Bearer " + service_key}
    endpoint = {"modelpod-endpoint": "ep", "authorization": "Bearer " + endpoint_key}
    c = Checker("router grpc")

    def health_and_metadata():
        assert client.is_server_live(headers=keyed)
        assert client.is_server_ready(headers=keyed)
        assert client.is_model_ready("mlp", headers=endpoint)
        metadata = client.get_model_metadata("mlp", headers=keyed)
        assert metadata.name == "mlp", metadata
        assert [i.name for i in metadata.inputs] == ["input"], metadata
        config = client.get_model_config("mlp", headers=keyed, as_json=True)
        assert config["config"]["name"] == "mlp", config

    def infer(headers, model):
        for idx, case in enumerate(reference(model)):
            outputs = [grpcclient.InferRequestedOutput(name) for name in case["outputs"]]
            result = client.infer(model, grpc_inputs(case), outputs=outputs, headers=headers)
            for name, spec in case["outputs"].items():
                assert_close(result.as_numpy(name), spec, "%s[%d].%s" % (model, idx, name))

    def async_infer():
        case = reference("mlp")[1]
        done = queue.Queue()
        for _ in range(8):
            client.async_infer("mlp", grpc_inputs(case),
                               partial(lambda q, result, error: q.put((result, error)), done),
                               headers=keyed)
        for _ in range(8):
            result, error = done.get(timeout=30)
            assert error is None, error
            assert_close(result.as_numpy("logits"), case["outputs"]["logits"], "async")

    def stream_infer():
        results = queue.Queue()
        stream = grpcclient.InferenceServerClient(url)
        stream.start_stream(callback=lambda result, error: results.put((result, error)),
                            headers=keyed)
        cases = reference("mlp")
        for i, case in enumerate(cases):
            stream.async_stream_infer("mlp", grpc_inputs(case), request_id=str(i))
        seen = {}
        for _ in cases:
            result, error = results.get(timeout=30)
            assert error is None, error
            seen[result.get_response().id] = result
        stream.stop_stream()
        for i, case in enumerate(cases):
            assert_close(seen[str(i)].as_numpy("logits"), case["outputs"]["logits"], "stream %d" % i)

    def compressed():
        case = reference("mlp")[0]
        for algorithm in ["gzip", "deflate"]:
            result = client.infer("mlp", grpc_inputs(case), headers=keyed,
                                  compression_algorithm=algorithm)
            assert_close(result.as_numpy("logits"), case["outputs"]["logits"], algorithm)

    def refusals():
        case = reference("mlp")[0]
        expect_error(lambda: client.infer("mlp", grpc_inputs(case)),
                     "modelpod-service", "no webservice named", "StatusCode.INVALID_ARGUMENT")
        expect_error(lambda: client.infer("mlp", grpc_inputs(case),
                                          headers={"modelpod-service": "keyed"}),
                     "", "no key", "StatusCode.UNAUTHENTICATED")
        expect_error(lambda: client.infer("mlp", grpc_inputs(case),
                                          headers={"modelpod-service": "keyed",
                                                   "authorization": "Bearer " + endpoint_key}),
                     "", "another webservice's key", "StatusCode.UNAUTHENTICATED")
        expect_error(lambda: client.load_model("mlp", headers=keyed),
                     "not open to scoring callers", "load", "StatusCode.PERMISSION_DENIED")
        expect_error(lambda: client.get_inference_statistics(headers=keyed),
                     "not open to scoring callers", "statistics", "StatusCode.PERMISSION_DENIED")
        expect_error(lambda: client.register_system_shared_memory("r", "/r", 16, headers=keyed),
                     "not open to scoring callers", "shared memory", "StatusCode.PERMISSION_DENIED")
        bad = grpcclient.InferInput("input", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
        expect_error(lambda: client.infer("mlp", [bad], headers=keyed),
                     "input", "the replica's own refusal", "StatusCode.INVALID_ARGUMENT")

    c.check("health and metadata", health_and_metadata)
    for model in ["mlp", "cnn", "two_inputs"]:
        c.check("infer %s through the service" % model, infer, keyed, model)
    c.check("infer mlp through the endpoint", infer, endpoint, "mlp")
    c.check("async infer", async_infer)
    c.check("stream infer", stream_infer)
    c.check("compressed", compressed)
    c.check("refusals", refusals)
    return c.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
