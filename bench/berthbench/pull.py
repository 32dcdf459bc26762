"""A verifying pull client: `python3 -m berthbench.pull`, also importable.

It does what a container runtime does on a pull, minus unpacking: GET the
manifest by tag (checking it is the expected digest), then GET every blob it
names, in order (config, then layers), checking each blob's sha256 and size.
Each client is its own process so that 32 of them hash in parallel instead
of sharing one GIL; `run_clients` starts them, waits until all are ready,
then releases them at once (a line on stdin), so spawn time is not measured.

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
    def __init__(self, base, deadline, cafile=None):
        url = urllib.parse.urlsplit(base)
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

    def fetch(self, path, digest, size, headers=None, first_layer=False):
        """Stream one object, checking status, size and sha256; returns its bytes
        when it is small (manifests), else None."""
        resp = self.get(path, headers)
        if resp.status != 200:
            body = resp.read()[:200]
            raise Failed(f"GET {path}: HTTP {resp.status} {body!r}")
        h, got, buf = hashlib.sha256(), 0, bytearray(BUF)
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
            h.update(view[:n])
            got += n
            if keep is not None:
                keep += view[:n]
        if size is not None and got != size:
            raise Failed(f"GET {path}: {got} bytes, expected {size}")
        if "sha256:" + h.hexdigest() != digest:
            raise Failed(f"GET {path}: sha256 {h.hexdigest()[:16]}... does not match")
        return bytes(keep) if keep is not None else None

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


def pull_once(base, repo, ref, manifest_digest, deadline_s=600, cafile=None):
    """Pull in this process; a result dict as the client process prints."""
    puller = Puller(base, time.monotonic() + deadline_s, cafile)
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


def run_clients(n, base, repo, ref, manifest_digest, deadline_s):
    """Run `n` client processes released together; return (wall seconds,
    [result dicts])."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "berthbench.pull", "--base", base, "--repo", repo,
            "--ref", ref, "--digest", manifest_digest, "--deadline", str(deadline_s)]
    clients = [subprocess.Popen(argv, cwd=here, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for _ in range(n)]
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
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
            c.wait()
    return wall, results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--deadline", type=float, default=600)
    args = parser.parse_args()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    result = pull_once(args.base, args.repo, args.ref, args.digest, args.deadline)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
