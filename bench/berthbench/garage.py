"""A single-node Garage (2.5.0, the `garage` binary) on loopback for
`bench/run --shared`: the S3 store berth's shared tier is measured against,
set up the way an operator would and the way `tests/common/garage.rs` does
(config file, `layout assign`/`layout apply`, `bucket create`, `key create`,
`bucket allow`), with its key written to files that berth reads
(`access_key_id_file`, `secret_access_key_file`).

Counting requests: Garage logs every S3 request when it arrives, before it
handles it, as `garage_api_common::generic_server: <client> [(key <id>)]
<METHOD> <uri>`. A request a client has its answer to is therefore in the
log, and the lines since a mark are the requests since then (the parser is
the one of `tests/common/garage.rs`, in Python).
"""
import datetime
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from . import procs

REGION = "garage"
BUCKET = "berth"
KEY_NAME = "berth-key"
# Request lines (garage_api_common) are logged at info.
LOG_FILTER = "netapp=info,garage=info"
CLI_DEADLINE = 30


@dataclass
class S3Request:
    method: str
    path: str    # bucket first: /berth/<key>
    query: str   # without "?"

    @property
    def key(self):
        """The object key it addressed, if any."""
        _, _, rest = self.path.lstrip("/").partition("/")
        return urllib.parse.unquote(rest) or None


def parse_line(line):
    """The S3 request of one log line, or None (see the module doc)."""
    _, sep, message = line.partition("garage_api_common::generic_server: ")
    if not sep:
        return None
    words = message.split()
    # "error 404 …, … in response to …" repeats a request already counted.
    if len(words) < 3 or ":" not in words[0]:
        return None
    i = 1
    if words[i].startswith("(via"):
        i += 2
    if words[i] == "(key":
        i += 2
    if i + 1 >= len(words):
        return None
    method, uri = words[i], words[i + 1]
    if not method.isalpha() or not method.isupper():
        return None
    path, _, query = uri.partition("?")
    if path.startswith(("/v0/", "/v1/", "/v2/", "/health", "/metrics", "/check")):
        return None
    return S3Request(method, path, query)


def quote(text):
    return urllib.parse.quote(text, safe="-_.~")


