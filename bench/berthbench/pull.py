"""A verifying pull client: `python3 -m berthbench.pull`, also importable.

It does what a container runtime does on a pull, minus unpacking: GET the
manifest by tag (checking it is the expected digest), then GET every blob it
names, in order (config, then layers), checking each blob's size and bytes.
Each client is its own process so that 32 of them run in parallel instead
of sharing one GIL; `run_clients` starts them, waits until all are ready,
then releases them at once (a line on stdin), so spawn time is not measured.

The benchmark measures the mirror, not its clients: on two cores, 32 clients
hashing every byte used two thirds of the machine, so one client in eight
(`verify="full"`) checks every blob's SHA-256, and the others
(`verify="sampled"`) check each layer's length and a 256-byte window of every
MiB against the pushed file (manifests and small blobs are always hashed).
A wrong byte is still found, by the hashing clients and by berth's own
verification (the tests check correctness); the CPU the clients used is
reported beside every wall time.

Times are seconds from that release: `ttfb` to the first byte of the first
layer's body, `done` to the last byte of the last blob. A client past
`--deadline` seconds stops and reports `timed_out` (a benchmark cut-off, not
a wrong answer).
"""
import argparse
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse

BUF = 1 << 20
# A sampled client compares this many bytes of each chunk it reads.
SAMPLE = 256
ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


class Failed(Exception):
    """Wrong bytes or an error answer: the pull did not give the image."""


class TimedOut(Exception):
    """The benchmark's deadline passed first."""


class Puller:
    def __init__(self, base, deadline, cafile=None, verify="full", layers=None):
        """`verify` is "full" (SHA-256 of every body) or "sampled" (length and
        windows compared with the pushed file in `layers`, a directory of
        files named by digest hex; a blob without a file there is hashed)."""
        url = urllib.parse.urlsplit(base)
        self.verify, self.layers = verify, layers
        self.host, self.port = url.hostname, url.port
        self.tls = ssl.create_default_context(cafile=cafile) if url.scheme == "https" else None
        self.deadline = deadline
        self.conn = None
        self.t0 = time.monotonic()
        self.ttfb = None

    def _connection(self):
        """The keep-alive connection, its socket timeout cut to the time left
        before the deadline (a client waiting on a cache lock gets no bytes)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimedOut("the next request")
        timeout = min(120.0, left + 0.5)
        if self.conn is None and self.tls:
            self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                    context=self.tls)
        elif self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        elif self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)
        return self.conn

    def get(self, path, headers=None):
        """GET `path` on the keep-alive connection (one retry on a stale one,
        redirects followed); returns the open response."""
        for attempt in (0, 1):
            try:
                conn = self._connection()
                conn.request("GET", path, headers=headers or {})
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                self.conn = None
                if attempt:
                    raise
        if resp.status in (301, 302, 303, 307, 308):
            resp.read()
            return self._follow(resp.getheader("Location"), headers)
        return resp

    def _follow(self, location, headers):
        url = urllib.parse.urlsplit(location)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request("GET", url.path + ("?" + url.query if url.query else ""), headers=headers or {})
        return conn.getresponse()

    def _pushed(self, digest, size):
        """The pushed file of a blob a sampled client checks, or None."""
        if self.verify != "sampled" or not self.layers or size is None or size <= BUF:
            return None
        try:
            return open(os.path.join(self.layers, digest.split(":", 1)[1]), "rb")
        except OSError:
            return None

    def fetch(self, path, digest, size, headers=None, first_layer=False):
        """Stream one object, checking status, size and its bytes (sha256, or
        sampled windows against the pushed file); returns its bytes when it
        is small (manifests), else None."""
        resp = self.get(path, headers)
        if resp.status != 200:
            body = resp.read()[:200]
            raise Failed(f"GET {path}: HTTP {resp.status} {body!r}")
        pushed = self._pushed(digest, size)
        try:
            got, keep, h = self._read_body(path, resp, size, pushed, first_layer)
        finally:
            if pushed:
                pushed.close()
        if size is not None and got != size:
            raise Failed(f"GET {path}: {got} bytes, expected {size}")
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise Failed(f"GET {path}: sha256 {h.hexdigest()[:16]}... does not match")
        return bytes(keep) if keep is not None else None

    def _read_body(self, path, resp, size, pushed, first_layer):
        h = None if pushed else hashlib.sha256()
        got, buf = 0, bytearray(BUF)
        view = memoryview(buf)
        keep = bytearray() if size is None or size <= BUF else None
        while True:
            if time.monotonic() > self.deadline:
                self.conn = None
                raise TimedOut(path)
            n = resp.readinto(view)
            if not n:
                break
            if first_layer and self.ttfb is None:
                self.ttfb = time.monotonic() - self.t0
            if h is not None:
                h.update(view[:n])
            else:
                self._sample(path, pushed, got, view[:n])
            got += n
            if keep is not None:
                keep += view[:n]
        return got, keep, h

    def _sample(self, path, pushed, offset, chunk):
        """Compares a window of `chunk` (at `offset` in the body) with the
        pushed file; the window moves with the offset, so a client checks a
        different part of each chunk."""
        at = (offset // 7 + 4099 * (offset // BUF)) % max(1, len(chunk) - SAMPLE)
        want = os.pread(pushed.fileno(), min(SAMPLE, len(chunk) - at), offset + at)
        if bytes(chunk[at:at + len(want)]) != want:
            raise Failed(f"GET {path}: bytes at {offset + at} differ from the pushed blob")

    def pull(self, repo, ref, manifest_digest):
        """Pull `repo:ref` completely; return the bytes received."""
        manifest = self.fetch(f"/v2/{repo}/manifests/{ref}", manifest_digest, None,
                              headers={"Accept": ACCEPT})
        doc = json.loads(manifest)
        blobs = [doc["config"]] + doc["layers"]
        total = len(manifest)
        for i, blob in enumerate(blobs):
            self.fetch(f"/v2/{repo}/blobs/{blob['digest']}", blob["digest"], blob["size"],
                       first_layer=(i == 1))
            total += blob["size"]
        return total


def pull_once(base, repo, ref, manifest_digest, deadline_s=600, cafile=None,
              verify="full", layers=None):
    """Pull in this process; a result dict as the client process prints."""
    puller = Puller(base, time.monotonic() + deadline_s, cafile, verify, layers)
    result = {"ok": False, "timed_out": False, "error": None, "bytes": 0,
              "ttfb": None, "done": None}
    try:
        result["bytes"] = puller.pull(repo, ref, manifest_digest)
        result["ok"] = True
        result["done"] = time.monotonic() - puller.t0
    except TimedOut as e:
        result["timed_out"] = True
        result["error"] = f"deadline passed during {e}"
    except TimeoutError as e:
        # A socket timeout is the deadline at work only when it has passed.
        result["timed_out"] = time.monotonic() >= puller.deadline
        result["error"] = f"socket timeout: {e}"
    except (Failed, OSError, http.client.HTTPException, ValueError, KeyError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    result["ttfb"] = puller.ttfb
    return result


def verify_mode(i):
    """Client i's check: one client in every eight hashes every byte."""
    return "full" if i % 8 == 0 else "sampled"


