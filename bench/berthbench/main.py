"""bench/run: berth side by side with distribution's proxy mode and an nginx
cache, on loopback, in one run; a Markdown table on stdout and JSON.

Each repetition starts every mirror afresh (empty cache) for each cold
scenario, in front of the same seeded upstream, and runs the scenarios
against the three in turn, so that the machine's noise falls on all of them
alike. Figures are reported, never asserted: the table says, per row,
berth's ratio to the best peer and whether the issue's target was met.

The benchmark measures the mirror, not its clients: one pull client in
eight hashes what it gets, the others check lengths and sampled bytes (see
`pull`); the clients' CPU time is reported beside each wall time, and each
mirror's CPU seconds per GiB served (its process group, from /proc) is the
figure that compares across machines.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from . import cluster, mirrors, procs, pull, scale, shared, shared_table, tools
from . import upstream as up

MIB = 1 << 20
GIB = 1 << 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(REPO_ROOT, "bench")

# The content and load for the full run; --quick shrinks everything
# but keeps every scenario and every mirror.
PROFILES = {
    "full": {
        "layers": [512 * MIB] + [16 * MIB] * 8, "small_images": 500, "clients": 32,
        "reps": 3, "load_seconds": 8, "rate": 50 * MIB, "deadline": 150,
    },
    "quick": {
        "layers": [40 * MIB] + [2 * MIB] * 8, "small_images": 40, "clients": 8,
        "reps": 1, "load_seconds": 2, "rate": 40 * MIB, "deadline": 40,
    },
}

# Debian packages, by the command the harness runs.
NEEDED = {"docker-registry": "docker-registry", "nginx": "nginx", "wrk": "wrk",
          "h2load": "nghttp2-client", "curl": "curl", "openssl": "openssl"}

ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def main(argv):
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in under 3 minutes (smaller content, 1 repetition)")
    parser.add_argument("--berth", help="berth binary to measure (default: cargo build --release)")
    parser.add_argument("--output", default=None,
                        help="JSON results file (default: bench/results-<profile>.json)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, --quick: 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--scale", action="store_true",
                        help="the large-cache profile instead: berth alone, filled through "
                             "its API from a synthetic upstream (see berthbench/scale.py)")
    parser.add_argument("--objects", default="100000,1000000",
                        help="--scale: the store sizes measured, in objects (3 an image)")
    parser.add_argument("--manifests", action="store_true",
                        help="scenario 4 alone (warm manifests over HTTP/1.1, berth and nginx), "
                             "for measuring a change to the request path")
    parser.add_argument("--baseline",
                        help="with --manifests: a second berth binary measured in the same run "
                             "(its column is \"berth (baseline)\")")
    parser.add_argument("--shared", action="store_true",
                        help="the shared-tier profile instead: berth without a shared tier "
                             "and a replica reading a Garage bucket another replica filled "
                             "(see berthbench/shared.py)")
    parser.add_argument("--cluster", action="store_true",
                        help="the cluster profile instead: three berth replicas sharing "
                             "a Garage bucket and a Redis against three distribution proxies "
                             "on the same bucket, 32 cold clients across them "
                             "(see berthbench/cluster.py)")
    args = parser.parse_args(argv)
    if args.cluster:
        return run_cluster(args)
    if args.scale:
        return run_scale(args)
    if args.shared:
        return run_shared(args)
    profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.reps:
        profile["reps"] = args.reps
    name = "quick" if args.quick else "full"
    if args.manifests:
        profile.update(layers=[MIB], reps=args.reps or 3, manifests_only=True,
                       baseline=args.baseline)
        name += "-manifests"
    output = args.output or os.path.join(BENCH_DIR, f"results-{name}.json")

    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    ensure_tools()
    berth = args.berth or build_berth()
    procs.install_sigterm_handler()
    work = tempfile.mkdtemp(prefix="berth-bench-")
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        bench = Bench(work, berth, profile, name)
        bench.run()
        report = bench.report()
        report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(markdown(report))
    print(f"\nJSON: {output}; {report['seconds']:.0f} s in all.")
    return 0 if report["checks"]["digests_ok"] else 1


def run_scale(args):
    """`--scale`: the large-cache profile (berthbench/scale.py)."""
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    ensure_tools(dict(NEEDED, go="golang-go"))
    berth = args.berth or build_berth()
    output = args.output or os.path.join(BENCH_DIR, "results-scale.json")
    procs.install_sigterm_handler()
    work = tempfile.mkdtemp(prefix="berth-scale-")
    started = time.monotonic()
    load_before = os.getloadavg()
    objects = [int(x) for x in args.objects.split(",")]
    run = scale.Scale(work, berth, objects)
    failure = None
    try:
        run.run()
    # A stop (SIGTERM, ^C) too: reported with what was measured before it.
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001
        failure = f"{type(e).__name__}: {e}"[:2000]
        print(f"the scale run failed: {failure}", file=sys.stderr)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results = run.results
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": "scale", "machine": machine(),
        "load_before": " ".join(f"{x:.2f}" for x in load_before),
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "memory_budget": {"hot_size": scale.HOT_SIZE, "meta_cache": scale.META_CACHE},
        "results": results, "seconds": round(time.monotonic() - started, 1),
        "failure": failure,
    }
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    # What was measured before a failure is kept and printed too.
    print(scale.markdown(report))
    print(f"\nJSON: {output}; {report['seconds']:.0f} s in all.")
    return 1 if failure else 0


def run_shared(args):
    """`--shared`: the shared tier's profile (berthbench/shared.py)."""
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    ensure_tools({k: v for k, v in NEEDED.items() if k in ("docker-registry", "wrk", "curl")})
    berth = args.berth or build_berth()
    profile = dict(shared.PROFILE)
    if args.quick:
        profile.update(layers=[32 * MIB] + [2 * MIB] * 8, small_images=50, clients=4, reps=1,
                       load_seconds=1)
    if args.reps:
        profile["reps"] = args.reps
    output = args.output or os.path.join(
        BENCH_DIR, "results-shared-quick.json" if args.quick else "results-shared.json")
    procs.install_sigterm_handler()
    work = tempfile.mkdtemp(prefix="berth-shared-")
    started = time.monotonic()
    load_before = os.getloadavg()
    busy_before, own_before = machine_busy(), self_cpu() + children_cpu()
    try:
        run = shared.Shared(work, berth, profile)
        run.run()
        report = run.report()
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # Every process the run started has been reaped by now: its CPU is in
    # the children's; what else kept the cores busy was someone else's.
    busy, steal = (after - before for after, before in zip(machine_busy(), busy_before))
    own = self_cpu() + children_cpu() - own_before
    seconds = time.monotonic() - started
    report.update(machine=machine(), load_before=" ".join(f"{x:.2f}" for x in load_before),
                  load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
                  seconds=round(seconds, 1),
                  cpu={"capacity_s": round(seconds * os.cpu_count(), 1),
                       "busy_s": round(busy, 1), "this_run_s": round(own, 1),
                       "others_s": round(max(busy - own, 0.0), 1),
                       "steal_s": round(steal, 1)})
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(shared_table.markdown(report))
    print(f"\nJSON: {output}; {report['seconds']:.0f} s in all.")
    return 0 if report["checks"]["digests_ok"] else 1


