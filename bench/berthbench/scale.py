"""`bench/run --scale`: what a large cache costs berth, at 100k and 1M objects.

A synthetic upstream (`bench/scale/synth.go`: a Go program, fast enough that
it is never the bottleneck) holds generated images of three objects each
(manifest, config, one small layer). berth, the release binary as it is
served, is filled through its own registry API by the same program's
client, then measured the way an operator meets it:

- start-up after a clean stop: time until `/readyz` answers 200, and the
  CPU the process used by then; the same after a SIGKILL (the store serves
  at once and reconciles in the background, also timed);
- SIGTERM to exit;
- one eviction round (a restart with a budget just under what the store
  holds): its CPU, what it removed and the access-index entries it read
  (`berth_store_records_visited` and the round's log line);
- RSS after filling and at idle against `cache.hot_size` +
  `cache.meta_cache` + 128 MiB;
- `du -s` of the data directory against `storage.max_size` after eviction;
- warm manifest GETs by tag (wrk, 8 connections) on the large store against
  a store of 1k objects in the same run: p99 and requests/s, like with like
  (the same number of distinct tags on both, spread across the large store,
  each fetched once before measuring); and, beside it, the same GETs over
  up to 20k tags fetched for the first time since the fill;
- `berth du`: its time and peak RSS, with berth stopped and while it runs.

The store grows from one scale to the next (filled to 100k, measured, then
filled on to 1M), so a run fills once; before it grows, the images held so
far are pulled again, which brings back what the smaller scale's eviction
removed. Figures are reported, never asserted.
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from . import procs, tools

MIB = 1 << 20
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH_SOURCE = os.path.join(HERE, "scale", "synth.go")
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
# berth's defaults, which the profile keeps: the memory budget.
HOT_SIZE = 256 * MIB
META_CACHE = 64 * MIB
PER_REPO = 100
# The small store the p99 is compared with.
SMALL_OBJECTS = 1000

# The targets, at the largest scale.
TARGETS = {
    "clean_ready_s": 0.5, "killed_ready_s": 2.0, "sigterm_exit_s": 1.0,
    "p99_ratio": 1.5, "rss_slack_mib": 128,
}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def repo_of(i):
    return f"scale/r{i // PER_REPO:05d}"


def tag_path(i):
    return f"/v2/{repo_of(i)}/manifests/t{i}"


def build_synth(work):
    """Builds the synthetic upstream with Debian's Go (standard library only)."""
    out = os.path.join(work, "synth")
    env = dict(os.environ, GOCACHE=os.path.join(work, "gocache"), GOFLAGS="-mod=mod",
               GO111MODULE="off")
    subprocess.run(["go", "build", "-o", out, SYNTH_SOURCE], check=True, env=env,
                   stdin=subprocess.DEVNULL)
    return out


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def metric(base, name):
    """A metric's value from berth's /metrics, or None when it has none."""
    try:
        _, text = get(base + "/metrics")
    except OSError:
        return None
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def du_bytes(path):
    """What `du -s` counts (blocks in use), in bytes."""
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[0])


class Upstream:
    def __init__(self, work, synth, images):
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = os.path.join(work, "synth-upstream.out")
        self.proc = procs.Proc("synthetic upstream",
                               [synth, "-per-repo", str(PER_REPO), "upstream", "-listen",
                                f"127.0.0.1:{self.port}", "-images", str(images)],
                               log_path=os.path.join(work, "synth-upstream.log"),
                               stdout_path=out)
        procs.wait_http(self.proc, self.url + "/v2/", deadline_s=300)


