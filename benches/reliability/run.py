"""The measurements of benches/reliability.sh; prints a Markdown table.

Each measurement starts its own `modelpod serve` or `modelpod route` on loopback and stops it.
Memory is read from /proc/<pid>/status (VmSize, VmRSS, VmHWM).
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Process:
    """A modelpod process whose log is scanned for its address."""

    def __init__(self, args, ready_mark: str):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "MODELPOD_LOG_FORMAT": "text", "NO_COLOR": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_text()
            if self.proc.poll() is not None:
                sys.exit(f"{args[1]} exited:\n{text}")
            match = re.search(r"listening on https?://([0-9.]+:[0-9]+)", text)
            if match and ready_mark in text:
                self.address = match.group(1)
                return
            time.sleep(0.1)
        sys.exit(f"{args[1]} did not start:\n{Path(self.log.name).read_text()}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def serve(binary, repository, *flags):
    return Process([binary, "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
                    "--port", "0", *flags], "start-up loading finished")


def exchange(address, raw: bytes, timeout=120.0):
    """Sends raw bytes; returns (status, seconds to the first byte of the answer)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sent = time.monotonic()
        try:
            sock.sendall(raw)
        except OSError:
            pass
        sock.settimeout(timeout)
        first = sock.recv(12)
        return int(first.split()[1]), time.monotonic() - sent