def run_cluster(args):
    """`--cluster`: a berth cluster against distribution (berthbench/cluster.py)."""
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    ensure_tools({"docker-registry": "docker-registry", "redis-server": "redis-server",
                  "redis-cli": "redis-tools"})
    berth = args.berth or build_berth()
    profile = dict(cluster.PROFILE)
    if args.quick:
        profile.update(cluster.QUICK)
    if args.reps:
        profile["reps"] = args.reps
    output = args.output or os.path.join(
        BENCH_DIR, "results-cluster-quick.json" if args.quick else "results-cluster.json")
    procs.install_sigterm_handler()
    work = tempfile.mkdtemp(prefix="berth-cluster-")
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        run = cluster.Cluster(work, berth, profile)
        run.run()
        report = run.report()
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.update(machine=machine(), load_before=" ".join(f"{x:.2f}" for x in load_before),
                  load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
                  seconds=round(time.monotonic() - started, 1))
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(cluster.markdown(report))
    print(f"\nJSON: {output}; {report['seconds']:.0f} s in all.")
    return 0 if report["checks"]["digests_ok"] else 1


def ensure_tools(needed=None):
    """Install what is missing from Debian, without asking anything."""
    needed = needed or NEEDED
    missing = sorted({pkg for cmd, pkg in needed.items() if shutil.which(cmd) is None})
    if not missing:
        return
    print(f"==> installing {' '.join(missing)}", file=sys.stderr)
    root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing):
        subprocess.run(root + argv, check=True, stdin=subprocess.DEVNULL, env=env)