class Berth:
    """One berth on a data directory that outlives its processes."""

    def __init__(self, work, binary, name, upstream_url):
        self.binary, self.name = binary, name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.data = os.path.join(self.dir, "data")
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_url = upstream_url
        self.proc = None
        self.max_size = "200GiB"
        self.starts = 0

    def config(self):
        path = os.path.join(self.dir, "berth.toml")
        with open(path, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\ndata_dir = "{self.data}"\n\n'
                    f'[[upstream]]\nname = "upstream.local"\nurl = "{self.upstream_url}"\n'
                    'default = true\ntag_ttl = "24h"\n\n'
                    f'[storage]\nmax_size = "{self.max_size}"\n\n'
                    f'[cache]\nhot_size = "{HOT_SIZE // MIB}MiB"\n'
                    f'meta_cache = "{META_CACHE // MIB}MiB"\n')
        return path

    def start(self):
        """Starts berth; returns (seconds until /readyz answers 200, CPU
        seconds the process used by then)."""
        self.starts += 1
        # One request line per fill would be a million lines: the access log
        # is left out, everything else kept.
        env = dict(os.environ, BERTH_LOG="info,berth::http::access=warn")
        t0 = time.monotonic()
        self.proc = procs.Proc(f"berth {self.name}", [self.binary, "--config", self.config(),
                                                      "serve"],
                               log_path=os.path.join(self.dir, "berth.log"), env=env)
        deadline = t0 + 600
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise procs.StartError(f"berth exited:\n{self.proc.log_tail()}")
            try:
                if get(self.url + "/readyz", timeout=2)[0] == 200:
                    return time.monotonic() - t0, self.proc.cpu_seconds()
            except OSError:
                pass
            time.sleep(0.005)
        raise procs.StartError(f"berth not ready in 600 s:\n{self.proc.log_tail()}")

    def sigterm(self):
        """SIGTERM; seconds until the process has exited."""
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.popen.wait(timeout=300)
        took = time.monotonic() - t0
        self.proc.stop()  # nothing left of the group, and off the live list
        self.proc = None
        return took

    def sigkill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=60)
        self.proc.stop()
        self.proc = None

    def stop(self):
        if self.proc:
            self.proc.stop(grace=300)
            self.proc = None

    def log_text(self):
        with open(os.path.join(self.dir, "berth.log"), errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, after, deadline_s=600):
        """Waits for a log line matching `pattern` past offset `after`;
        returns (match, seconds waited)."""
        t0 = time.monotonic()
        rx = re.compile(pattern)
        while time.monotonic() - t0 < deadline_s:
            m = rx.search(self.log_text()[after:])
            if m:
                return m, time.monotonic() - t0
            if self.proc and not self.proc.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"no log line /{pattern}/ within {deadline_s} s:\n"
                           f"{self.log_text()[-2000:]}")

    def rss_mib(self):
        return self.proc.rss_kib() / 1024


