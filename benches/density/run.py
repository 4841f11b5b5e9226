#!/usr/bin/env python3
"""Model density benchmark: N distinct models in one `modelpod serve`.

    python3 benches/density/run.py [N ...]        (default: 100 1000 10000; run by density.sh)

For each N (models from make_models.py, cached under target/density/N):
  eager   load every model at start (for N = 10 000, as many as a 10 % budget holds):
          time from process start to readiness, RSS after loading, RSS after unloading all
          through the repository API;
  lazy    no budget; 200 sampled models requested once each (every request a cold load on a
          lazy miss) then again (warm): latency percentiles, answers checked against ONNX
          Runtime's, mean measured footprint;
  mix     a budget holding 10 % of the N models; `modelpod bench --cycle-models` sends each
          request to the next of all N models in turn (with LRU and a cycle ten times the
          budget, nearly every request is a cold load): throughput, latency, errors by status,
          evictions, peak RSS; the sampled answers are checked again afterwards.
Writes target/bench/density.json and target/bench/density.md.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target/release/modelpod"
OUT = ROOT / "target/bench"
MIX_SECONDS = int(os.environ.get("MIX_SECONDS", "20"))
MIX_CONCURRENCY = int(os.environ.get("MIX_CONCURRENCY", "4"))
EAGER_BUDGET_ABOVE = 1000  # larger N: eager fills a 10 % budget instead of loading all


class Server:
    def __init__(self, repo: Path, *flags: str):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--model-repository", str(repo), "--model-control-mode", "explicit", "--host", "127.0.0.1",
             "--port", "0", "--log-format", "text", "--max-concurrent-requests", "64",
             "--scoring-timeout-ms", "120000", *flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            text = Path(self.log.name).read_text()
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None:
                sys.exit(f"modelpod serve exited:\n{text}")
            time.sleep(0.05)
        else:
            sys.exit("modelpod serve did not start")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closes idle keep-alive connections; open a new one once.
                self.conn.close()
                if attempt == 2:
                    raise

    def wait_ready(self) -> float:
        while True:
            try:
                if self.request("GET", "/v2/health/ready")[0] == 200:
                    return time.monotonic() - self.started
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
            if self.proc.poll() is not None:
                sys.exit(f"modelpod serve exited:\n{Path(self.log.name).read_text()}")
            time.sleep(0.05)

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def metric(self, name: str, labels: str = "") -> float:
        text = self.request("GET", "/metrics")[1].decode()
        total = 0.0
        for line in text.splitlines():
            if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.log.name)


def bench(server: Server, models_file: Path, first: str, *limits: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run(
            [str(BIN), "bench", f"http://127.0.0.1:{server.port}", "--model", first,
             "--cycle-models", str(models_file), "--protocol", "v2-binary", "--no-progress",
             "--json", result.name, *limits],
            check=True, stdout=subprocess.DEVNULL)
        return json.load(open(result.name))["points"][0]


def check_answers(server: Server, expected: dict) -> int:
    """Requests each sampled model once and counts answers that differ from ONNX Runtime's."""
    wrong = 0
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                   "data": expected["input"]}]}).encode()
    for name, want in expected["outputs"].items():
        status, reply = server.request("POST", f"/v2/models/{name}/infer", body)
        if status != 200:
            wrong += 1
            continue
        got = json.loads(reply)["outputs"][0]["data"]
        if any(abs(g - w) > 1e-4 + 1e-4 * abs(w) for g, w in zip(got, want)):
            wrong += 1
    return wrong


def mib(b: float) -> float:
    return round(b / 2**20, 1)