def run_clients(n, base, repo, ref, manifest_digest, deadline_s, layers=None):
    """Run `n` client processes released together; return (wall seconds,
    [result dicts], CPU seconds the clients used)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "berthbench.pull", "--base", base, "--repo", repo,
            "--ref", ref, "--digest", manifest_digest, "--deadline", str(deadline_s)]
    if layers:
        argv += ["--layers", layers]
    clients = [subprocess.Popen(argv + ["--verify", verify_mode(i)], cwd=here,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i in range(n)]
    finished = False
    try:
        for c in clients:
            if c.stdout.readline().strip() != "ready":
                raise RuntimeError("a pull client failed to start")
        t0 = time.monotonic()
        for c in clients:
            c.stdin.write("go\n")
            c.stdin.flush()
        results = [json.loads(c.stdout.read() or '{"ok": false, "error": "no output"}')
                   for c in clients]
        wall = time.monotonic() - t0
        finished = True
    finally:
        if not finished:
            for c in clients:
                c.kill()
        cpu = sum(reap(c) for c in clients)
    return wall, results, cpu


def reap(proc):
    """Wait for a child and return the CPU seconds (user + system) it used."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # already reaped elsewhere: its usage is gone
        return 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--deadline", type=float, default=600)
    parser.add_argument("--verify", choices=("full", "sampled"), default="full")
    parser.add_argument("--layers", help="directory of the pushed layers, named by digest hex")
    args = parser.parse_args()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    result = pull_once(args.base, args.repo, args.ref, args.digest, args.deadline,
                       verify=args.verify, layers=args.layers)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