def build_berth():
    print("==> cargo build --release --bin berth", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--bin", "berth"], cwd=REPO_ROOT,
                   check=True, stdin=subprocess.DEVNULL)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO_ROOT, "target"))
    return os.path.join(target, "release", "berth")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One run: the upstream, its content, the mirrors, and every figure."""

    def __init__(self, work, berth_binary, profile, name):
        self.work, self.p, self.name = work, profile, name
        self.berth_binary = berth_binary
        self.mirrors = mirrors.all_mirrors(os.path.join(work, "mirrors"), berth_binary)
        os.makedirs(os.path.join(work, "mirrors"))
        self.tls = self._certificate()
        self.tls_mirrors = mirrors.all_mirrors(os.path.join(work, "mirrors"), berth_binary,
                                               tls=self.tls)
        self.figures = {}   # row key -> mirror key -> [per-repetition value]
        self.wrong = []     # berth's answers with wrong bytes or errors (not cut-offs)
        self.peer_failures = []  # the same from the peers: their figures, not a failed run
        self.cut_off = []   # clients stopped by the deadline
        self.upstream = None
        self.large = None
        self.small = []

    # --- set-up ---------------------------------------------------------------

    def _certificate(self):
        d = os.path.join(self.work, "tls")
        os.makedirs(d)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True)
        return cert, key

    def seed(self):
        d = os.path.join(self.work, "upstream")
        os.makedirs(d)
        self.upstream = up.Upstream(d)
        self.upstream.start()
        layers = self.p["layers"]
        log(f"seeding the upstream: {sum(layers) // MIB} MiB image "
            f"({len(layers)} layers), {self.p['small_images']} small images")
        # The layer files stay: the sampling clients compare with them, and
        # the largest is the loopback ceiling's payload.
        self.layers = os.path.join(self.work, "layers")
        os.makedirs(self.layers)
        self.large, paths = up.push_large_image(self.upstream.port, self.layers, layers)
        self.ceiling_file = paths[self.large.layers[0][0]]
        self.small = up.push_small_images(self.upstream.port, self.p["small_images"])

    def run(self):
        self.seed()
        self.ceiling = tools.loopback_ceiling(self.ceiling_file)
        self.p["ceiling"] = self.ceiling
        if self.p.get("manifests_only"):
            return self.run_manifests()
        for rep in range(self.p["reps"]):
            log(f"repetition {rep + 1} of {self.p['reps']}")
            for mirror in self.mirrors:
                self.cold_single_then_warm(mirror)
            for mirror in self.mirrors:
                self.cold_concurrent(mirror, throttled=False)
            for mirror in self.mirrors:
                self.cold_concurrent(mirror, throttled=True)
            for mirror in self.mirrors:
                if mirror.key in ("berth", "registry"):
                    self.upstream_requests(mirror)
            for mirror in self.tls_mirrors:
                self.over_tls(mirror)

    def run_manifests(self):
        """`--manifests`: scenario 4 over HTTP/1.1 for berth, the baseline
        berth if given, and nginx, in turn in every repetition."""
        root = os.path.join(self.work, "mirrors")
        mirrors_ = [self.mirrors[0]]
        if self.p.get("baseline"):
            base = mirrors.Berth(root, self.p["baseline"])
            base.key, base.label = "berth-base", "berth (baseline)"
            mirrors_.append(base)
        mirrors_.append(self.mirrors[2])
        for rep in range(self.p["reps"]):
            log(f"repetition {rep + 1} of {self.p['reps']}: warm manifests")
            for mirror in mirrors_:
                mirror.start(self.upstream.url)
                try:
                    self.warm_manifests(mirror)
                    self.manifest_load(mirror, mirror.key, "1.1")
                finally:
                    mirror.stop()

    def note(self, row, mirror, value):
        self.figures.setdefault(row, {}).setdefault(mirror, []).append(value)

    def check_results(self, mirror, what, results):
        for r in results:
            if r.get("timed_out"):
                self.cut_off.append(f"{what}: {r['error']}")
            elif not r.get("ok"):
                self.failed(mirror, f"{what}: {r.get('error')}")

    def failed(self, mirror, text):
        """A wrong answer. berth's fail the run; a peer's (distribution's
        proxy answers 500 under concurrent cold pulls now and then) are
        listed and show in its "share of clients with the right bytes"."""
        if mirror.key.startswith("berth"):
            self.wrong.append(text)
        else:
            self.peer_failures.append(text)

    # --- scenarios --------------------------------------------------------------

    def cold_single_then_warm(self, mirror):
        """Scenario 1 on a fresh mirror, then 3, 4 (and 6 for berth) on the
        cache it filled."""
        key = mirror.key
        mirror.start(self.upstream.url)
        try:
            cpu, own = mirror.proc.cpu_seconds(), self_cpu()
            r = pull.pull_once(mirror.url, self.large.repo, self.large.tag, self.large.digest,
                               deadline_s=self.p["deadline"] * 4)
            cpu, own = mirror.proc.cpu_seconds() - cpu, self_cpu() - own
            self.check_results(mirror, f"{mirror.label} cold pull", [r])
            if r["ok"]:
                self.note("cold1", key, r["done"])
                self.note("cold1_cpu", key, cpu)
                self.note("cold1_client_cpu", key, own)
                self.note("cpu_gib_cold1", key, cpu / (r["bytes"] / GIB))
            self.warm_manifests(mirror)
            with procs.RssSampler(mirror.proc) as rss:
                self.blob_throughput(mirror, "", "1.1")
            self.note("rss_warm", key, rss.peak_mib)
            self.manifest_load(mirror, key, "1.1")
            if key == "berth":
                self.status_page_cost(mirror)
                self.manifest_load(mirror, "berth-h2c", "h2c")
            if mirror.h2c_url():
                self.blob_throughput(mirror, "_h2c", "h2c")
        finally:
            mirror.stop()

    def cold_concurrent(self, mirror, throttled):
        """Scenario 2: every client starts a pull of the large image at once
        on a fresh mirror; peak RSS meanwhile (scenario 5)."""
        n, key = self.p["clients"], mirror.key
        relay = self.start_relay() if throttled else None
        mirror.start(relay[1] if relay else self.upstream.url)
        mark = self.upstream.log_mark()
        try:
            # Behind the uplink, a mirror that fetches once per client needs
            # N times the link time; 6 link times are enough to show it.
            deadline = self.p["deadline"]
            if throttled:
                deadline = max(30.0, 6 * self.large.size / self.p["rate"])
            cpu = mirror.proc.cpu_seconds()
            with procs.RssSampler(mirror.proc) as rss:
                wall, results, clients_cpu = pull.run_clients(
                    n, mirror.url, self.large.repo, self.large.tag, self.large.digest,
                    deadline, layers=self.layers)
            cpu = mirror.proc.cpu_seconds() - cpu
            warm_ttfb = None
            if throttled:
                self.note_link(key, relay)
                if all(r["ok"] for r in results):
                    warm_ttfb = self.warm_ttfb_last(mirror, deadline)
        finally:
            mirror.stop()
            if relay:
                relay[0].stop()
        what = f"{mirror.label} {n} cold pulls" + (" throttled" if throttled else "")
        self.check_results(mirror, what, results)
        traffic = self.upstream.traffic_since(mark)
        suffix = "_slow" if throttled else ""
        self.note("cold_n_upstream" + suffix, key, traffic["bytes"] / self.large.size)
        done = [r["done"] for r in results if r["ok"]]
        self.note("cold_n_ok" + suffix, key, len(done) / n)
        if len(done) == n:
            self.note("cold_n" + suffix, key, wall)
            self.note("cold_n_client_cpu" + suffix, key, clients_cpu)
            if not throttled:
                served = sum(r["bytes"] for r in results)
                self.note("cpu_gib_cold_n", key, cpu / (served / GIB))
        if throttled:
            ttfbs = [r["ttfb"] for r in results if r["ttfb"] is not None]
            if ttfbs:
                self.note("slow_ttfb_first", key, min(ttfbs))
                self.note("slow_ttfb_last", key, max(ttfbs))
                self.note("slow_ttfb_bound", key, max(ttfbs) / max(2 * min(ttfbs), 0.05))
                if warm_ttfb:
                    self.note("slow_ttfb_vs_warm", key, max(ttfbs) / warm_ttfb)
            if len(done) == n:
                self.note("slow_done_vs_link", key, max(done) / (self.large.size / self.p["rate"]))
        else:
            self.note("rss_cold", key, rss.peak_mib)

    def warm_ttfb_last(self, mirror, deadline):
        """The control for the throttled TTFB rows: the same clients pulling
        the same image again, now from the mirror's warm cache; the last
        client's time to its first layer byte. On two cores, 32 client
        processes starting at once spread their own TTFBs over 0.2-0.4 s
        with no upstream at all: a throttled last TTFB at or under this one
        means no client waited on the fill."""
        _, results, _ = pull.run_clients(
            self.p["clients"], mirror.url, self.large.repo, self.large.tag,
            self.large.digest, deadline, layers=self.layers)
        self.check_results(mirror, f"{mirror.label} warm pulls after the throttled ones", results)
        ttfbs = [r["ttfb"] for r in results if r["ok"] and r["ttfb"] is not None]
        return max(ttfbs) if len(ttfbs) == len(results) else None

    def upstream_requests(self, mirror):
        """Scenario 7: what pulls cost upstream, counted the way Docker Hub
        counts them against its pull limit (manifest GETs) and not (HEADs,
        blobs, anything else, a mirror's background requests included): one
        cold pull of a small image on a fresh mirror, then 100 warm pulls of
        it within the tag's TTL."""
        key, img = mirror.key, self.small[0]
        mirror.start(self.upstream.url)
        try:
            for phase, pulls in (("cold", 1), ("warm", 100)):
                mark = self.upstream.log_mark()
                for _ in range(pulls):
                    r = pull.pull_once(mirror.url, img.repo, img.tag, img.digest,
                                       deadline_s=self.p["deadline"])
                    self.check_results(mirror, f"{mirror.label} {phase} pull of {img.tag}", [r])
                traffic = self.upstream.settled_traffic_since(mark)
                counted = traffic["manifest_gets"]
                self.note(f"upstream_{phase}_counted", key, counted / pulls)
                self.note(f"upstream_{phase}_uncounted", key,
                          (traffic["requests"] - counted) / pulls)
        finally:
            mirror.stop()

    def start_relay(self):
        """The throttled uplink between a mirror and the upstream."""
        port = procs.free_port()
        stats = os.path.join(self.work, f"relay-{port}.json")
        proc = procs.Proc("relay", [sys.executable, "-m", "berthbench.relay", "--port",
                                    str(port), "--target-port", str(self.upstream.port),
                                    "--rate", str(self.p["rate"]), "--stats", stats],
                          log_path=os.path.join(self.work, "relay.log"), cwd=BENCH_DIR)
        procs.wait_port(proc, port)
        return proc, f"http://127.0.0.1:{port}", stats

    def note_link(self, key, relay):
        """What the throttled link delivered during the cold pulls, as a
        share of its rate (the relay's stats so far: SIGUSR1 has it write
        them): a run where the relay itself fell behind shows here, not as
        the mirror's fault in the completion row."""
        proc, _, stats_path = relay
        snapshot = stats_path + ".snapshot"
        os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not os.path.exists(snapshot) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            with open(snapshot) as f:
                stats = json.load(f)
            span = stats["last_byte"] - stats["first_byte"]
        except (OSError, ValueError, KeyError):
            return
        if span > 0:
            self.note("slow_link_rate", key, stats["bytes_from_upstream"] / span / self.p["rate"])

    def warm_manifests(self, mirror):
        """Every small image's manifest by tag and by digest, and the large
        image's blobs are already in: the mirror's cache is warm."""
        puller = pull.Puller(mirror.url, time.monotonic() + 300, self.cafile(mirror))
        for img in self.small:
            for ref in (img.tag, img.digest):
                puller.fetch(f"/v2/{img.repo}/manifests/{ref}", img.digest, None,
                             headers={"Accept": ACCEPT})

    def cafile(self, mirror):
        return self.tls[0] if mirror.scheme == "https" else None

    def blob_throughput(self, mirror, suffix, http):
        """Scenario 3: every blob of the large image from the warm cache, by 1
        client and by n at once (curl), over `http` ("1.1", "h2c", or "h2"
        and "1.1" over TLS); rows `warm_blob_1<suffix>` etc. Plain HTTP/1.1
        (no suffix) also gives the mirror's and the clients' CPU."""
        base = mirror.h2c_url() if http == "h2c" else mirror.url
        urls = [f"{base}/v2/{self.large.repo}/blobs/{d}" for d, _ in self.large.blobs]
        key = mirror.base_key
        for clients, row in ((1, "warm_blob_1"), (self.p["clients"], "warm_blob_n")):
            cpu, curl_cpu = mirror.proc.cpu_seconds(), children_cpu()
            r = tools.curl_throughput([urls] * clients, http=http, cafile=self.cafile(mirror))
            cpu, curl_cpu = mirror.proc.cpu_seconds() - cpu, children_cpu() - curl_cpu
            expected = clients * sum(size for _, size in self.large.blobs)
            if r["failures"] or r["bytes"] != expected:
                self.failed(mirror, f"{mirror.label} warm blobs over {http}: "
                                    f"{r['bytes']} of {expected} bytes {r['failures'][:2]}")
                continue
            self.note(row + suffix, key, r["gibps"])
            if not suffix:
                self.note(row + "_client_cpu", key, curl_cpu)
                clients_label = row.removeprefix("warm_blob_")
                self.note(f"cpu_gib_warm_{clients_label}", key, cpu / (r["bytes"] / GIB))

    def manifest_load(self, mirror, key, http):
        """Scenario 4: warm manifest GETs at 64 connections, by tag and by
        digest."""
        by = {"tag": [f"/v2/{i.repo}/manifests/{i.tag}" for i in self.small],
              "digest": [f"/v2/{i.repo}/manifests/{i.digest}" for i in self.small]}
        d = tempfile.mkdtemp(dir=self.work)
        for kind, paths in by.items():
            cpu, client_cpu = mirror.proc.cpu_seconds(), children_cpu()
            upstream_cpu = self.upstream.proc.cpu_seconds()
            if http == "1.1":
                r = tools.wrk(mirror.url, paths, ACCEPT, d, seconds=self.p["load_seconds"])
            else:
                r = tools.h2load(mirror.url, paths, ACCEPT, d, seconds=self.p["load_seconds"])
            cpu, client_cpu = mirror.proc.cpu_seconds() - cpu, children_cpu() - client_cpu
            upstream_cpu = self.upstream.proc.cpu_seconds() - upstream_cpu
            if "error" in r or r["errors"]:
                self.failed(mirror, f"{mirror.label} manifests by {kind} over {http}: "
                                    f"{r.get('error') or r['error_detail']}")
                continue
            self.note(f"manifest_{kind}_rps", key, r["rps"])
            self.note(f"manifest_{kind}_p99", key, r["p99_ms"])
            # Per 10k requests: what a request costs each side.
            self.note(f"manifest_{kind}_cpu", key, cpu / r["requests"] * 1e4)
            self.note(f"manifest_{kind}_client_cpu", key, client_cpu / r["requests"] * 1e4)
            # What the mirror makes its upstream do while warm (berth's
            # background referrers refreshes): on this machine the upstream
            # shares the cores, so it weighs on the rows above.
            self.note(f"manifest_{kind}_upstream_cpu", key, upstream_cpu / r["requests"] * 1e4)

    def status_page_cost(self, mirror):
        """Scenario 4 again: warm manifests by tag at 64 connections with
        berth's status page fetched every second (an open browser tab
        refreshes every 2 s) and without, in three adjacent pairs whose order
        alternates, so that drift in the machine's load falls on both; the
        row is the median of the pairs' ratios. berth's CPU time per request
        is measured beside it: on a busy machine it says more than the
        throughput, which other processes' load moves."""
        paths = [f"/v2/{i.repo}/manifests/{i.tag}" for i in self.small]
        d = tempfile.mkdtemp(dir=self.work)
        ratios, cpu_ratios = [], []
        for pair in range(3):
            order = ("plain", "polled") if pair % 2 == 0 else ("polled", "plain")
            rps, cpu_us = {}, {}
            for kind in order:
                poller = tools.Poller(f"{mirror.url}/") if kind == "polled" else None
                cpu = mirror.proc.cpu_seconds()
                try:
                    r = tools.wrk(mirror.url, paths, ACCEPT, d, seconds=self.p["load_seconds"])
                finally:
                    polls = poller.stop() if poller else None
                cpu = mirror.proc.cpu_seconds() - cpu
                if "error" in r or r["errors"]:
                    self.failed(mirror, f"manifests with the status page {kind}: "
                                        f"{r.get('error') or r['error_detail']}")
                    return
                if polls and (polls[1] or not polls[0]):
                    self.failed(mirror, f"status page polls: {polls[0]} answered, "
                                        f"failed: {polls[1][:2]}")
                    return
                rps[kind] = r["rps"]
                cpu_us[kind] = cpu * 1e6 / max(r["requests"], 1)
                self.note(f"status_page_{kind}_rps", "berth", r["rps"])
            ratios.append(rps["polled"] / rps["plain"])
            cpu_ratios.append(cpu_us["polled"] / cpu_us["plain"])
        self.note("status_page_ratio", "berth", statistics.median(ratios))
        self.note("status_page_cpu_ratio", "berth", statistics.median(cpu_ratios))

    def over_tls(self, mirror):
        """Scenario 6: a mirror over TLS, one certificate for all. A cold pull
        warms it; then warm blobs over HTTP/2 and HTTP/1.1 (by ALPN), and for
        berth warm manifests over HTTP/2."""
        mirror.start(self.upstream.url)
        try:
            r = pull.pull_once(mirror.url, self.large.repo, self.large.tag, self.large.digest,
                               deadline_s=self.p["deadline"] * 4, cafile=self.tls[0])
            self.check_results(mirror, f"{mirror.label} cold pull", [r])
            if not r["ok"]:
                return
            self.blob_throughput(mirror, "_tls_h2", "h2")
            self.blob_throughput(mirror, "_tls_h1", "1.1")
            if mirror.base_key == "berth":
                self.warm_manifests(mirror)
                self.manifest_load(mirror, "berth-tls", "h2")
        finally:
            mirror.stop()

    # --- the report -------------------------------------------------------------

    def report(self):
        rows = [row.evaluate(self.figures, self.p) for row in ROWS]
        rows = [r for r in rows if r]
        berth_ok = all(v == 1.0 for v in self.figures.get("cold_n_ok", {}).get("berth", [0]))
        if self.p.get("manifests_only"):
            berth_ok = True
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "profile": self.name,
            "machine": machine(),
            "content": {"large_image_bytes": self.large.size,
                        "large_layers": self.p["layers"], "small_images": len(self.small),
                        "clients": self.p["clients"], "repetitions": self.p["reps"],
                        "throttle_bytes_per_s": self.p["rate"]},
            "loopback_ceiling_gibps": self.ceiling,
            "rows": rows,
            "checks": {"digests_ok": not self.wrong and berth_ok,
                       "wrong_answers": self.wrong, "peer_failures": self.peer_failures,
                       "cut_off_by_deadline": self.cut_off},
        }


