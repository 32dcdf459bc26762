"""`bench/run --shared`: berth's shared tier (issue 15) against today's
single berth, on loopback, in one run.

The parts: a single-node Garage (`garage.py`), a docker-registry upstream
seeded like the other scenarios (one large image, small one-layer images),
and three kinds of berth from the same binary:

- (a) one berth without a shared tier, as today, started afresh in each
  repetition;
- replica A, with `[storage.s3]`, filled from the upstream, which uploads
  everything to the bucket in the background; the run waits until
  `berth du --shared` lists it all, then stops A;
- replica B, with the same `[storage.s3]` and its own empty data directory,
  started afresh for each (b) measurement: (b) is B with its near cache
  empty, every first read coming from the object store; (c) is the same B
  once its near cache holds what it served.

Per repetition:
- (a) afresh: the large image's blobs filled from the upstream by one client
  (for comparison with (b)), then the small images' manifests;
- a fresh B whose client fetches the large image's manifest by digest (as a
  pull does before its blobs), then its blobs with one client (b), and each
  small image's manifest by digest once (b, first reads only);
- (a) and (c) in adjacent pairs, their order alternating between
  repetitions: warm blobs (1 and N clients, curl), then warm manifests by
  digest (wrk, 64 connections, as scenario 4 of the main run); (c) ÷ (a) is
  the median of the pairs' ratios;
- another fresh B: the blobs with N clients at once (b), then wrk on
  manifests from an empty near cache (b, as scenario 4 would see it: a first
  read of each, then the near cache);
- another fresh B asked for the blobs alone, never for their manifest (b),
  as a replica behind a load balancer is when another one answered the
  manifest.

After each (b), every blob is fetched once more and checked against its
digest. The store's own single-stream ceiling (curl straight from Garage)
is measured once, as the loopback ceiling is.

Object-store requests are counted from Garage's log (each S3 request is a
line on arrival), in windows around each measurement, and beside them from
B's own `berth_objectstore_requests_total`. Figures are reported, never
asserted.
"""
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from . import garage as garage_mod
from .shared_table import LABELS, ROWS
from . import mirrors, pull, tools
from . import upstream as up

MIB = 1 << 20
GIB = 1 << 30
ACCEPT = "application/vnd.oci.image.manifest.v1+json"

# Modest on purpose: the whole profile takes a few minutes on two cores.
PROFILE = {"layers": [128 * MIB] + [8 * MIB] * 8, "small_images": 200, "clients": 16,
           "reps": 3, "load_seconds": 3, "first_read_connections": 16, "warm_passes": 4}

def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Berth(mirrors.Berth):
    """A berth with a data directory of its own per start; `s3` is its
    `[storage.s3]` text (empty: no shared tier)."""

    def __init__(self, root, binary, key, label, s3=""):
        super().__init__(root, binary)
        self.key, self.label, self.s3 = key, label, s3

    def config_text(self, upstream_url):
        return super().config_text(upstream_url) + self.s3

    def config_path(self):
        return self._path("berth.toml")


