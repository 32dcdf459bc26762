"""`bench/run --cluster`: a berth cluster (issue 16) on this machine, against
distribution, in one run.

The parts: a docker-registry upstream seeded with one image, behind the
throttling relay (`relay.py`, all connections together at `rate` bytes/s, as
a registry behind a WAN link looks); a single-node Garage (`garage.py`); a
Redis (Debian's `redis-server`, no persistence); and, in turn, the two
clusters measured:

- **berth**: three replicas from one binary, each with its own empty data
  directory, `[storage.s3]` on the bucket and `[cluster]` on the Redis, its
  peer listener on a loopback port of its own;
- **distribution**: three `docker-registry` instances in proxy mode, all
  with S3 storage on the same bucket (one root directory, redirects off so
  they serve the bytes themselves), which is how distribution is scaled
  out; they do not coordinate fills.

Per repetition and cluster: every instance started afresh on a new prefix
(the bucket holds nothing of it, Redis nothing of its keys), then `clients`
clients at once, client n on instance n mod 3, each pulling the image whole
(manifest by tag, then every blob, each hashed and checked). The rows:

- **upstream bytes / image size**: GET body bytes in the upstream's access
  log during the storm, over the image's size (target 1.00 for berth);
- **time to first byte of the largest layer**, median of the clients of the
  replica that filled it (the one its Redis fill lease named) and of the
  other replicas' clients, and their ratio (others / leader: how much later
  a client of a non-leading replica gets going);
- **Redis commands per pulled blob**: `total_commands_processed` before and
  after the storm, less the run's own redis-cli calls, over the blobs the
  clients pulled (clients x blobs), and per distinct blob.

Figures are reported, never asserted; a wrong byte or a failed pull fails
the run.
"""
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from . import garage as garage_mod
from . import mirrors, procs, pull
from . import upstream as up

MIB = 1 << 20

PROFILE = {"layers": [128 * MIB, 32 * MIB, 32 * MIB, 32 * MIB], "clients": 32, "reps": 3,
           "rate": 64 * MIB, "lease": "10s", "deadline_s": 600}
QUICK = {"layers": [32 * MIB, 8 * MIB], "clients": 32, "reps": 1, "rate": 32 * MIB}
INSTANCES = 3


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Redis:
    """A redis-server on a free loopback port, without persistence; every
    redis-cli call the run makes is counted, so that berth's own commands
    can be told from them."""

    def __init__(self, work):
        self.dir = os.path.join(work, "redis")
        os.makedirs(self.dir)
        self.port = procs.free_port()
        self.own_calls = 0
        self.lock = threading.Lock()
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = procs.Proc("redis", [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
            log_path=os.path.join(self.dir, "redis.log"))
        procs.wait_port(self.proc, self.port)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def cli(self, *args):
        """One redis-cli call (one command), counted."""
        with self.lock:
            self.own_calls += 1
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--raw",
                              *args], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
        return out.stdout.strip()

    def commands(self):
        """(commands processed so far, the run's own calls so far), the
        INFO call itself included in both."""
        info = self.cli("INFO", "stats")
        for line in info.splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":", 1)[1]), self.own_calls
        raise RuntimeError(f"no total_commands_processed in INFO stats: {info[:200]}")


class LeaseWatch:
    """Polls the fill lease of one digest; the peers it named, in order."""

    def __init__(self, redis, key):
        self.redis, self.key = redis, key
        self.peers = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            text = self.redis.cli("GET", self.key)
            try:
                peer = json.loads(text).get("peer") if text else None
            except ValueError:
                peer = None
            if peer and peer not in self.peers:
                self.peers.append(peer)
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.thread.join(timeout=15)
        return self.peers


class Replica(mirrors.Berth):
    """A berth replica: `[storage.s3]` and `[cluster]` added to the config."""

    def __init__(self, root, binary, n, s3, cluster):
        super().__init__(root, binary)
        self.key, self.label = f"replica-{n}", f"berth replica {n}"
        self.s3, self.cluster = s3, cluster
        self.peer = None

    def start(self, upstream_url):
        self.peer = f"127.0.0.1:{procs.free_port()}"
        return super().start(upstream_url)

    def config_text(self, upstream_url):
        return (super().config_text(upstream_url) + self.s3 + self.cluster +
                f'peer_listen = "{self.peer}"\n')