class Scale:
    """The run: one upstream, one growing store, one small store."""

    def __init__(self, work, berth_binary, scales, seconds=10, conns=32):
        self.work, self.binary, self.scales = work, berth_binary, sorted(scales)
        self.seconds, self.conns = seconds, conns
        self.results = []
        self.small_p99 = []

    def run(self):
        synth = build_synth(self.work)
        self.synth = synth
        images = -(-max(self.scales) // 3)
        log(f"synthetic upstream: {images} images ({3 * images} objects), indexing")
        up = Upstream(self.work, synth, images)
        small = Berth(self.work, self.binary, "small", up.url)
        big = Berth(self.work, self.binary, "large", up.url)
        try:
            small.start()
            self.fill(small, 0, -(-SMALL_OBJECTS // 3))
            big.start()
            filled = 0
            for objects in self.scales:
                n = -(-objects // 3)
                if filled:
                    log("pulling the images held so far again: what eviction removed "
                        "comes back")
                    self.fill(big, 0, filled)
                log(f"filling berth to {3 * n} objects ({n} images)")
                fill = self.fill(big, filled, n)
                filled = n
                self.results.append(self.measure(big, small, n, fill))
        finally:
            small.stop()
            big.stop()
            up.proc.stop()
        return self.results

    def fill(self, berth, start, end):
        out = subprocess.run([self.synth, "-per-repo", str(PER_REPO), "fill", "-mirror", berth.url,
                              "-from", str(start), "-to", str(end), "-conns", str(self.conns)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["failures"]:
            raise RuntimeError(f"filling failed: {result}")
        result["objects_per_s"] = 3 * result["images"] / result["seconds"]
        return result

    def p99(self, berth, images, d, tags=None):
        """wrk on 8 connections over `tags` distinct tags spread evenly
        across the store (up to 20k by default), each first fetched once,
        so that every measured request is a warm one."""
        tags = min(tags or 20000, images)
        step = images / tags
        paths = [tag_path(int(k * step)) for k in range(tags)]
        self.warm_up(berth, paths)
        r = tools.wrk(berth.url, paths, ACCEPT, d, connections=8, threads=2,
                      seconds=self.seconds)
        if "error" in r or r["errors"]:
            raise RuntimeError(f"wrk against {berth.name}: {r}")
        r["tags"] = tags
        return r

    def warm_up(self, berth, paths):
        """Each path fetched once (and what berth learns in the background
        about it, its referrers, given time to land), so that the probe
        measures warm requests rather than first touches."""
        for path in paths:
            req = urllib.request.Request(berth.url + path, headers={"Accept": ACCEPT})
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        time.sleep(2)

    def first_touch(self, berth, images, d):
        """wrk over up to 20k tags spread across the store that the probe
        has not fetched before (a fill's own fetch aside): most requests are
        a tag's first since the fill, so this is a colder figure than the
        warm p99 and is reported beside it, not against the small store."""
        step = max(1, images // 20000)
        paths = [tag_path(i) for i in range(step // 2, images, step)]
        r = tools.wrk(berth.url, paths, ACCEPT, d, connections=8, threads=2,
                      seconds=self.seconds)
        if "error" in r or r["errors"]:
            raise RuntimeError(f"wrk against {berth.name}: {r}")
        r["tags"] = len(paths)
        return r

    def measure(self, big, small, images, fill):
        objects = 3 * images
        self.objects_now = objects
        r = {"objects": objects, "images": images, "fill": fill}
        log(f"{objects} objects: RSS, p99, stop, restarts, eviction, du")
        r["rss_after_fill_mib"] = big.rss_mib()
        d = tempfile.mkdtemp(dir=self.work)
        # Like with like: the same number of distinct tags on both stores
        # (all of the small store's, spread across the large one), each
        # fetched once before measuring. Alternating, so that the machine's
        # noise falls on both alike.
        small_images = -(-SMALL_OBJECTS // 3)
        runs = {"large": [], "small": []}
        for _ in range(2):
            runs["large"].append(self.p99(big, images, d, tags=small_images))
            runs["small"].append(self.p99(small, small_images, d, tags=small_images))
        for key, rs in runs.items():
            r[f"p99_ms_{key}"] = statistics.median(x["p99_ms"] for x in rs)
            r[f"rps_{key}"] = statistics.median(x["rps"] for x in rs)
        r["p99_tags"] = small_images
        r["p99_ratio"] = r["p99_ms_large"] / r["p99_ms_small"]
        # Then tags across the whole store, each for the first time since
        # the fill: what a store that is not warm costs.
        ft = self.first_touch(big, images, d)
        r["first_touch"] = {k: ft[k] for k in ("p99_ms", "p50_ms", "rps", "tags")}
        # Idle: past one maintenance round (30 s) with no requests.
        time.sleep(35)
        r["rss_idle_mib"] = big.rss_mib()
        r["du_running"] = self.berth_du(big)
        r["counted_bytes"] = metric(big.url, "berth_disk_used_bytes")
        r["sigterm_exit_s"] = big.sigterm()
        r["du_stopped"] = self.berth_du(big)
        r["data_dir_bytes"] = du_bytes(big.data)
        mark = len(big.log_text())
        r["clean_ready_s"], r["clean_ready_cpu_s"] = big.start()
        r["clean_records_visited"] = metric(big.url, "berth_store_records_visited")
        r["clean_serves"] = self.serves(big, images)
        big.sigkill()
        mark = len(big.log_text())
        r["killed_ready_s"], r["killed_ready_cpu_s"] = big.start()
        r["killed_serves"] = self.serves(big, images)
        _, r["reconcile_s"] = big.wait_log(r"store reconciled", mark)
        r["rss_reconciled_mib"] = big.rss_mib()
        r["eviction"] = self.evict(big)
        big.start()
        return r

    def serves(self, berth, images):
        """Seconds a cached manifest (the last image's) takes to come back
        right after ready: the store serves at once."""
        t0 = time.monotonic()
        req = urllib.request.Request(berth.url + tag_path(images - 1), headers={"Accept": ACCEPT})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            ok = resp.status == 200
        return {"ok": ok, "seconds": time.monotonic() - t0}

    def evict(self, berth):
        """Restarts `berth` with a budget that puts what it holds above the
        high watermark (at 0.95 of max_size; the high one is 0.9), so that
        one round brings it to the low one (0.8); waits for that round."""
        used = metric(berth.url, "berth_disk_used_bytes")
        berth.sigterm()
        held = du_bytes(berth.data)
        # Halfway between the watermarks, by berth's own count (what
        # eviction acts on); du's is reported beside it.
        max_size = int((used or held) / 0.95)
        berth.max_size = str(max_size)
        mark = len(berth.log_text())
        berth.start()
        cpu0 = berth.proc.cpu_seconds()
        visited0 = metric(berth.url, "berth_store_records_visited")
        # The first maintenance round (30 s after start) finds the store
        # above its high watermark. If the store was last stopped before a
        # background reconcile ended (no clean mark), eviction waits for the
        # reconcile, which reads every record at storage.reconcile_rate: the
        # wait grows with the store.
        deadline = 120 + self.objects_now // 5000
        m, waited = berth.wait_log(r"evicted least recently used content.*", mark, deadline)
        cpu = berth.proc.cpu_seconds() - cpu0
        visited1 = metric(berth.url, "berth_store_records_visited")
        line = m.group(0)
        fields = {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", line)}
        out = {"held_bytes": held, "counted_bytes": used, "max_size": max_size, "cpu_s": cpu,
               "removed": fields.get("blobs", 0) + fields.get("manifests", 0),
               "freed_bytes": fields.get("bytes"), "visited_logged": fields.get("visited"),
               "records_visited": (visited1 - visited0) if visited0 is not None and visited1
               is not None else None, "log": line[:400]}
        berth.sigterm()
        out["data_dir_after"] = du_bytes(berth.data)
        berth.max_size = "200GiB"
        return out

    def berth_du(self, berth):
        """`berth du`: wall seconds and peak RSS (from wait4)."""
        t0 = time.monotonic()
        p = subprocess.Popen([self.binary, "--config", berth.config(), "du"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = p.stdout.read()
        p.stdout.close()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        return {"seconds": time.monotonic() - t0, "rss_mib": usage.ru_maxrss / 1024,
                "exit": p.returncode, "output": out.decode(errors="replace")[:300]}


def markdown(report):
    m = report["machine"]
    lines = [f"berth --scale profile, {report['date']}, {m['cores']} cores, "
             f"{m['memory_gib']} GiB, {m['cpu']}, Linux {m['kernel']}; load average "
             f"{report['load_before']} before, {report['load_after']} after", ""]
    rows = [
        ("fill through berth's API (answers 503 at max_fills, retried)", lambda r:
         f"{r['fill']['objects_per_s']:,.0f} objects/s ({r['fill'].get('retried_503', 0):,})",
         ""),
        ("start-up after a clean stop: ready", lambda r: f"{r['clean_ready_s']:.2f} s",
         "< 0.5 s"),
        ("start-up after a clean stop: CPU", lambda r: f"{r['clean_ready_cpu_s']:.2f} s", ""),
        ("clean start: records visited", lambda r: fmt(r["clean_records_visited"]), "O(1)"),
        ("start-up after SIGKILL: ready", lambda r: f"{r['killed_ready_s']:.2f} s", "< 2 s"),
        ("after SIGKILL: a cached manifest served", lambda r:
         f"{r['killed_serves']['seconds'] * 1000:.0f} ms" + ("" if r["killed_serves"]["ok"]
                                                            else " (failed)"), "at once"),
        ("after SIGKILL: background reconcile", lambda r: f"{r['reconcile_s']:.1f} s", ""),
        ("SIGTERM to exit", lambda r: f"{r['sigterm_exit_s']:.2f} s", "< 1 s"),
        ("one eviction round: CPU", lambda r: f"{r['eviction']['cpu_s']:.2f} s", "O(evicted)"),
        ("one eviction round: objects removed (k) / index entries read (its log line) / "
         "berth_store_records_visited", lambda r:
         f"{r['eviction']['removed']:,} / {fmt(r['eviction']['visited_logged'])} / "
         f"{fmt(r['eviction']['records_visited'])}", "≈ k"),
        ("RSS after filling", lambda r: f"{r['rss_after_fill_mib']:.0f} MiB",
         f"≤ {(HOT_SIZE + META_CACHE) // MIB + 128} MiB"),
        ("RSS at idle", lambda r: f"{r['rss_idle_mib']:.0f} MiB",
         f"≤ {(HOT_SIZE + META_CACHE) // MIB + 128} MiB"),
        ("data directory: du -s / berth's count (berth_disk_used_bytes), before eviction",
         lambda r: f"{r['data_dir_bytes'] / MIB:.0f} / {r['counted_bytes'] / MIB:.0f} MiB",
         "equal"),
        ("data directory (du -s) vs max_size after eviction", lambda r:
         f"{r['eviction']['data_dir_after'] / MIB:.0f} vs {r['eviction']['max_size'] / MIB:.0f} MiB",
         "≤ max_size"),
        ("warm manifest GET by tag p99, 8 connections, the same number of distinct tags "
         "on both stores, each fetched once before", lambda r:
         f"{r['p99_ms_large']:.2f} ms (1k: {r['p99_ms_small']:.2f}) = {r['p99_ratio']:.2f}×",
         "≤ 1.5× the 1k store"),
        ("warm manifest GET by tag, req/s", lambda r:
         f"{r['rps_large']:,.0f} (1k: {r['rps_small']:,.0f})", ""),
        ("manifest GET by tag, first fetch since the fill of up to 20k tags: p99 / req/s",
         lambda r: f"{r['first_touch']['p99_ms']:.2f} ms / {r['first_touch']['rps']:,.0f} "
         f"({r['first_touch']['tags']:,} tags)", ""),
        ("berth du, berth stopped", lambda r:
         f"{r['du_stopped']['seconds']:.2f} s, {r['du_stopped']['rss_mib']:.0f} MiB", ""),
        ("berth du, berth running", lambda r:
         f"{r['du_running']['seconds']:.2f} s, {r['du_running']['rss_mib']:.0f} MiB", ""),
    ]
    results = report["results"]
    lines.append("| figure | " + " | ".join(f"{r['objects']:,} objects" for r in results) +
                 " | target |")
    lines.append("|---|" + "---|" * len(results) + "---|")
    for title, f, target in rows:
        cells = []
        for r in results:
            try:
                cells.append(f(r))
            except (KeyError, TypeError):
                cells.append("–")
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {target} |")
    return "\n".join(lines)


def fmt(v):
    return "–" if v is None else f"{v:,.0f}"