def store_requests(url):
    """berth's `berth_objectstore_requests_total`, by "op outcome"."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("berth_objectstore_requests_total{"):
            labels, value = line[len("berth_objectstore_requests_total{"):].rsplit("} ", 1)
            fields = dict(part.split("=", 1) for part in labels.split(","))
            key = f"{fields['op'].strip(chr(34))} {fields['outcome'].strip(chr(34))}"
            out[key] = out.get(key, 0) + float(value)
    return out


def kind_of(request, prefix="berth"):
    """`GET blobs`, `HEAD links`, …: what a request was for."""
    key = request.key or ""
    if key.startswith(prefix + "/"):
        key = key[len(prefix) + 1:]
    return f"{request.method} {key.split('/', 1)[0] or '(bucket)'}"


class Shared:
    """The run: the parts above, the repetitions, and every figure."""

    def __init__(self, work, berth_binary, profile):
        self.work, self.binary, self.p = work, berth_binary, profile
        self.figures = {}   # row -> column -> [per-repetition values]
        self.windows = []   # every counted window, for the JSON
        self.wrong = []     # berth's answers with wrong bytes or errors
        self.root = os.path.join(work, "berths")
        os.makedirs(self.root)

    def note(self, row, column, value):
        self.figures.setdefault(row, {}).setdefault(column, []).append(value)

    # --- set-up -----------------------------------------------------------------

    def run(self):
        self.seed()
        self.ceiling = tools.loopback_ceiling(self.ceiling_file)
        log("starting Garage (one node)")
        self.garage = garage_mod.Garage(self.work).start()
        s3 = self.garage.s3_config()
        self.plain = Berth(self.root, self.binary, "plain", "berth (no shared tier)")
        self.b = Berth(self.root, self.binary, "replica-b", "replica B", s3)
        self.fill_bucket(Berth(self.root, self.binary, "replica-a", "replica A", s3))
        largest = self.large.layers[0][0].split(":", 1)[1]
        self.store_ceiling = self.garage.get_ceiling(f"berth/blobs/sha256/{largest}")
        for rep in range(self.p["reps"]):
            log(f"repetition {rep + 1} of {self.p['reps']}")
            self.today_and_replica(rep)
            self.replica_n_clients()
            self.replica_without_manifest()

    def seed(self):
        d = os.path.join(self.work, "upstream")
        os.makedirs(d)
        self.upstream = up.Upstream(d)
        self.upstream.start()
        layers = self.p["layers"]
        log(f"seeding the upstream: {sum(layers) // MIB} MiB image ({len(layers)} layers), "
            f"{self.p['small_images']} small images")
        self.layers = os.path.join(self.work, "layers")
        os.makedirs(self.layers)
        self.large, paths = up.push_large_image(self.upstream.port, self.layers, layers)
        self.ceiling_file = paths[self.large.layers[0][0]]
        self.small = up.push_small_images(self.upstream.port, self.p["small_images"])

    def fill(self, berth):
        """The large image pulled (every blob hashed) and every small
        image's manifest by tag and by digest: what (a) and replica A hold."""
        r = pull.pull_once(berth.url, self.large.repo, self.large.tag, self.large.digest,
                           deadline_s=300)
        if not r["ok"]:
            raise RuntimeError(f"{berth.label}: the filling pull failed: {r['error']}")
        puller = pull.Puller(berth.url, time.monotonic() + 300)
        for img in self.small:
            for ref in (img.tag, img.digest):
                puller.fetch(f"/v2/{img.repo}/manifests/{ref}", img.digest, None,
                             headers={"Accept": ACCEPT})

    def fill_bucket(self, a):
        """Replica A fills from the upstream and uploads in the background;
        done when `berth du --shared` lists every blob, manifest and
        repository link."""
        log("replica A: filling from the upstream; waiting for its uploads")
        a.start(self.upstream.url)
        t0 = time.monotonic()
        try:
            self.fill(a)
            want = {"blobs": len(self.large.blobs), "manifests": 1 + len(self.small),
                    "links": len(self.large.blobs) + 1 + len(self.small)}
            usage = {}
            while time.monotonic() - t0 < 300:
                out = subprocess.run([self.binary, "--config", a.config_path(), "du",
                                      "--shared", "--json"], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL, timeout=60)
                if out.returncode == 0:
                    usage = json.loads(out.stdout)
                    if all(usage.get(k, 0) >= n for k, n in want.items()):
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"replica A's uploads never completed: {usage}, "
                                   f"wanted {want}\n{a.proc.log_tail()}")
            self.bucket = dict(usage, seconds=round(time.monotonic() - t0, 1))
            log(f"the bucket holds {usage['blobs']} blobs, {usage['manifests']} manifests, "
                f"{usage['links']} links")
        finally:
            a.stop()

    # --- measurements -------------------------------------------------------------

    def blob_urls(self, berth):
        return [f"{berth.url}/v2/{self.large.repo}/blobs/{d}" for d, _ in self.large.blobs]

    def blobs(self, berth, column, clients, row=None):
        """Every blob of the large image by `clients` curl processes at once
        (each on one connection): GiB/s, and berth's and Garage's CPU per
        GiB served. One warm client fetches them `warm_passes` times, so
        that its time is not a few ticks of the clock; a miss is one pass."""
        row = row or ("blob_1" if clients == 1 else "blob_n")
        passes = self.p["warm_passes"] if clients == 1 and column in ("a", "c") and \
            row == "blob_1" else 1
        cpu, garage_cpu = berth.proc.cpu_seconds(), self.garage.proc.cpu_seconds()
        r = tools.curl_throughput([self.blob_urls(berth) * passes] * clients)
        cpu = berth.proc.cpu_seconds() - cpu
        garage_cpu = self.garage.proc.cpu_seconds() - garage_cpu
        expected = passes * clients * sum(size for _, size in self.large.blobs)
        if r["failures"] or r["bytes"] != expected:
            self.wrong.append(f"{LABELS[column]}, {clients} client(s): {r['bytes']} of "
                              f"{expected} bytes {r['failures'][:2]}")
            return None
        gib = r["bytes"] / GIB
        self.note(row, column, r["gibps"])
        self.note(row + "_cpu", column, cpu / gib)
        if column == "b" and row in ("blob_1", "blob_n"):
            # Per GiB the store sent: the image once, however many clients.
            self.note(row + "_garage_cpu", column, garage_cpu / (gib / clients))
        return r["gibps"]

    def verify_blobs(self, berth, what):
        """Every blob once more, its SHA-256 checked (from the near cache)."""
        puller = pull.Puller(berth.url, time.monotonic() + 300)
        try:
            for digest, size in self.large.blobs:
                puller.fetch(f"/v2/{self.large.repo}/blobs/{digest}", digest, size)
        except (pull.Failed, OSError) as e:
            self.wrong.append(f"{what}: {e}")

    def large_manifest(self, berth):
        """The large image's manifest by digest: what a pull asks for before
        its blobs (it vouches for them, so they need no link lookup)."""
        try:
            pull.Puller(berth.url, time.monotonic() + 60).fetch(
                f"/v2/{self.large.repo}/manifests/{self.large.digest}", self.large.digest,
                None, headers={"Accept": ACCEPT})
        except (pull.Failed, OSError) as e:
            self.wrong.append(f"{berth.label}, the large image's manifest: {e}")

    def manifest_load(self, berth, column):
        """Scenario 4's wrk: manifests by digest, 64 connections."""
        paths = [f"/v2/{i.repo}/manifests/{i.digest}" for i in self.small]
        d = tempfile.mkdtemp(dir=self.work)
        r = tools.wrk(berth.url, paths, ACCEPT, d, seconds=self.p["load_seconds"])
        if "error" in r or r["errors"]:
            self.wrong.append(f"{LABELS[column]}, manifests by digest: "
                              f"{r.get('error') or r['error_detail']}")
            return None
        self.note("manifest_rps", column, r["rps"])
        self.note("manifest_p99", column, r["p99_ms"])
        return r

    def first_reads(self, berth):
        """Each small image's manifest by digest exactly once, over
        `first_read_connections` keep-alive connections (every digest
        checked): requests/s when every request is a near-cache miss."""
        n = self.p["first_read_connections"]
        deadline = time.monotonic() + 120

        def fetch_slice(i):
            puller = pull.Puller(berth.url, deadline)
            for img in self.small[i::n]:
                puller.fetch(f"/v2/{img.repo}/manifests/{img.digest}", img.digest, None,
                             headers={"Accept": ACCEPT})

        t0 = time.monotonic()
        try:
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                list(pool.map(fetch_slice, range(n)))
        except (pull.Failed, OSError) as e:
            self.wrong.append(f"replica B, first reads of manifests: {e}")
            return
        self.note("manifest_first_rps", "b", len(self.small) / (time.monotonic() - t0))

    def counted(self, berth, name, per, row=None, column=None):
        """A window of object-store requests; `per` is what they are
        divided by (blobs pulled, manifests read)."""
        return Counted(self, berth, name, per, row, column)

    def today_and_replica(self, rep):
        """(a) afresh, filled from the upstream by one client; a fresh B,
        (b) with one client and first reads of manifests; then (a) and (c)
        warm, in pairs, one right after the other (their order alternating
        between repetitions), so that the machine's noise falls on both."""
        a, b, blobs = self.plain, self.b, len(self.large.blobs)
        a.start(self.upstream.url)
        b.start(self.upstream.url)
        try:
            self.large_manifest(a)
            self.blobs(a, "a", 1, row="cold_1")
            self.verify_blobs(a, "berth without a shared tier, after its fill")
            self.fill(a)
            with self.counted(b, "(b) the large image's manifest by digest", 1,
                              "store_per_manifest_large", "b"):
                self.large_manifest(b)
            with self.counted(b, "(b) blobs, 1 client", blobs, "store_per_blob_1", "b"):
                self.blobs(b, "b", 1)
            self.verify_blobs(b, "replica B after (b), 1 client")
            with self.counted(b, "(b) manifests by digest, first reads", len(self.small),
                              "store_per_manifest", "b"):
                self.first_reads(b)
            self.warm_pairs(b, rep)
        finally:
            a.stop()
            b.stop()

    def warm_pairs(self, b, rep):
        """(a) and (c) in turn: blobs by 1 and N clients, manifests by wrk;
        B's object-store requests counted while it serves. The (c) ÷ (a)
        column is the median of the pairs' ratios."""
        order = [(self.plain, "a"), (b, "c")]
        if rep % 2:
            order.reverse()
        blobs, n = len(self.large.blobs), self.p["clients"]
        for clients, row in ((1, "blob_1"), (n, "blob_n")):
            got = {}
            for berth, column in order:
                if column == "a":
                    got[column] = self.blobs(berth, column, clients)
                    continue
                passes = self.p["warm_passes"] if clients == 1 else 1
                with self.counted(b, f"(c) blobs, {clients} client(s)",
                                  blobs * passes * clients, "store_per_blob_c", "c"):
                    got[column] = self.blobs(berth, column, clients)
            if got.get("a") and got.get("c"):
                self.note(row + "_ratio", "c", got["c"] / got["a"])
        got = {}
        for berth, column in order:
            if column == "a":
                r = self.manifest_load(berth, column)
            else:
                with self.counted(b, "(c) manifests by digest, wrk", None) as window:
                    r = self.manifest_load(berth, column)
                if r:
                    self.note("store_per_manifest", "c",
                              window.result["garage"] / r["requests"])
            got[column] = r["rps"] if r else None
        if got.get("a") and got.get("c"):
            self.note("manifest_rps_ratio", "c", got["c"] / got["a"])

    def replica_n_clients(self):
        """Another fresh B: (b) N clients at once, and (b) as scenario 4's
        wrk sees an empty near cache."""
        b, blobs = self.b, len(self.large.blobs)
        b.start(self.upstream.url)
        try:
            self.large_manifest(b)
            with self.counted(b, "(b) blobs, N clients at once", blobs, "store_per_blob_n", "b"):
                self.blobs(b, "b", self.p["clients"])
            self.verify_blobs(b, "replica B after (b), N clients")
            with self.counted(b, "(b) manifests by digest, wrk from an empty near cache",
                              None) as window:
                r = self.manifest_load(b, "b")
            if r:
                self.note("store_per_manifest_wrk", "b", window.result["garage"] / r["requests"])
        finally:
            b.stop()

    def replica_without_manifest(self):
        """A fresh B asked for the blobs alone, as a replica behind a load
        balancer is when another replica answered the manifest: the
        repository must be confirmed per blob (a link marker)."""
        b, blobs = self.b, len(self.large.blobs)
        b.start(self.upstream.url)
        try:
            with self.counted(b, "(b) blobs, 1 client, manifest never asked of this replica",
                              blobs, "store_per_blob_lb", "b"):
                self.blobs(b, "b", 1, row="blob_1_lb")
            self.verify_blobs(b, "replica B after blobs without their manifest")
        finally:
            b.stop()

    # --- the report -------------------------------------------------------------

    def report(self):
        rows = [row.evaluate(self.figures) for row in ROWS]
        agree = all(w["garage"] == w["berth"] for w in self.windows)
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "profile": "shared",
            "content": {"large_image_bytes": self.large.size, "large_layers": self.p["layers"],
                        "blobs": len(self.large.blobs), "small_images": len(self.small),
                        "clients": self.p["clients"], "repetitions": self.p["reps"],
                        "load_seconds": self.p["load_seconds"]},
            "garage": {"version": garage_version(), "bucket_after_fill": self.bucket},
            "loopback_ceiling_gibps": self.ceiling,
            "store_ceiling": {"gibps": self.store_ceiling[0],
                              "garage_cpu_s_per_gib": self.store_ceiling[1]},
            "rows": [r for r in rows if r],
            "windows": self.windows,
            "checks": {"digests_ok": not self.wrong, "wrong_answers": self.wrong,
                       "berth_count_agrees_with_garage": agree},
        }


