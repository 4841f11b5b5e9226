#!/usr/bin/env python3
"""Serves the same Azure ML deployments under azureml-inference-server-http (Azure's own
server, from PyPI) and under `modelpod serve --inference-config`, sends both the same requests
and compares what comes back: status, JSON body (or text), content type, the
x-ms-run-function-failed header and the swagger documents.

    azure_compat.py MODELPOD DEPLOYMENTS REPORT.json

DEPLOYMENTS is what make_azure_deployments.py and make_entry_script_cases.py wrote. The
reference server binds 0.0.0.0, so this runs in a private network namespace that has only
loopback (runtime/tests/end_to_end/entry_script.rs starts it with `unshare -rn`). Exits 0 when
every comparison agrees; REPORT.json lists each one.

Where the two are expected to differ, the case says so and checks each side on its own:
init() failing (Azure's server exits, so Kubernetes restarts the pod; modelpod stays up,
says why in readiness and retries with backoff) and a script that kills its process
(Azure's server drops the connection; modelpod answers 502). The request-id headers and
x-ms-run-fn-exec-ms values are per request and left out.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

PYTHON = sys.executable
AZMLINFSRV = str(Path(PYTHON).with_name("azmlinfsrv"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, kind: str, command: list[str], env: dict, cwd: Path, log: Path, ready_path: str):
        self.kind = kind
        self.port = int(command[command.index("--port") + 1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.ready_path = ready_path
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 90) -> bool:
        until = time.time() + timeout
        while time.time() < until:
            if self.process.poll() is not None:
                return False
            try:
                if requests.get(self.base + self.ready_path, timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_pair(modelpod: str, folder: Path, work: Path, extra_env: dict) -> tuple[Server, Server]:
    base_env = dict(os.environ, AZUREML_MODEL_DIR=str(folder), HOME=str(work), **extra_env)
    reference = Server(
        "reference",
        [AZMLINFSRV, "--entry_script", str(folder / "score.py"), "--port", str(free_port())],
        base_env,
        folder,
        work / f"{folder.name}-reference.log",
        "/",
    )
    ours = Server(
        "modelpod",
        [
            modelpod, "serve", "--inference-config", str(folder / "inferenceconfig.json"),
            "--python", PYTHON, "--host", "127.0.0.1", "--port", str(free_port()), "--no-auth",
        ],
        dict(base_env, MODELPOD_LOG_FORMAT="text", NO_COLOR="1"),
        folder,
        work / f"{folder.name}-modelpod.log",
        "/v2/health/ready",
    )
    return reference, ours


def view(response: requests.Response, headers: list[str]) -> dict:
    content_type = response.headers.get("Content-Type", "")
    try:
        body = response.json() if "json" in content_type else response.content.decode("utf-8", "replace")
    except ValueError:
        body = response.content.decode("utf-8", "replace")
    seen = {
        "status": response.status_code,
        "content_type": content_type.split(";")[0].strip(),
        "run_function_failed": response.headers.get("x-ms-run-function-failed"),
        "exec_ms_header": "x-ms-run-fn-exec-ms" in response.headers,
        "body": body,
    }
    for name in headers:
        seen[name] = response.headers.get(name)
    return seen


def send(server: Server, request: dict) -> dict:
    try:
        response = requests.request(
            request["method"],
            server.base + request["path"],
            data=request.get("body"),
            headers=request.get("headers", {}),
            timeout=30,
        )
    except requests.ConnectionError as e:
        return {"connection_error": type(e).__name__}
    return view(response, request.get("compare_headers", []))


def post_json(body, **extra) -> dict:
    text = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return {"method": "POST", "path": "/score", "body": text, "headers": {"Content-Type": "application/json"}, **extra}


SWAGGER = [{"method": "GET", "path": f"/swagger.json{q}"} for q in ("", "?version=3", "?version=3.1", "?version=4")]


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def cases(deployments: Path) -> list[dict]:
    def requests_of(name):
        return json.loads((deployments / name / "requests.json").read_text())

    return [
        {
            "case": "iris_forest",  # joblib RandomForest, string labels, numpy @input_schema
            "requests": [
                post_json(requests_of("iris_forest")),
                post_json({"data": [[5.1, 3.5, 1.4, 0.2]]}),
                post_json("{"),
                post_json({}),
                post_json([1, 2]),
                post_json(""),
                post_json({"data": [[5.1, 3.5, 1.4, 0.2]]}, headers={"Content-Type": "application/json; charset=utf-8"}),
                post_json({"data": [[5.1, 3.5, 1.4, 0.2]]}, headers={"Content-Type": "application/vnd.api+json"}),
                {"method": "POST", "path": "/score", "body": json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]})},
                {"method": "POST", "path": "/score", "body": json.dumps(requests_of("iris_forest")), "headers": {"Content-Type": "text/plain"}},
                {"method": "GET", "path": "/score?data=[[5.1,3.5,1.4,0.2],[6.2,3.4,5.4,2.3]]"},
                {"method": "PUT", "path": "/score", "body": "{}"},
                *SWAGGER,
            ],
        },
        {
            "case": "churn_pipeline",  # pandas ColumnTransformer pipeline, PandasParameterType
            "requests": [post_json(requests_of("churn_pipeline")), post_json({"data": {"nope": [1]}}), *SWAGGER],
        },
        {
            "case": "custom_doubler",  # no decorators: run() gets the body as a string
            "requests": [
                post_json(requests_of("custom_doubler")),
                {"method": "POST", "path": "/score", "body": b"\xff\xfe{}", "headers": {"Content-Type": "application/json"}},
                {"method": "GET", "path": "/score?data=[[1,2],[3,4]]"},
                *SWAGGER,
            ],
        },
        {
            "case": "plain_echo",
            "requests": [
                post_json({"data": [1, 2, 3]}),
                post_json("not json"),
                {"method": "POST", "path": "/score", "body": "a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
                {"method": "POST", "path": "/score", "body": json.dumps({"data": [4]}), "headers": {"Content-Type": "text/plain"}},
                {"method": "OPTIONS", "path": "/score"},
                *SWAGGER[:1],
            ],
        },
        {
            "case": "image_rawhttp",  # @rawhttp on image bytes, AMLResponse with headers
            "requests": [
                {"method": "POST", "path": "/score?tag=cat", "body": png_bytes(), "headers": {"Content-Type": "image/png"}, "compare_headers": ["X-Image-Mode"]},
                {"method": "GET", "path": "/score"},
                *SWAGGER[:1],
            ],
        },
        {"case": "run_raises", "requests": [post_json({"data": 1})]},
        {"case": "returns_numpy", "requests": [post_json({"data": 1})]},
        {
            "case": "reads_headers",
            "requests": [
                post_json({"data": 1}, headers={"Content-Type": "application/json", "X-Trace-Id": "abc-123"}),
                # Not ASCII: WSGI servers hand header bytes over as Latin-1 characters.
                post_json({"data": 1}, headers={"Content-Type": "application/json", "X-Trace-Id": "caf\u00e9"}),
            ],
        },
        {"case": "sleeps", "env": {"SCORING_TIMEOUT_MS": "1000"}, "requests": [post_json({"data": 1})]},
    ]


def compare_case(modelpod: str, deployments: Path, work: Path, case: dict, report: list) -> bool:
    folder = deployments / case["case"]
    reference, ours = start_pair(modelpod, folder, work, case.get("env", {}))
    ok = True
    try:
        for server in (reference, ours):
            if not server.wait_ready():
                report.append({"case": case["case"], "error": f"{server.kind} never became ready", "log": server.log()})
                return False
        for request in case["requests"]:
            expected, actual = send(reference, request), send(ours, request)
            equal = expected == actual
            ok &= equal
            shown = {k: v for k, v in request.items() if k != "body"}
            report.append({"case": case["case"], "request": shown, "equal": equal, "reference": expected, "modelpod": actual})
    finally:
        reference.stop()
        ours.stop()
    return ok


def init_fails(modelpod: str, deployments: Path, work: Path, report: list) -> bool:
    reference, ours = start_pair(modelpod, deployments / "init_fails", work, {})
    try:
        try:
            reference_code = reference.process.wait(60)
        except subprocess.TimeoutExpired:
            reference_code = None
        time.sleep(1.0)
        ready = requests.get(ours.base + "/v2/health/ready", timeout=5)
        score = requests.post(ours.base + "/score", data="{}", headers={"Content-Type": "application/json"}, timeout=5)
        live = requests.get(ours.base + "/", timeout=5)
        checks = {
            "reference_exited_with_error": reference_code not in (None, 0),
            "modelpod_live": live.status_code == 200,
            "modelpod_not_ready_naming_the_error": ready.status_code == 503 and "FileNotFoundError" in ready.text,
            "modelpod_score_503_naming_init": score.status_code == 503 and "init() failed" in score.json().get("message", ""),
        }
        report.append({"case": "init_fails", "checks": checks, "ready": ready.text, "score": score.text})
        return all(checks.values())
    finally:
        reference.stop()
        ours.stop()


def exits(modelpod: str, deployments: Path, work: Path, report: list) -> bool:
    reference, ours = start_pair(modelpod, deployments / "exits", work, {})
    try:
        for server in (reference, ours):
            if not server.wait_ready():
                report.append({"case": "exits", "error": f"{server.kind} never became ready", "log": server.log()})
                return False
        alive, die = post_json({"exit": False}), post_json({"exit": True})
        first = {s.kind: send(s, alive) for s in (reference, ours)}
        crash = {s.kind: send(s, die) for s in (reference, ours)}
        # Both restart the worker; the next request is served again.
        after = {}
        for server in (reference, ours):
            until = time.time() + 30
            while time.time() < until:
                after[server.kind] = send(server, alive)
                if after[server.kind].get("status") == 200:
                    break
                time.sleep(0.25)
        checks = {
            "served_before": first["reference"] == first["modelpod"] and first["modelpod"]["status"] == 200,
            "reference_dropped_the_connection": "connection_error" in crash["reference"] or crash["reference"].get("status", 0) >= 500,
            "modelpod_502_with_a_message": crash["modelpod"].get("status") == 502 and "exited" in json.dumps(crash["modelpod"].get("body")),
            "both_serve_after": after["reference"] == after["modelpod"] and after["modelpod"].get("status") == 200,
        }
        report.append({"case": "exits", "checks": checks, "crash": crash, "after": after})
        return all(checks.values())
    finally:
        reference.stop()
        ours.stop()


def main(modelpod: str, deployments: Path, report_path: Path) -> int:
    report: list = []
    ok = True
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for case in cases(deployments):
            ok &= compare_case(modelpod, deployments, work, case, report)
        ok &= init_fails(modelpod, deployments, work, report)
        ok &= exits(modelpod, deployments, work, report)
    report_path.write_text(json.dumps(report, indent=2, default=str))
    for entry in report:
        if entry.get("equal") is False or "error" in entry or not all(entry.get("checks", {}).values()):
            print(json.dumps(entry, indent=2, default=str)[:3000], file=sys.stderr)
    compared = sum(1 for e in report if "equal" in e)
    agreed = sum(1 for e in report if e.get("equal"))
    print(f"{agreed} of {compared} responses equal; init_fails and exits checked apart", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve(), Path(sys.argv[3])))