def header_only(binary, connections: int):
    server = serve(binary, ROOT / "examples/models", "--max-concurrent-requests", "8")
    pid = server.proc.pid
    before = proc_kib(pid, "VmSize"), proc_kib(pid, "VmRSS")
    host, port = server.address.split(":")
    socks = []
    for _ in range(connections):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /score?model=iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n")
        socks.append(s)
    time.sleep(3)
    during = proc_kib(pid, "VmSize"), proc_kib(pid, "VmRSS")
    statuses = {}
    started = time.monotonic()
    for s in socks:
        s.settimeout(60)
        try:
            status = s.recv(12).split()[1].decode()
        except (OSError, IndexError):
            status = "no answer"
        statuses[status] = statuses.get(status, 0) + 1
        s.close()
    waited = time.monotonic() - started + 3
    alive = server.proc.poll() is None
    server.stop()
    return {"connections": connections, "virtual_mib": (before[0] // 1024, during[0] // 1024),
            "resident_mib": (before[1] // 1024, during[1] // 1024), "answers": statuses,
            "answered_within_s": round(waited, 1), "server_alive": alive}


def linear_repository(path: Path):
    """One linear model, [batch, 4] -> [batch, 3], that takes any number of rows per run."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (path / "linear" / "1").mkdir(parents=True)
    onnx.save(model, str(path / "linear" / "1" / "model.onnx"))
    (path / "linear" / "model.toml").write_text("[batching]\nmax_batch_size = 0\n")


def json_peak(binary, megabytes: int, at_once: int):
    with tempfile.TemporaryDirectory() as repository:
        linear_repository(Path(repository))
        server = serve(binary, repository, "--max-concurrent-requests", str(at_once))
        rows = megabytes * 1_000_000 // 40
        body = ("{\"data\": [" + ",".join(["[0.123456, 1.234567, 2.345678, 3.456789]"] * rows) + "]}").encode()
        head = (f"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        pid = server.proc.pid
        peak_before, rss_before = proc_kib(pid, "VmHWM"), proc_kib(pid, "VmRSS")
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            statuses = list(pool.map(lambda _: exchange(server.address, head + body)[0], range(at_once)))
        time.sleep(1)
        peak_after, rss_after = proc_kib(pid, "VmHWM"), proc_kib(pid, "VmRSS")
        server.stop()
    body_mib = len(body) / (1 << 20)
    return {"body_mib": round(body_mib, 1), "at_once": at_once, "statuses": statuses,
            "peak_rss_growth_mib": (peak_after - peak_before) // 1024,
            "peak_per_body_mib": round((peak_after - peak_before) / 1024 / body_mib / at_once, 2),
            "rss_after_mib": (rss_before // 1024, rss_after // 1024)}


def stall(binary):
    server = serve(binary, ROOT / "examples/models")
    results = {}
    for what, raw in [
        ("Content-Length 1000, 28 bytes sent",
         b"POST /score?model=iris HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"data\": [[1, 2, 3, 4]]}    "),
        ("chunk size 2^64-1",
         b"POST /score?model=iris HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{\"data\""),
    ]:
        status, seconds = exchange(server.address, raw, timeout=60)
        results[what] = (status, round(seconds, 2))
    server.stop()
    return results


def overload(binary, out: Path, seconds: int):
    """image_cnn over Azure JSON with maxQueueWaitMs 200: capacity closed-loop, then an open
    loop at 3x and 10x it; the share of 503s within maxQueueWaitMs + 50 ms, and goodput."""
    config = out / "overload-deploymentconfig.json"
    config.write_text(json.dumps({"maxConcurrentRequestsPerContainer": 4, "maxQueueWaitMs": 200,
                                  "scoringTimeoutMs": 60000}))
    server = serve(binary, ROOT / "examples/models", "--deployment-config", str(config))
    common = [binary, "bench", f"http://{server.address}", "--model", "image_cnn", "--protocol", "azure",
              "--warmup", "2s", "--duration", f"{seconds}s", "--no-progress"]
    subprocess.run(common + ["--concurrency", "8", "--json", str(out / "capacity.json")],
                   check=True, stdout=subprocess.DEVNULL)
    capacity = json.loads((out / "capacity.json").read_text())["points"][0]["requests_per_s"]
    results = {"capacity_per_s": round(capacity, 1)}
    for factor in (3, 10):
        rate = capacity * factor
        path = out / f"overload-{factor}x.json"
        subprocess.run(common + ["--rate", f"{rate:.0f}", "--shed-within", "250ms", "--max-in-flight", "100000",
                                 "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
        point = json.loads(path.read_text())["points"][0]
        shed = point.get("shed") or {}
        results[f"{factor}x"] = {
            "offered_per_s": round(rate), "goodput_per_s": round(point["goodput_per_s"], 1),
            "goodput_share": round(point["goodput_per_s"] / capacity, 2),
            "errors": point["errors"], "shed_p50_ms": shed.get("p50_us", 0) / 1000,
            "shed_p99_ms": shed.get("p99_us", 0) / 1000,
            "shed_within_250ms": shed.get("within_share"),
        }
    server.stop()
    return results


def restarts(binary, seconds: int):
    with tempfile.TemporaryDirectory() as state:
        router = Process([binary, "route", "--host", "127.0.0.1", "--port", "0", "--service", "svc",
                          "--auth", "none", "--state-file", f"{state}/state.json",
                          "--model-repository", str(ROOT / "examples/models"),
                          "--serve-arg", "--max-concurrent-requests", "--serve-arg", "0"], "router listening")
        time.sleep(seconds)
        import urllib.request
        metrics = urllib.request.urlopen(f"http://{router.address}/metrics").read().decode()
        count = sum(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("modelpod_router_replica_restarts_total"))
        started = time.monotonic()
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"http://{router.address}/api/v1/service/svc/score", data=b'{"data": [[1,2,3,4]]}',
                headers={"Content-Type": "application/json"}))
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        answer_ms = (time.monotonic() - started) * 1000
        cpu = sum(int(x) for x in Path(f"/proc/{router.proc.pid}/stat").read_text().split()[13:17])
        router.stop()
    return {"seconds": seconds, "restarts": count, "per_minute": round(count * 60 / seconds, 1),
            "request_status": status, "request_ms": round(answer_ms, 1),
            "router_cpu_s": cpu / os.sysconf("SC_CLK_TCK")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--overload-seconds", type=int, default=10)
    parser.add_argument("--restart-seconds", type=int, default=60)
    args = parser.parse_args()
    results = {
        "header_only": header_only(args.bin, 1500),
        "json_peak": [json_peak(args.bin, 95, 1), json_peak(args.bin, 33, 3)],
        "stall": stall(args.bin),
        "overload": overload(args.bin, args.out, args.overload_seconds),
        "restarts": restarts(args.bin, args.restart_seconds),
    }
    (args.out / "reliability.json").write_text(json.dumps(results, indent=2))
    h, j, s, o, r = (results[k] for k in ("header_only", "json_peak", "stall", "overload", "restarts"))
    print("| measurement | result |")
    print("|---|---|")
    print(f"| {h['connections']} header-only connections declaring 100 MB each | virtual {h['virtual_mib'][0]} → "
          f"{h['virtual_mib'][1]} MiB, resident {h['resident_mib'][0]} → {h['resident_mib'][1]} MiB; answers "
          f"{h['answers']} within {h['answered_within_s']} s; server alive: {h['server_alive']} |")
    for p in j:
        print(f"| {p['at_once']} × {p['body_mib']} MiB Azure JSON body at once | statuses {p['statuses']}; peak RSS "
              f"+{p['peak_rss_growth_mib']} MiB = **{p['peak_per_body_mib']} MiB per MiB of body**; RSS after "
              f"{p['rss_after_mib'][1]} MiB (before {p['rss_after_mib'][0]}) |")
    for what, (status, seconds) in s.items():
        print(f"| a body that stalls ({what}), default body timeout | {status} after {seconds} s |")
    print(f"| image_cnn Azure JSON capacity (closed loop, c=8) | {o['capacity_per_s']} req/s |")
    for factor in ("3x", "10x"):
        x = o[factor]
        share = "-" if x["shed_within_250ms"] is None else f"{x['shed_within_250ms'] * 100:.1f} %"
        print(f"| {factor} overload ({x['offered_per_s']} req/s offered, maxQueueWaitMs 200) | 503 p50 "
              f"{x['shed_p50_ms']:.0f} ms, p99 {x['shed_p99_ms']:.0f} ms, **{share} within 250 ms**; goodput "
              f"{x['goodput_per_s']} req/s (**{x['goodput_share'] * 100:.0f} %** of capacity); {x['errors']} |")
    print(f"| an unstartable replica for {r['seconds']} s | {r['restarts']:.0f} restarts = **{r['per_minute']} per "
          f"minute**; its request {r['request_status']} in {r['request_ms']} ms; router CPU {r['router_cpu_s']:.2f} s |")


if __name__ == "__main__":
    main()