class Counted:
    """`with run.counted(...)`: the object-store requests made while the
    block runs, by Garage's log (settled: berth's background requests
    included) and by berth's own count; kept for the JSON, and noted as
    `row` (requests ÷ `per`) if given."""

    def __init__(self, run, berth, name, per, row, column):
        self.run, self.berth, self.name = run, berth, name
        self.per, self.row, self.column = per, row, column
        self.result = None

    def __enter__(self):
        self.mark = self.run.garage.mark()
        self.before = store_requests(self.berth.url)
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        requests = self.run.garage.settled_requests_since(self.mark)
        after = store_requests(self.berth.url)
        kinds = {}
        for r in requests:
            kinds[kind_of(r)] = kinds.get(kind_of(r), 0) + 1
        self.result = {"name": self.name, "per": self.per, "garage": len(requests),
                       "berth": sum(after.values()) - sum(self.before.values()),
                       "kinds": kinds}
        self.run.windows.append(self.result)
        if self.row:
            self.run.note(self.row, self.column, self.result["garage"] / self.per)
        return False


def garage_version():
    try:
        out = subprocess.run(["garage", "--version"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL)
        # "garage cargo:2.5.0 [features: …]"
        found = re.search(r"(\d+\.\d+\.\d+)", out.stdout)
        return f"Garage {found.group(1)}" if found else out.stdout.strip()
    except OSError:
        return None