def self_cpu():
    """CPU seconds this process has used (the in-process client's)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def children_cpu():
    """CPU seconds of every child this process has reaped (curl, wrk,
    h2load): taken before and after a tool runs, the tool's."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def machine_busy():
    """Core-seconds since boot that the machine's processes kept its cores
    busy (/proc/stat: user, nice, system, irq, softirq), and that the
    hypervisor gave to others (steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / (1 << 20)
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "cpu": cpu,
            "kernel": platform.release()}


PEERS = ("registry", "nginx")
LABELS = {"berth": "berth", "registry": "distribution proxy", "nginx": "nginx cache",
          "berth-h2c": "berth h2c", "berth-tls": "berth TLS (h2)",
          "berth-base": "berth (baseline)"}


class Row:
    """One line of the table: a figure per mirror, berth's ratio to the best
    peer, and the issue's target for it."""

    def __init__(self, key, title, unit, higher_better, target=None, berth_key="berth"):
        self.key, self.title, self.unit = key, title, unit
        self.higher_better = higher_better
        self.target = target
        self.berth_key = berth_key

    def evaluate(self, figures, profile):
        per = figures.get(self.key)
        if not per:
            return None
        values = {m: summary(v) for m, v in per.items()}
        berth = values.get(self.berth_key)
        peers = [values[p]["median"] for p in PEERS if p in values]
        best = (max if self.higher_better else min)(peers) if peers else None
        ratio = berth["median"] / best if berth and best else None
        target, met = self.target(values, profile) if self.target and berth else ("", None)
        return {"key": self.key, "title": self.title, "unit": self.unit,
                "better": "higher" if self.higher_better else "lower", "values": values,
                "berth_vs_best_peer": ratio, "target": target, "met": met}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def med(values, key):
    return values[key]["median"] if key in values else None