def run(n: int) -> dict:
    repo = ROOT / "target/density" / str(n)
    if not (repo / "models.txt").exists() or len((repo / "models.txt").read_text().split()) != n:
        print(f"generating {n} models", file=sys.stderr)
        subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "benches/density/make_models.py"),
                        str(n), str(repo)], check=True)
    expected = json.loads((repo / "expected.json").read_text())
    sampled = repo / "sampled.txt"
    sampled.write_text("".join(f"{m}\n" for m in expected["outputs"]))
    all_models = repo / "models.txt"
    first = next(iter(expected["outputs"]))
    result: dict = {"models": n}

    print(f"N={n}: lazy", file=sys.stderr)
    server = Server(repo, "--load-policy", "lazy", "--memory-budget", "none")
    server.wait_ready()
    result["rss_idle_mib"] = mib(server.status("VmRSS"))
    samples = len(expected["outputs"])
    cold = bench(server, sampled, first, "--concurrency", "1", "--requests", str(samples), "--warmup", "0s")
    warm = bench(server, sampled, first, "--concurrency", "1", "--requests", str(samples), "--warmup", "0s")
    ready = server.metric("modelpod_models", 'state="ready"')
    footprint = server.metric("modelpod_memory_used_bytes") / ready
    result.update(cold_p50_ms=cold["p50_us"] / 1000, cold_p99_ms=cold["p99_us"] / 1000,
                  warm_p50_us=warm["p50_us"], warm_p99_us=warm["p99_us"],
                  mean_footprint_kib=round(footprint / 1024, 1),
                  lazy_wrong_answers=check_answers(server, expected))
    server.stop()

    budget = int(footprint * n * 0.10)
    print(f"N={n}: eager", file=sys.stderr)
    eager_budget = str(budget) if n > EAGER_BUDGET_ABOVE else "none"
    server = Server(repo, "--load-policy", "eager", "--memory-budget", eager_budget,
                    "--load-parallelism", "2")
    result["eager_budget_mib"] = None if eager_budget == "none" else mib(budget)
    result["eager_load_s"] = round(server.wait_ready(), 2)
    result["eager_ready_models"] = int(server.metric("modelpod_models", 'state="ready"'))
    result["eager_failed_models"] = int(server.metric("modelpod_models", 'state="failed"'))
    result["rss_loaded_mib"] = mib(server.status("VmRSS"))
    for name in all_models.read_text().split():
        server.request("POST", f"/v2/repository/models/{name}/unload", b"")
    time.sleep(1)
    result["rss_after_unload_mib"] = mib(server.status("VmRSS"))
    server.stop()

    print(f"N={n}: mix under a 10 % budget", file=sys.stderr)
    server = Server(repo, "--load-policy", "lazy", "--memory-budget", str(budget))
    server.wait_ready()
    mix = bench(server, all_models, first, "--concurrency", str(MIX_CONCURRENCY),
                "--duration", f"{MIX_SECONDS}s", "--warmup", "2s")
    result.update(mix_budget_mib=mib(budget), mix_requests_per_s=round(mix["requests_per_s"], 1),
                  mix_p50_ms=mix["p50_us"] / 1000, mix_p99_ms=mix["p99_us"] / 1000,
                  mix_succeeded=mix["succeeded"], mix_errors=mix["errors"],
                  mix_evictions=int(server.metric("modelpod_model_evictions_total")),
                  mix_resident_models=int(server.metric("modelpod_models", 'state="ready"')),
                  mix_memory_used_mib=mib(server.metric("modelpod_memory_used_bytes")),
                  mix_peak_rss_mib=mib(server.status("VmHWM")),
                  mix_wrong_answers=check_answers(server, expected))
    server.stop()
    print(json.dumps(result), file=sys.stderr)
    return result


def markdown(rows: list[dict]) -> str:
    columns = [
        ("models", "N"), ("eager_load_s", "eager load s"), ("eager_ready_models", "eager resident"),
        ("rss_idle_mib", "RSS idle MiB"), ("rss_loaded_mib", "RSS loaded MiB"),
        ("rss_after_unload_mib", "RSS after unload MiB"), ("mean_footprint_kib", "footprint KiB"),
        ("cold_p50_ms", "cold p50 ms"), ("cold_p99_ms", "cold p99 ms"),
        ("warm_p50_us", "warm p50 µs"), ("warm_p99_us", "warm p99 µs"),
        ("mix_budget_mib", "10 % budget MiB"), ("mix_requests_per_s", "mix req/s"),
        ("mix_p50_ms", "mix p50 ms"), ("mix_p99_ms", "mix p99 ms"), ("mix_errors", "mix errors"),
        ("mix_evictions", "evictions"), ("mix_peak_rss_mib", "mix peak RSS MiB"),
        ("mix_wrong_answers", "wrong answers"),
    ]
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            value = r.get(key)
            cells.append("none" if value == {} else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000, 10000]
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [run(n) for n in sizes]
    (OUT / "density.json").write_text(json.dumps(rows, indent=2))
    (OUT / "density.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
