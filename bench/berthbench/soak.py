"""The soak run (bench/soak): berth under mixed cold and warm pulls from many
clients for a long time, against an upstream that injects faults, with its
resident memory, open files, threads and runtime tasks sampled every second.

What it shows: that nothing berth holds grows with time once it has warmed
up (memory, descriptors, tasks flat), and that no request is left hanging at
the end (every client returns; berth's open connections and running fills
drop back to zero). Not part of CI: it runs for minutes.

The upstream is in this process (standard library only): generated images
served over the registry API, each request of which may fail on purpose:
a 500 with an OCI body, a 503 with Retry-After, an error whose body stalls,
a blob cut short, a blob that trickles, or a connection closed unanswered.
"""
import argparse
import hashlib
import http.client
import http.server
import json
import os
import random
import socketserver
import statistics
import sys
import threading
import time

from . import procs

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
FAULTS = ("500", "503", "stalled-error", "truncated", "trickle", "reset")


def blob_bytes(seed, size):
    """`size` pseudo-random bytes from `seed` (not compressible, not shared)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Images:
    """`count` images, each a config and two layers of its own."""

    def __init__(self, count, max_layer):
        self.blobs = {}
        self.manifests = {}  # (repo, reference) -> bytes
        self.refs = []  # (repo, tag, manifest digest, [blob digests])
        rng = random.Random(22)
        for i in range(count):
            repo, tag = f"soak/img{i % 16}", f"t{i}"
            layers = [blob_bytes(f"{i}-a", 16 << 10),
                      blob_bytes(f"{i}-b", rng.randint(32 << 10, max_layer))]
            config = json.dumps({"architecture": "amd64", "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in layers]}}).encode()
            for b in [config] + layers:
                self.blobs[sha256(b)] = b
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
            }).encode()
            digest = sha256(manifest)
            self.manifests[(repo, tag)] = manifest
            self.manifests[(repo, digest)] = manifest
            self.refs.append((repo, tag, digest, [sha256(config)] + [sha256(b) for b in layers]))


class Upstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, images, fault_rate):
        self.images = images
        self.fault_rate = fault_rate
        self.rng = random.Random(7)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, **{f: 0 for f in FAULTS}}
        super().__init__(("127.0.0.1", 0), Handler)

    def fault(self):
        with self.lock:
            self.counts["requests"] += 1
            if self.rng.random() >= self.fault_rate:
                return None
            fault = self.rng.choice(FAULTS)
            self.counts[fault] += 1
            return fault


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def answer(self, head):
        path = self.path.split("?", 1)[0]
        if path == "/v2/":
            return self.send(200, b"{}", "application/json", head)
        parts = path[len("/v2/"):].rsplit("/", 2)
        if len(parts) != 3 or parts[1] not in ("manifests", "blobs"):
            return self.send(404, oci_error("NAME_UNKNOWN"), "application/json", head)
        repo, kind, ref = parts
        if kind == "manifests":
            body, media = self.server.images.manifests.get((repo, ref)), OCI_MANIFEST
            missing = "MANIFEST_UNKNOWN"
        else:
            body, media = self.server.images.blobs.get(ref), "application/octet-stream"
            missing = "BLOB_UNKNOWN"
        if body is None:
            return self.send(404, oci_error(missing), "application/json", head)
        fault = None if head else self.server.fault()
        try:
            self.faulty(fault, body, media, sha256(body), head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def faulty(self, fault, body, media, digest, head):
        if fault == "500":
            return self.send(500, oci_error("UNKNOWN"), "application/json", head)
        if fault == "503":
            return self.send(503, oci_error("UNAVAILABLE"), "application/json", head, {"Retry-After": "1"})
        if fault == "stalled-error":
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"errors":[{"code":"UNKNOWN","message":"hold')
            self.wfile.flush()
            time.sleep(30)
            self.close_connection = True
            return
        if fault == "reset":
            self.close_connection = True
            return
        extra = {"Docker-Content-Digest": digest}
        if fault in ("truncated", "trickle"):
            self.send_response(200)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if fault == "truncated":
                self.wfile.write(body[: len(body) // 2])
            else:
                for at in range(0, len(body), 4096):
                    self.wfile.write(body[at:at + 4096])
                    self.wfile.flush()
                    time.sleep(0.02)
            self.close_connection = fault == "truncated"
            return
        self.send(200, body, media, head, extra)

    def send(self, status, body, media, head, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def oci_error(code):
    return json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()


class Client(threading.Thread):
    """Pulls until the deadline: a warm image (one of the first few) half the
    time, else any image (cold the first time it is asked for)."""

    def __init__(self, n, berth_port, images, deadline, hot, timeout):
        super().__init__(name=f"client-{n}", daemon=True)
        self.rng = random.Random(n)
        self.port, self.images, self.deadline = berth_port, images, deadline
        self.hot, self.timeout = hot, timeout
        self.outcomes = {}
        self.busy_since = None

    def count(self, what):
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def run(self):
        while time.monotonic() < self.deadline:
            refs = self.images.refs
            repo, tag, digest, blobs = refs[self.rng.randrange(self.hot)] if self.rng.random() < 0.5 \
                else refs[self.rng.randrange(len(refs))]
            self.busy_since = time.monotonic()
            try:
                self.count(self.pull(repo, tag, digest, blobs))
            except Exception as e:  # noqa: BLE001 (every failure is an outcome)
                self.count(f"client error: {type(e).__name__}")
            self.busy_since = None

    def get(self, path, accept=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Accept": accept} if accept else {})
            resp = conn.getresponse()
            body = resp.read()
            length = resp.getheader("Content-Length")
            complete = length is None or int(length) == len(body)
            return resp.status, body, complete
        finally:
            conn.close()

    def pull(self, repo, tag, digest, blobs):
        status, body, complete = self.get(f"/v2/{repo}/manifests/{tag}", OCI_MANIFEST)
        if status != 200:
            return f"manifest {status}"
        if not complete or sha256(body) != digest:
            return "manifest wrong"
        for d in blobs:
            status, body, complete = self.get(f"/v2/{repo}/blobs/{d}")
            if status != 200:
                return f"blob {status}"
            if not complete:
                return "blob cut"
            if sha256(body) != d:
                return "blob WRONG BYTES"
        return "ok"


class Sampler(threading.Thread):
    """Every second: berth's RSS, open files, threads, and (from /metrics)
    runtime tasks, open connections and fills in flight."""

    def __init__(self, pid, port):
        super().__init__(name="sampler", daemon=True)
        self.pid, self.port = pid, port
        self.samples = []
        self.stopped = threading.Event()
        self.started = time.monotonic()

    def run(self):
        while not self.stopped.wait(1.0):
            self.samples.append(self.sample())

    def sample(self):
        status = open(f"/proc/{self.pid}/status").read()
        field = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
        metrics = scrape(self.port)
        return {
            "t": round(time.monotonic() - self.started, 1),
            "rss_mib": round(int(field["VmRSS"].split()[0]) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
            "threads": int(field["Threads"]),
            "tasks": metrics.get("berth_runtime_tasks"),
            "connections": metrics.get("berth_connections"),
            "fills": metrics.get("berth_fills_in_flight"),
        }


def scrape(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def flatness(samples, key, warmup):
    """Median of the first minute after warm-up, of the last minute, and the
    largest value after warm-up."""
    after = [s[key] for s in samples if s["t"] >= warmup and s[key] is not None]
    if len(after) < 4:
        return None
    window = max(1, min(60, len(after) // 4))
    return {"after_warmup": statistics.median(after[:window]),
            "last_minute": statistics.median(after[-window:]),
            "max": max(after)}


def main(argv):
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.splitlines()[0])
    parser.add_argument("--berth", required=True, help="the berth binary to soak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--out", default="bench/soak-results.json")
    args = parser.parse_args(argv)

    root = os.path.abspath("target/soak")
    os.makedirs(root, exist_ok=True)
    print(f"==> generating {args.images} images", file=sys.stderr)
    images = Images(args.images, 512 << 10)
    upstream = Upstream(images, args.fault_rate)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = procs.free_port()
    data = os.path.join(root, f"data-{os.getpid()}")
    config = os.path.join(root, "berth.toml")
    with open(config, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
                f'[[upstream]]\nname = "soak.test"\nurl = "http://127.0.0.1:{upstream.server_address[1]}"\n'
                f'response_timeout = "10s"\nidle_timeout = "5s"\n')
    procs.install_sigterm_handler()
    berth = procs.Proc("berth", [args.berth, "--config", config, "serve"],
                       os.path.join(root, "berth.log"),
                       env={**os.environ, "RUST_LOG": "warn"})
    try:
        procs.wait_http(berth, f"http://127.0.0.1:{port}/healthz")
        return soak(args, images, upstream, berth, port)
    finally:
        berth.stop()
        upstream.shutdown()


def soak(args, images, upstream, berth, port):
    sampler = Sampler(berth.popen.pid, port)
    sampler.start()
    duration = args.minutes * 60
    deadline = time.monotonic() + duration
    client_timeout = 120
    clients = [Client(n, port, images, deadline, hot=16, timeout=client_timeout)
               for n in range(args.clients)]
    print(f"==> {args.clients} clients for {args.minutes} min, {args.fault_rate:.0%} of upstream answers faulty",
          file=sys.stderr)
    for c in clients:
        c.start()
    while time.monotonic() < deadline:
        time.sleep(min(30, max(0.1, deadline - time.monotonic())))
        if sampler.samples:
            print(f"    {json.dumps(sampler.samples[-1])}", file=sys.stderr)
    # Every client returns within its own request timeout, or it hangs.
    for c in clients:
        c.join(timeout=client_timeout + 10)
    hanging = [c.name for c in clients if c.is_alive()]
    # Then berth lets go of every connection and fill by itself.
    settled = None
    for _ in range(60):
        m = scrape(port)
        if m.get("berth_connections") == 0 and m.get("berth_fills_in_flight") == 0:
            settled = m
            break
        time.sleep(1)
    time.sleep(2)
    sampler.stopped.set()
    sampler.join()
    samples = sampler.samples
    warmup = duration * 0.2
    outcomes = {}
    for c in clients:
        for k, v in c.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    report = {
        "minutes": args.minutes, "clients": args.clients, "images": args.images,
        "fault_rate": args.fault_rate, "upstream": upstream.counts,
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        "hanging_clients": hanging,
        "settled": settled is not None,
        "warmup_seconds": warmup,
        "flatness": {k: flatness(samples, k, warmup) for k in ("rss_mib", "fds", "threads", "tasks")},
        "samples": samples,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    wrong = outcomes.get("blob WRONG BYTES", 0) + outcomes.get("manifest wrong", 0)
    ok = not hanging and settled is not None and wrong == 0
    print(f"==> {'PASS' if ok else 'FAIL'}: {len(hanging)} hanging, settled={settled is not None}, "
          f"{wrong} wrong answers; samples in {args.out}", file=sys.stderr)
    return 0 if ok else 1