def at_most(limit_of, text):
    def check(values, profile):
        b, limit = med(values, "berth"), limit_of(values, profile)
        return text, (b is not None and limit is not None and b <= limit)
    return check


def ratio_target(min_vs_registry, min_vs_nginx, key="berth"):
    def check(values, _profile):
        b, r, n = med(values, key), med(values, "registry"), med(values, "nginx")
        ok = b is not None and (r is None or b >= min_vs_registry * r) and \
            (n is None or b >= min_vs_nginx * n)
        return f"≥ {min_vs_registry}× distribution, ≥ {min_vs_nginx}× nginx", ok
    return check


def blob_target(values, profile):
    text, ok = ratio_target(1.5, 1.0)(values, profile)
    within = med(values, "berth") >= 0.5 * profile["ceiling"]
    return text + ", ≥ 0.5× loopback ceiling", ok and within


def versus_nginx(factor, at_least):
    """berth ≥ (or ≤) factor × nginx."""
    def check(values, _profile):
        b, n = med(values, "berth"), med(values, "nginx")
        ok = b is not None and n is not None and (b >= factor * n if at_least else
                                                  b <= factor * n)
        return f"{'≥' if at_least else '≤'} {factor}× nginx", ok
    return check


def cold_cpu_target(values, profile):
    """Cold: berth hashes what nginx does not."""
    b, r, n = med(values, "berth"), med(values, "registry"), med(values, "nginx")
    ok = b is not None and n is not None and r is not None and b <= 1.2 * n and b <= 0.5 * r
    return "≤ 1.2× nginx, ≤ 0.5× distribution", ok