def free_ports(n):
    """`n` distinct loopback ports that were free a moment ago (held
    together while chosen, so that they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Garage:
    """One Garage node in `<work>/garage`, with BUCKET and a key allowed on it."""

    def __init__(self, work):
        self.dir = os.path.join(work, "garage")
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "garage.toml")
        self.log_path = os.path.join(self.dir, "garage.log")
        self.proc = None
        self.endpoint = None
        self.key_id_file = os.path.join(self.dir, "access_key_id")
        self.secret_file = os.path.join(self.dir, "secret_access_key")

    def start(self):
        if shutil.which("garage") is None:
            raise procs.StartError(
                "no `garage` on PATH: install Garage 2.5.0 with "
                "`cargo install garage --locked --version 2.5.0` (./scripts/test does)")
        self.s3_port, self.admin_port, rpc = free_ports(3)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        with open(self.config, "w") as f:
            f.write(f'metadata_dir = "{self.dir}/meta"\ndata_dir = "{self.dir}/data"\n'
                    'db_engine = "sqlite"\nreplication_factor = 1\n'
                    f'rpc_bind_addr = "127.0.0.1:{rpc}"\n'
                    f'rpc_public_addr = "127.0.0.1:{rpc}"\n'
                    f'rpc_secret = "{secrets.token_hex(32)}"\n\n'
                    f'[s3_api]\ns3_region = "{REGION}"\n'
                    f'api_bind_addr = "127.0.0.1:{self.s3_port}"\n'
                    'root_domain = ".s3.garage.localhost"\n\n'
                    f'[admin]\napi_bind_addr = "127.0.0.1:{self.admin_port}"\n'
                    f'admin_token = "{secrets.token_hex(16)}"\n')
        env = dict(os.environ, RUST_LOG=LOG_FILTER, NO_COLOR="1")
        self.proc = procs.Proc("garage", ["garage", "-c", self.config, "server"],
                               log_path=self.log_path, env=env)
        self._wait(lambda: "S3 API server listening" in self.log_text() and
                   self.health() is not None, "listen")
        node = self.cli("node", "id", "-q").split("@")[0].strip()
        self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node)
        self.cli("layout", "apply", "--version", "1")
        self._wait(lambda: self.health() == "full", "become healthy")
        self.cli("bucket", "create", BUCKET)
        created = self.cli("key", "create", KEY_NAME)
        fields = {}
        for line in created.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
        with open(self.key_id_file, "w") as f:
            f.write(fields["Key ID"])
        with open(self.secret_file, "w") as f:
            f.write(fields["Secret key"])
        os.chmod(self.secret_file, 0o600)
        self.cli("bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def s3_config(self, prefix="berth"):
        """berth's `[storage.s3]` for this bucket."""
        return (f'\n[storage.s3]\nendpoint = "{self.endpoint}"\nregion = "{REGION}"\n'
                f'bucket = "{BUCKET}"\nprefix = "{prefix}"\npath_style = true\n'
                f'access_key_id_file = "{self.key_id_file}"\n'
                f'secret_access_key_file = "{self.secret_file}"\n')

    def presign(self, method, key, expires=600):
        """A presigned URL (AWS signature version 4, in the query) for
        `key` in the bucket: what curl needs to talk to the store itself."""
        host = self.endpoint.split("://", 1)[1]
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        scope = f"{day}/{REGION}/s3/aws4_request"
        with open(self.key_id_file) as f:
            key_id = f.read().strip()
        with open(self.secret_file) as f:
            secret = f.read().strip()
        query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{key_id}/{scope}",
                 "X-Amz-Date": stamp, "X-Amz-Expires": str(expires),
                 "X-Amz-SignedHeaders": "host"}
        canonical_query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items()))
        path = urllib.parse.quote(f"/{BUCKET}/{key}")
        request = f"{method}\n{path}\n{canonical_query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = (f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
                   f"{hashlib.sha256(request.encode()).hexdigest()}")
        signing = ("AWS4" + secret).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            signing = hmac.new(signing, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.endpoint}{path}?{canonical_query}&X-Amz-Signature={signature}"

    def get_ceiling(self, key, repeat=3):
        """GiB/s of curl's GET of `key` straight from the store (the best of
        `repeat`), and Garage's CPU per GiB sent then: what one stream from
        the store gives on this machine, whatever reads it."""
        best, cpu_per_gib = 0.0, None
        for _ in range(repeat):
            cpu = self.proc.cpu_seconds()
            out = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w",
                                  "%{http_code} %{size_download} %{speed_download}",
                                  self.presign("GET", key)], capture_output=True, text=True,
                                 timeout=120)
            cpu = self.proc.cpu_seconds() - cpu
            status, size, speed = out.stdout.split()
            if status != "200":
                raise RuntimeError(f"GET {key} from Garage: {status} {out.stderr}")
            if float(speed) / (1 << 30) > best:
                best = float(speed) / (1 << 30)
                cpu_per_gib = cpu / (int(size) / (1 << 30))
        return best, cpu_per_gib

    def cli(self, *args):
        out = subprocess.run(["garage", "-c", self.config, *args], capture_output=True,
                             text=True, timeout=CLI_DEADLINE, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, RUST_LOG="warn", NO_COLOR="1"))
        if out.returncode != 0:
            raise RuntimeError(f"`garage {' '.join(args)}` failed: {out.stdout}{out.stderr}\n"
                               f"{self.proc.log_tail() if self.proc else ''}")
        return out.stdout

    def health(self):
        """"full", "degraded", "unavailable", or None when the admin API
        does not answer."""
        url = f"http://127.0.0.1:{self.admin_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read().decode(errors="replace")
                return "full" if "fully operational" in body else "degraded"
        except urllib.error.HTTPError:
            return "unavailable"
        except OSError:
            return None

    def _wait(self, ready, what, deadline_s=30):
        until = time.monotonic() + deadline_s
        while time.monotonic() < until:
            if not self.proc.alive():
                raise procs.StartError(f"garage exited:\n{self.proc.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise procs.StartError(f"garage did not {what} within {deadline_s} s:\n"
                               f"{self.proc.log_tail()}")

    # --- counting -------------------------------------------------------------

    def log_text(self, start=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def mark(self):
        """Where the log ends now; pass it to `requests_since`."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def requests_since(self, mark):
        text = self.log_text(mark)
        # A line still being written is left for the next read.
        text = text[:text.rfind("\n") + 1]
        return [r for r in map(parse_line, text.splitlines()) if r]

    def settled_requests_since(self, mark, quiet=0.5, limit=10.0):
        """`requests_since`, once no S3 request has arrived for `quiet`
        seconds (berth's background requests included), waiting at most
        `limit` seconds for that."""
        until = time.monotonic() + limit
        seen = len(self.requests_since(mark))
        while time.monotonic() < until:
            time.sleep(quiet)
            now = len(self.requests_since(mark))
            if now == seen:
                break
            seen = now
        return self.requests_since(mark)
