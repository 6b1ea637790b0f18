"""Loopback load test of the device server (``edgeloop-edge serve``) at a fixed request rate.

The server runs in its own process, as on a device, with its default limits; everything stays on
127.0.0.1 and every loop is bounded (``rate x duration`` requests at most, joins with timeouts).
Open loop: request *i* is due at ``start + i / rate``; its latency is counted from when it was due,
so a server that falls behind shows it (no coordinated omission). Meanwhile ``--slow`` clients
trickle header lines (slowloris) and are expected to be cut off at the request deadline.

    .venv/bin/python -m benchmarks.bench_edge_server [--duration 30] [--rate 50] [--clients 8] [--slow 4]

Without ``--bundles``, a student-shaped model (hidden 128, 2 layers, ONNX int8, random weights, a
WordPiece vocabulary trained on the bundled Bitext texts) is built, signed and published in a temp
folder. Results: ``benchmarks/results/bench-edge-server.json``.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bench-edge-server.json"
BITEXT = ROOT / "data" / "bitext" / "Bitext_Sample_Customer_Support_Training_Dataset_v2023-08-18.csv"


def bitext(n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` texts of the bundled Bitext file and its sorted intents."""
    with BITEXT.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["instruction"] for r in rows[:n]], sorted({r["intent"] for r in rows})


def build_student_bundle(work: Path) -> tuple[Path, Path]:
    """Sign and publish a student-shaped random model; return (bundles root, public key)."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertForSequenceClassification

    from edgeloop.config import StudentConfig
    from models.bundle import build_bundle, ensure_signing_key, publish_channel
    from models.quantize import export_onnx, quantize_int8

    texts, labels = bitext(5000)
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=4000, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    s = StudentConfig()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads, intermediate_size=s.intermediate_size,
        max_position_embeddings=s.max_length + 2, num_labels=len(labels))).eval()
    folder = work / "model"
    folder.mkdir(parents=True)
    export_onnx(model, work / "fp32.onnx", s.max_length)
    quantize_int8(work / "fp32.onnx", folder / "model.onnx")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "bundle.json").write_text(json.dumps({"max_length": s.max_length, "backend": "onnx-int8"}))
    keys, root = work / "keys", work / "bundles"
    ensure_signing_key(keys / "edge.pem", keys / "edge.pub")
    build_bundle(folder, root / "1", model_version="1", metrics={}, teacher_version="bench",
                 data_hash="bench", backend="onnx-int8", signing_key=keys / "edge.pem")
    publish_channel(root, "stable", "1", "load test", public_key=keys / "edge.pub")
    return root, keys / "edge.pub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundles: Path, public_key: Path, home: Path, port: int) -> subprocess.Popen:
    """``edgeloop-edge serve`` on loopback, synced to the stable channel; waits for /health."""
    cmd = [sys.executable, "-m", "edge.cli", "--home", str(home), "--bundles", str(bundles),
           "--public-key", str(public_key), "--device-id", "dev-bench0001", "--canary-share", "0",
           "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "w"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy within 60 s")


def slow_client(port: int, stop: threading.Event, cuts: list[float], every_s: float = 0.5) -> None:
    """Slowloris: a partial request, one header line every ``every_s`` s; reconnect when cut off."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
                for i in range(10_000):  # bounded: far beyond any sane deadline
                    if stop.wait(every_s):
                        return
                    sock.sendall(f"X-Pad-{i}: y\r\n".encode())
        except OSError:  # reset or broken pipe: the server hung up, as it should
            cuts.append(time.monotonic() - started)


def run_load(port: int, texts: list[str], rate: float, duration_s: float, clients: int) -> dict:
    """Open-loop load at ``rate`` requests/s for ``duration_s`` s over ``clients`` keep-alive connections."""
    n = int(rate * duration_s)
    due: queue.Queue = queue.Queue()
    start = time.monotonic() + 0.5
    for i in range(n):
        due.put((i, start + i / rate))
    latency, service, errors = [], [], {}
    lock = threading.Lock()

    def worker() -> None:
        conn = None
        while True:
            try:
                i, at = due.get_nowait()
            except queue.Empty:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            t0 = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/predict", json.dumps({"text": texts[i % len(texts)]}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                kind = None if response.status == 200 else f"http_{response.status}"
            except OSError as exc:
                kind, conn = type(exc).__name__, None
            t1 = time.monotonic()
            with lock:
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1
                else:
                    latency.append((t1 - at) * 1000)
                    service.append((t1 - t0) * 1000)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 60)
    wall = time.monotonic() - start

    def pct(v: list[float], q: float) -> float:
        return round(sorted(v)[min(len(v) - 1, int(q * len(v)))], 3) if v else float("nan")

    return {"requests": n, "ok": len(latency), "errors": sum(errors.values()), "errors_by_kind": errors,
            "achieved_rps": round(len(latency) / wall, 1), "wall_s": round(wall, 1),
            "latency_ms": {"p50": pct(latency, 0.5), "p90": pct(latency, 0.9), "p99": pct(latency, 0.99),
                           "max": round(max(latency), 3) if latency else None},
            "service_ms": {"p50": pct(service, 0.5), "p99": pct(service, 0.99),
                           "mean": round(statistics.fmean(service), 3) if service else None}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--clients", type=int, default=8, help="keep-alive client connections (default 8)")
    p.add_argument("--slow", type=int, default=4, help="slowloris connections meanwhile (default 4)")
    p.add_argument("--bundles", type=Path, help="a real bundles root with a stable channel")
    p.add_argument("--public-key", type=Path, help="its public key (with --bundles)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.duration * args.rate > 100_000:
        p.error("rate x duration above 100,000 requests: keep the test bounded")
    texts, _ = bitext(2000)
    with tempfile.TemporaryDirectory(prefix="bench-edge-server-") as tmp:
        work = Path(tmp)
        if args.bundles:
            bundles, key = args.bundles, args.public_key or p.error("--bundles needs --public-key")
        else:
            bundles, key = build_student_bundle(work)
        (work / "home").mkdir()
        port = free_port()
        server = start_server(bundles, key, work / "home", port)
        stop, cuts = threading.Event(), []
        slow = [threading.Thread(target=slow_client, args=(port, stop, cuts), daemon=True)
                for _ in range(args.slow)]
        try:
            for t in slow:
                t.start()
            result = run_load(port, texts, args.rate, args.duration, args.clients)
            status = (Path("/proc") / str(server.pid) / "status").read_text()
            rss = {k: int(line.split()[1]) // 1024 for line in status.splitlines()
                   for k in ("VmHWM", "VmRSS") if line.startswith(k + ":")}
        finally:
            stop.set()
            for t in slow:
                t.join(timeout=15)
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=15)
        bundle_mb = sum(f.stat().st_size for f in (work / "home" / "models").rglob("*") if f.is_file()) / 2**20
    report = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},  # a shared box is noisy
              "setup": {"rate_rps": args.rate, "duration_s": args.duration, "clients": args.clients,
                        "slow_clients": args.slow, "server_limits": "defaults of edge.http_limits.Limits",
                        "model": "real bundle" if args.bundles else "student-shaped random int8 (hidden 128, 2 layers)",
                        "installed_bundle_mb": round(bundle_mb, 3)},
              **result,
              "slowloris": {"cut_off": len(cuts),
                            "held_s_max": round(max(cuts), 2) if cuts else None},
              "server_rss_mb": {"peak": rss.get("VmHWM"), "end": rss.get("VmRSS")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