def client_cpu(key, title):
    return Row(key, title + ": the clients' CPU time", "s", False)


def rows():
    return [
        Row("cold1", "1. cold pull, 1 client", "s", False),
        # Where scenario 1's time goes: on a small host the mirror, the
        # upstream and the client share the cores, so CPU is wall time.
        Row("cold1_cpu", "1. cold pull, 1 client: the mirror's CPU time", "s", False),
        client_cpu("cold1_client_cpu", "1. cold pull, 1 client"),
        Row("cold_n", "2. cold pull, N clients: wall", "s", False,
            lambda v, p: ("≤ 0.5× distribution",
                          med(v, "registry") is not None and med(v, "berth") <= 0.5 * med(v, "registry"))),
        client_cpu("cold_n_client_cpu", "2. cold pull, N clients"),
        Row("cold_n_upstream", "2. cold pull, N clients: upstream bytes ÷ image size", "×", False,
            at_most(lambda v, p: 1.001, "= 1.00")),
        Row("cold_n_ok", "2. cold pull, N clients: share of clients with the right bytes", "", True,
            lambda v, p: ("every client", med(v, "berth") == 1.0)),
        Row("cold_n_slow", "2. throttled uplink, N clients: wall", "s", False),
        client_cpu("cold_n_client_cpu_slow", "2. throttled uplink, N clients"),
        Row("cold_n_upstream_slow", "2. throttled: upstream bytes ÷ image size", "×", False,
            at_most(lambda v, p: 1.001, "= 1.00")),
        Row("cold_n_ok_slow", "2. throttled: share of clients with the right bytes", "", True,
            lambda v, p: ("every client", med(v, "berth") == 1.0)),
        Row("slow_ttfb_first", "2. throttled: first client's time to first layer byte", "s", False),
        Row("slow_ttfb_last", "2. throttled: last client's time to first layer byte", "s", False),
        Row("slow_ttfb_bound", "2. throttled: last TTFB ÷ max(2× first TTFB, 50 ms)", "×", False,
            at_most(lambda v, p: 1.0, "≤ 1.0")),
        Row("slow_ttfb_vs_warm", "2. throttled: last TTFB ÷ the same clients' last TTFB from "
            "the warm cache", "×", False),
        Row("slow_done_vs_link", "2. throttled: last completion ÷ (image size ÷ link rate)", "×",
            False, at_most(lambda v, p: 1.1, "≤ 1.1")),
        Row("slow_link_rate", "2. throttled: the link's achieved rate ÷ its nominal rate", "×",
            True),
        Row("warm_blob_1", "3. warm blobs, 1 client", "GiB/s", True, blob_target),
        client_cpu("warm_blob_1_client_cpu", "3. warm blobs, 1 client"),
        Row("warm_blob_n", "3. warm blobs, N clients", "GiB/s", True, blob_target),
        client_cpu("warm_blob_n_client_cpu", "3. warm blobs, N clients"),
        Row("warm_blob_1_h2c", "3. warm blobs, 1 client, h2c", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("warm_blob_n_h2c", "3. warm blobs, N clients, h2c", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("cpu_gib_cold1", "CPU per GiB served: cold, 1 client (scenario 1)", "s/GiB", False,
            cold_cpu_target),
        Row("cpu_gib_cold_n", "CPU per GiB served: cold, N clients (scenario 2)", "s/GiB", False,
            cold_cpu_target),
        Row("cpu_gib_warm_1", "CPU per GiB served: warm, 1 client (scenario 3)", "s/GiB", False,
            versus_nginx(0.7, False)),
        Row("cpu_gib_warm_n", "CPU per GiB served: warm, N clients (scenario 3)", "s/GiB", False,
            versus_nginx(0.7, False)),
        Row("warm_blob_1_tls_h2", "6. TLS: warm blobs, 1 client, HTTP/2", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("warm_blob_n_tls_h2", "6. TLS: warm blobs, N clients, HTTP/2", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("warm_blob_1_tls_h1", "6. TLS: warm blobs, 1 client, HTTP/1.1", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("warm_blob_n_tls_h1", "6. TLS: warm blobs, N clients, HTTP/1.1", "GiB/s", True,
            versus_nginx(1.0, True)),
        Row("manifest_tag_rps", "4. warm manifests by tag, 64 connections", "req/s", True,
            ratio_target(3, 1.0)),
        Row("manifest_tag_p99", "4. warm manifests by tag: p99", "ms", False,
            at_most(lambda v, p: 5.0, "< 5 ms")),
        Row("manifest_tag_cpu", "4. warm manifests by tag: the mirror's CPU per 10k requests",
            "s", False),
        Row("manifest_tag_client_cpu", "4. warm manifests by tag: the client's CPU per 10k "
            "requests", "s", False),
        Row("manifest_tag_upstream_cpu", "4. warm manifests by tag: the upstream's CPU per "
            "10k requests", "s", False),
        Row("manifest_digest_rps", "4. warm manifests by digest, 64 connections", "req/s", True,
            ratio_target(3, 1.0)),
        Row("manifest_digest_p99", "4. warm manifests by digest: p99", "ms", False,
            at_most(lambda v, p: 5.0, "< 5 ms")),
        Row("manifest_digest_cpu", "4. warm manifests by digest: the mirror's CPU per 10k "
            "requests", "s", False),
        Row("manifest_digest_client_cpu", "4. warm manifests by digest: the client's CPU per "
            "10k requests", "s", False),
        Row("manifest_digest_upstream_cpu", "4. warm manifests by digest: the upstream's CPU per "
            "10k requests", "s", False),
        Row("status_page_plain_rps",
            "4. warm manifests by tag, beside the status page rows: without the page", "req/s",
            True),
        Row("status_page_polled_rps",
            "4. the same with the status page fetched every second", "req/s", True),
        Row("status_page_ratio",
            "4. with the status page ÷ without (median of 3 adjacent pairs)",
            "×", True, lambda v, p: ("≥ 0.98", med(v, "berth") >= 0.98)),
        Row("status_page_cpu_ratio",
            "4. berth's CPU time per request, with the status page ÷ without", "×", False),
        Row("upstream_cold_counted",
            "7. upstream requests per pulled image, cold pull: counted (manifest GETs)", "",
            False, at_most(lambda v, p: 1.0, "1 (one manifest)")),
        Row("upstream_cold_uncounted",
            "7. cold pull: uncounted (HEADs, blobs, other)", "", False),
        Row("upstream_warm_counted",
            "7. 100 warm pulls within tag_ttl: counted, per pull", "", False,
            at_most(lambda v, p: 0.0, "0")),
        Row("upstream_warm_uncounted",
            "7. 100 warm pulls within tag_ttl: uncounted, per pull", "", False),
        Row("rss_cold", "5. peak RSS during scenario 2", "MiB", False,
            lambda v, p: ("below distribution's",
                          med(v, "registry") is not None and med(v, "berth") < med(v, "registry"))),
        Row("rss_warm", "5. peak RSS during scenario 3", "MiB", False,
            lambda v, p: ("below distribution's",
                          med(v, "registry") is not None and med(v, "berth") < med(v, "registry"))),
    ]


ROWS = rows()


def cell(value, unit):
    if value is None:
        return "–"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit in ("MiB",):
        return f"{value:.0f}"
    if unit == "":
        return f"{value:.2f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def markdown(report):
    """The table: median (min–max) per mirror, berth's ratio to the best peer."""
    m = report["machine"]
    columns = ["berth", "berth-h2c", "berth-tls", "registry", "nginx"]
    if any("berth-base" in r["values"] for r in report["rows"]):
        columns.insert(1, "berth-base")
    lines = [
        f"berth benchmark ({report['profile']} run), {report['date']}, "
        f"{m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}, Linux {m['kernel']}",
        "",
        "Load average (1, 5, 15 min) before: " +
        " ".join(f"{x:.2f}" for x in report["load_average"]["before"]) + ", after: " +
        " ".join(f"{x:.2f}" for x in report["load_average"]["after"]),
        "",
        f"Large image {report['content']['large_image_bytes'] / MIB:.0f} MiB, "
        f"{report['content']['small_images']} small images, N = "
        f"{report['content']['clients']} clients, {report['content']['repetitions']} "
        f"repetition(s): median (min–max). Throttled uplink "
        f"{report['content']['throttle_bytes_per_s'] / MIB:.0f} MiB/s. Loopback ceiling "
        f"(curl from a sendfile(2) sender, largest layer): "
        f"{report['loopback_ceiling_gibps']:.2f} GiB/s.",
        "",
        "| scenario | unit | " + " | ".join(LABELS[c] for c in columns) +
        " | berth ÷ best peer | target | met |",
        "|---|---|" + "---|" * len(columns) + "---|---|---|",
    ]
    for row in report["rows"]:
        cells = []
        for c in columns:
            v = row["values"].get(c)
            if v is None:
                cells.append("")
            elif v["min"] == v["max"]:
                cells.append(cell(v["median"], row["unit"]))
            else:
                cells.append(f"{cell(v['median'], row['unit'])} "
                             f"({cell(v['min'], row['unit'])}–{cell(v['max'], row['unit'])})")
        ratio = row["berth_vs_best_peer"]
        arrow = "↑" if row["better"] == "higher" else "↓"
        ratio = f"{ratio:.2f} {arrow}" if ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['title']} | {row['unit']} | " + " | ".join(cells) +
                     f" | {ratio} | {row['target']} | {met} |")
    checks = report["checks"]
    lines += ["", f"Every answer from berth right: {'yes' if checks['digests_ok'] else 'NO'}"]
    for w in checks["wrong_answers"][:10]:
        lines.append(f"- wrong: {w}")
    peers = checks.get("peer_failures", [])
    if peers:
        lines.append(f"Failed answers from the peers: {len(peers)} (first: {peers[0]})")
    if checks["cut_off_by_deadline"]:
        lines.append(f"Clients cut off by the deadline: {len(checks['cut_off_by_deadline'])} "
                     f"(first: {checks['cut_off_by_deadline'][0]})")
    return "\n".join(lines)
