#!/usr/bin/env python3
"""A do-nothing Open Inference Protocol v2 server: model `echo` returns its FP32 input [batch, 4]
as output. perf_analyzer against it measures the floor of the measurement itself (client,
loopback TCP, HTTP parsing) on this machine, which modelpod's latency is read against.

    python3 benches/perf_analyzer/echo_server.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METADATA = {"name": "echo", "versions": ["1"], "platform": "echo",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
CONFIG = {"name": "echo", "max_batch_size": 8,
          "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
          "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the second waits for
    # the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, body: bytes, headers=()):
        self.send_response(200)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        routes = {"/v2": {"name": "echo-server"}, "/v2/models/echo": METADATA, "/v2/models/echo/config": CONFIG}
        if self.path not in routes:
            self.send_error(404)
            return
        self.reply(json.dumps(routes[self.path]).encode(), [("Content-Type", "application/json")])

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        json_len = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request = json.loads(body[:json_len])
        tensor = request["inputs"][0]
        if json_len < len(body):
            header = {"model_name": "echo", "outputs": [{"name": "y", "datatype": "FP32", "shape": tensor["shape"],
                                                          "parameters": {"binary_data_size": len(body) - json_len}}]}
            head = json.dumps(header).encode()
            self.reply(head + body[json_len:], [("Content-Type", "application/octet-stream"),
                                                ("Inference-Header-Content-Length", str(len(head)))])
        else:
            header = {"model_name": "echo", "outputs": [dict(tensor, name="y")]}
            self.reply(json.dumps(header).encode(), [("Content-Type", "application/json")])


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
