"""The upstream registry: Debian's `docker-registry` (distribution 2.8) with
filesystem storage, seeded with generated images through the registry push
API, and its access log read back to count what the mirrors fetched.

Why generated content: the benchmark must run offline and be repeatable, and
random layer bytes cannot be deduplicated or compressed by anyone on the path.
Why the access log: every mirror, whatever it is, must go through the
upstream's front door, so counting there measures all three the same way.
"""
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field

from . import procs
from .pull import ACCEPT  # noqa: F401 (re-exported: what pull clients send)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CHUNK = 8 << 20

# `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 1234 "" "ua"`
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')


@dataclass
class Image:
    """One pushed image: where it is, its manifest, and its blobs."""
    repo: str
    tag: str
    manifest: bytes
    digest: str
    blobs: list = field(default_factory=list)  # [(digest, size)], config first

    @property
    def layers(self):
        return self.blobs[1:]

    @property
    def size(self):
        """Bytes a full pull transfers: manifest and every blob."""
        return len(self.manifest) + sum(size for _, size in self.blobs)


class Upstream:
    """A running docker-registry in `workdir`, on a free loopback port."""

    def __init__(self, workdir):
        self.dir = workdir
        self.port = procs.free_port()
        self.access_log = os.path.join(workdir, "access.log")
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(registry_config(self.port, os.path.join(self.dir, "storage")))
        self.proc = procs.Proc(
            "upstream docker-registry", ["docker-registry", "serve", config],
            log_path=os.path.join(self.dir, "registry.log"), stdout_path=self.access_log)
        procs.wait_http(self.proc, self.url + "/v2/")

    def stop(self):
        if self.proc:
            self.proc.stop()

    def log_mark(self):
        """Where the access log ends now; pass it to `traffic_since`."""
        try:
            return os.path.getsize(self.access_log)
        except OSError:
            return 0

    def traffic_since(self, mark):
        """Requests and GET body bytes the upstream answered since `mark`."""
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return count_traffic(text)

    def settled_traffic_since(self, mark, quiet=0.5, limit=10.0):
        """`traffic_since`, once the access log has not grown for `quiet`
        seconds (a mirror's background requests included), waiting at most
        `limit` seconds for that."""
        until = time.monotonic() + limit
        size = self.log_mark()
        while time.monotonic() < until:
            time.sleep(quiet)
            now = self.log_mark()
            if now == size:
                break
            size = now
        return self.traffic_since(mark)


def count_traffic(text):
    """Tally access-log lines: requests by kind, and bytes of GET bodies (a
    HEAD's logged size is a Content-Length, not bytes sent)."""
    out = {"requests": 0, "blob_gets": 0, "manifest_requests": 0, "manifest_gets": 0,
           "bytes": 0}
    for m in _ACCESS_LINE.finditer(text):
        out["requests"] += 1
        path = m["path"]
        if "/manifests/" in path:
            out["manifest_requests"] += 1
            # What Docker Hub counts against its pull limit.
            if m["method"] == "GET":
                out["manifest_gets"] += 1
        if m["method"] == "GET":
            if "/blobs/" in path:
                out["blob_gets"] += 1
            if m["bytes"] != "-":
                out["bytes"] += int(m["bytes"])
    return out


def registry_config(port, storage, proxy_url=None):
    """A distribution 2.8 config.yml: filesystem storage, access log on,
    optionally proxy (pull-through cache) mode."""
    text = (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: berth-bench\n"
    )
    if proxy_url:
        text += f"proxy:\n  remoteurl: {proxy_url}\n"
    return text


# --- content -----------------------------------------------------------------

def write_random_file(path, size):
    """Fill `path` with `size` random bytes; return their sha256 digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layer_digests):
    """A minimal OCI image config whose diff_ids are the (uncompressed tar)
    layers."""
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "config": {},
    }, sort_keys=True).encode()


def image_manifest(config, layers):
    """An OCI image manifest for a config blob and [(digest, size)] layers."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
    }, sort_keys=True).encode()


# --- pushing -----------------------------------------------------------------

class Pusher:
    """Pushes blobs (monolithic POST then PUT) and manifests to a registry
    over one keep-alive connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def close(self):
        self.conn.close()

    def _request(self, method, path, body=None, headers=None, expect=(200,)):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in expect:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return resp

    def push_blob(self, repo, digest, size, body):
        """`body` is bytes or a binary file object of `size` bytes."""
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        location = urllib.parse.urlsplit(resp.getheader("Location"))
        query = (location.query + "&" if location.query else "") + f"digest={digest}"
        path = f"{location.path}?{query}"
        self._request("PUT", path, body=body, expect=(201,), headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def push_manifest(self, repo, ref, manifest):
        self._request("PUT", f"/v2/{repo}/manifests/{ref}", body=manifest, expect=(201,),
                      headers={"Content-Type": OCI_MANIFEST})


def push_large_image(port, workdir, layer_sizes, repo="bench/large", tag="v1"):
    """Generate random layers as files in `workdir`, push them and an image
    of them; return the Image and the layer file paths (by digest)."""
    layers, files = [], {}
    for i, size in enumerate(layer_sizes):
        path = os.path.join(workdir, f"layer{i}")
        digest = write_random_file(path, size)
        os.rename(path, os.path.join(workdir, digest.split(":")[1]))
        files[digest] = os.path.join(workdir, digest.split(":")[1])
        layers.append((digest, size))
    config = image_config([d for d, _ in layers])
    manifest = image_manifest(config, layers)
    pusher = Pusher(port)
    try:
        for digest, size in layers:
            with open(files[digest], "rb") as f:
                pusher.push_blob(repo, digest, size, f)
        pusher.push_blob(repo, sha256_digest(config), len(config), config)
        pusher.push_manifest(repo, tag, manifest)
    finally:
        pusher.close()
    blobs = [(sha256_digest(config), len(config))] + layers
    return Image(repo, tag, manifest, sha256_digest(manifest), blobs), files


def push_small_images(port, count, layer_size=4096, repo="bench/small", workers=4):
    """Push `count` one-layer images as tags t0000... of `repo`."""
    tags = [f"t{i:04d}" for i in range(count)]
    pushers = [Pusher(port) for _ in range(workers)]

    def push(i):
        pusher = pushers[i % workers]
        layer = os.urandom(layer_size)
        layers = [(sha256_digest(layer), len(layer))]
        config = image_config([layers[0][0]])
        manifest = image_manifest(config, layers)
        pusher.push_blob(repo, layers[0][0], len(layer), layer)
        pusher.push_blob(repo, sha256_digest(config), len(config), config)
        pusher.push_manifest(repo, tags[i], manifest)
        blobs = [(sha256_digest(config), len(config))] + layers
        return Image(repo, tags[i], manifest, sha256_digest(manifest), blobs)

    # One connection per worker thread: thread i handles indexes i, i+w, ...
    def worker(w):
        return [push(i) for i in range(w, count, workers)]

    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            chunks = list(pool.map(worker, range(workers)))
    finally:
        for p in pushers:
            p.close()
    images = [img for chunk in chunks for img in chunk]
    return sorted(images, key=lambda img: img.tag)