class S3Proxy(mirrors.Mirror):
    """distribution in proxy mode with S3 storage on the shared bucket."""
    key = "distribution"
    label = "docker-registry proxy (S3)"

    def __init__(self, root, n, garage, rootdirectory):
        super().__init__(root)
        self.key, self.label = f"distribution-{n}", f"docker-registry proxy {n} (S3)"
        self.garage, self.rootdirectory = garage, rootdirectory

    def _spawn(self, upstream_url):
        with open(self.garage.key_id_file) as f:
            key_id = f.read().strip()
        with open(self.garage.secret_file) as f:
            secret = f.read().strip()
        config = self._path("config.yml")
        with open(config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: "{key_id}"
    secretkey: "{secret}"
    region: "{garage_mod.REGION}"
    regionendpoint: "{self.garage.endpoint}"
    bucket: "{garage_mod.BUCKET}"
    secure: false
    v4auth: true
    rootdirectory: "{self.rootdirectory}"
  redirect:
    disable: true
http:
  addr: 127.0.0.1:{self.port}
  secret: berth-bench-cluster
proxy:
  remoteurl: {upstream_url}
""")
        # The AWS SDK refuses a custom CA bundle on distribution's own
        # transport (LoadCustomCABundleError): the store is plain HTTP on
        # loopback and needs none.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        return procs.Proc(self.label, ["docker-registry", "serve", config],
                          log_path=self._path("registry.log"), env=env)


class Cluster:
    """The run: the parts above, the repetitions, and every figure."""

    def __init__(self, work, berth_binary, profile):
        self.work, self.binary, self.p = work, berth_binary, profile
        self.figures = {}   # cluster -> row -> [per-repetition values]
        self.wrong = []     # failed pulls, wrong bytes
        self.root = os.path.join(work, "instances")
        os.makedirs(self.root)

    def note(self, cluster, row, value):
        self.figures.setdefault(cluster, {}).setdefault(row, []).append(value)

    def run(self):
        d = os.path.join(self.work, "upstream")
        os.makedirs(d)
        self.upstream = up.Upstream(d)
        self.upstream.start()
        layers_dir = os.path.join(self.work, "layers")
        os.makedirs(layers_dir)
        log(f"seeding the upstream: {sum(self.p['layers']) // MIB} MiB image "
            f"({len(self.p['layers'])} layers)")
        self.image, _ = up.push_large_image(self.upstream.port, layers_dir, self.p["layers"],
                                            repo="bench/cluster")
        self.relay, self.relay_url = self.start_relay()
        log("starting Garage (one node) and Redis")
        self.garage = garage_mod.Garage(self.work).start()
        self.redis = Redis(self.work).start()
        for rep in range(self.p["reps"]):
            log(f"repetition {rep + 1} of {self.p['reps']}")
            self.berth_storm(rep)
            self.distribution_storm(rep)

    def start_relay(self):
        port = procs.free_port()
        stats = os.path.join(self.work, f"relay-{port}.json")
        bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = procs.Proc("relay", [sys.executable, "-m", "berthbench.relay", "--port",
                                    str(port), "--target-port", str(self.upstream.port),
                                    "--rate", str(self.p["rate"]), "--stats", stats],
                          log_path=os.path.join(self.work, "relay.log"), cwd=bench_dir)
        procs.wait_port(proc, port)
        return proc, f"http://127.0.0.1:{port}"

    # --- the two clusters -------------------------------------------------------

    def berth_storm(self, rep):
        prefix = f"berth-rep{rep}"
        s3 = self.garage.s3_config(prefix=prefix)
        cluster = (f'\n[cluster]\nredis_url = "{self.redis.url}"\nkey_prefix = "{prefix}"\n'
                   f'peer_secret_file = "{self.peer_secret_file()}"\n'
                   f'lease = "{self.p.get("lease", "10s")}"\n')
        replicas = [Replica(self.root, self.binary, n, s3, cluster) for n in range(INSTANCES)]
        try:
            for r in replicas:
                r.start(self.relay_url)
            largest = self.image.layers[0][0]
            watch = LeaseWatch(self.redis, f"{prefix}:fill:{largest}")
            before = self.redis.commands()
            results, traffic = self.storm([r.url for r in replicas])
            leaders = watch.stop()
            after = self.redis.commands()
        finally:
            for r in replicas:
                r.stop()
        self.record("berth", results, traffic)
        # Berth's own commands: the counter's growth less the run's calls.
        berth_commands = (after[0] - before[0]) - (after[1] - before[1])
        pulled = len(results) * len(self.image.blobs)
        self.note("berth", "redis_per_pulled_blob", berth_commands / pulled)
        self.note("berth", "redis_per_blob", berth_commands / len(self.image.blobs))
        peers = [r.peer for r in replicas]
        if len(leaders) != 1 or leaders[0] not in peers:
            self.wrong.append(f"berth, repetition {rep + 1}: the largest layer's fill lease "
                              f"named {leaders or 'nobody'} (replicas: {peers})")
            return
        leader = peers.index(leaders[0])
        self.ttfb_rows("berth", results, leader)

    def distribution_storm(self, rep):
        proxies = [S3Proxy(self.root, n, self.garage, f"/distribution-rep{rep}")
                   for n in range(INSTANCES)]
        try:
            for p in proxies:
                p.start(self.relay_url)
            results, traffic = self.storm([p.url for p in proxies])
        finally:
            for p in proxies:
                p.stop()
        self.record("distribution", results, traffic)

    def peer_secret_file(self):
        path = os.path.join(self.work, "peer_secret")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(os.urandom(24).hex())
            os.chmod(path, 0o600)
        return path

    # --- the storm ----------------------------------------------------------------

    def storm(self, urls):
        """`clients` pulls at once, client n on urls[n % 3]; each result is
        (instance, time to first byte of the largest layer, error or None);
        and the upstream's traffic during it."""
        mark = self.upstream.log_mark()
        deadline = time.monotonic() + self.p.get("deadline_s", 600)
        img = self.image

        def one(n):
            instance = n % len(urls)
            puller = pull.Puller(urls[instance], deadline)
            try:
                puller.pull(img.repo, img.tag, img.digest)
                return instance, puller.ttfb, None
            except (pull.Failed, pull.TimedOut, OSError) as e:
                return instance, None, f"client {n} on instance {instance}: {e}"

        with concurrent.futures.ThreadPoolExecutor(self.p["clients"]) as pool:
            results = list(pool.map(one, range(self.p["clients"])))
        traffic = self.upstream.settled_traffic_since(mark)
        return results, traffic

    def record(self, cluster, results, traffic):
        failed = [err for _, _, err in results if err]
        self.wrong.extend(f"{cluster}: {err}" for err in failed)
        self.note(cluster, "upstream_ratio", traffic["bytes"] / self.image.size)
        self.note(cluster, "upstream_blob_gets", traffic["blob_gets"])
        ttfbs = [t for _, t, err in results if not err and t is not None]
        if ttfbs:
            self.note(cluster, "ttfb_all_s", statistics.median(ttfbs))
        log(f"{cluster}: upstream sent {traffic['bytes'] / self.image.size:.2f} x the image "
            f"({traffic['blob_gets']} blob GETs); {len(failed)} failed pulls")

    def ttfb_rows(self, cluster, results, leader):
        on_leader = [t for i, t, err in results if not err and i == leader and t is not None]
        others = [t for i, t, err in results if not err and i != leader and t is not None]
        if not on_leader or not others:
            return
        lead, rest = statistics.median(on_leader), statistics.median(others)
        self.note(cluster, "ttfb_leader_s", lead)
        self.note(cluster, "ttfb_others_s", rest)
        self.note(cluster, "ttfb_others_over_leader", rest / lead if lead else None)

    def report(self):
        med = {c: {row: statistics.median([v for v in vals if v is not None])
                   for row, vals in rows.items() if any(v is not None for v in vals)}
               for c, rows in self.figures.items()}
        return {"profile": {k: v for k, v in self.p.items()},
                "image_bytes": self.image.size, "blobs": len(self.image.blobs),
                "instances": INSTANCES, "figures": self.figures, "medians": med,
                "wrong": self.wrong, "checks": {"digests_ok": not self.wrong}}


ROWS = [
    ("upstream_ratio", "Upstream bytes ÷ image size (target 1.00)", "{:.2f}"),
    ("upstream_blob_gets", "Upstream blob GETs", "{:.0f}"),
    ("ttfb_all_s", "Largest layer, time to first byte, all clients (s)", "{:.3f}"),
    ("ttfb_leader_s", "Largest layer, time to first byte, leader's clients (s)", "{:.3f}"),
    ("ttfb_others_s", "… the other replicas' clients (s)", "{:.3f}"),
    ("ttfb_others_over_leader", "… others ÷ leader", "{:.2f}"),
    ("redis_per_pulled_blob", "Redis commands per pulled blob", "{:.2f}"),
    ("redis_per_blob", "Redis commands per distinct blob", "{:.1f}"),
]


def markdown(report):
    med = report["medians"]
    lines = [f"{report['profile']['clients']} cold clients over {report['instances']} "
             f"instances, one {report['image_bytes'] / MIB:.0f} MiB image "
             f"({report['blobs']} blobs), upstream at "
             f"{report['profile']['rate'] / MIB:.0f} MiB/s; medians of "
             f"{report['profile']['reps']} repetition(s)", "",
             "| | berth cluster | distribution ×3, shared S3 |", "|---|---:|---:|"]
    for key, label, fmt in ROWS:
        cells = []
        for c in ("berth", "distribution"):
            v = med.get(c, {}).get(key)
            cells.append(fmt.format(v) if v is not None else "—")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    if report["wrong"]:
        lines += ["", "Failures:"] + [f"- {w}" for w in report["wrong"]]
    return "\n".join(lines)
