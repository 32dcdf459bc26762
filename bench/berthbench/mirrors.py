"""The three mirrors under test, each started fresh (empty cache, new temp
dir, free loopback port) in front of a given upstream URL:

- berth, with one default [[upstream]];
- distribution's `docker-registry` in proxy (pull-through cache) mode;
- nginx as a caching reverse proxy, tuned as well as nginx allows for this
  job (cache lock on, lock timeout and lock age long, so concurrent misses
  wait for one upstream fetch instead of each going upstream); it also
  listens for h2c (prior knowledge) on a second port, as nginx cannot
  offer HTTP/1.1 and h2c on one.

Each can serve TLS instead (`tls=(cert, key)`: one certificate for all):
berth with `[tls]`, distribution with `http.tls`, nginx with `ssl http2`;
HTTP/2 or HTTP/1.1 as the client's ALPN asks.

Each mirror's directory is deleted when it stops, so cold runs never share a
cache and the disk does not fill up across repetitions.
"""
import os
import pwd
import shutil
import ssl

from . import procs
from .upstream import registry_config

UPSTREAM_NAME = "upstream.local"


class Mirror:
    """A mirror kind. `start(upstream_url)` runs a fresh instance; `stop()`
    ends it and deletes its cache."""
    key = ""
    label = ""

    def __init__(self, root, tls=None):
        self.root = root
        self.tls = tls  # (cert_file, key_file) or None
        if tls:
            self.key, self.label = self.key + "-tls", self.label + " (TLS)"
        self.scheme = "https" if tls else "http"
        self.runs = 0
        self.dir = None
        self.port = None
        self.proc = None

    @property
    def base_key(self):
        """The mirror's column, whatever the protocol."""
        return self.key.removesuffix("-tls")

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, upstream_url):
        self.runs += 1
        self.dir = os.path.join(self.root, f"{self.key}-{self.runs}")
        os.makedirs(self.dir)
        self.port = procs.free_port()
        self.proc = self._spawn(upstream_url)
        procs.wait_http(self.proc, self.url + "/v2/", context=self.ssl_context())
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.tls[0]) if self.tls else None

    def h2c_url(self):
        """Where the mirror speaks h2c (prior knowledge), if it does."""
        return None

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _spawn(self, upstream_url):
        raise NotImplementedError


class Berth(Mirror):
    key = "berth"
    label = "berth"

    def __init__(self, root, binary, tls=None):
        super().__init__(root, tls)
        self.binary = binary

    def h2c_url(self):
        # HTTP/1.1 and h2c (prior knowledge) on one port.
        return None if self.tls else self.url

    def _spawn(self, upstream_url):
        config = self._path("berth.toml")
        with open(config, "w") as f:
            f.write(self.config_text(upstream_url))
        return procs.Proc(self.label, [self.binary, "--config", config, "serve"],
                          log_path=self._path("berth.log"))

    def config_text(self, upstream_url):
        text = (
            f'listen = "127.0.0.1:{self.port}"\n'
            f'data_dir = "{self._path("data")}"\n\n'
            f'[[upstream]]\nname = "{UPSTREAM_NAME}"\nurl = "{upstream_url}"\ndefault = true\n\n'
            '[storage]\nmax_size = "40GiB"\n'
        )
        if self.tls:
            text += f'\n[tls]\ncert_file = "{self.tls[0]}"\nkey_file = "{self.tls[1]}"\n'
        return text


class RegistryProxy(Mirror):
    key = "registry"
    label = "docker-registry proxy"

    def _spawn(self, upstream_url):
        config = self._path("config.yml")
        with open(config, "w") as f:
            f.write(registry_config(self.port, self._path("storage"), proxy_url=upstream_url,
                                    tls=self.tls))
        return procs.Proc(self.label, ["docker-registry", "serve", config],
                          log_path=self._path("registry.log"))


def nginx_conf(d, port, http_extra, server_body, listen_extra=""):
    """An nginx.conf whose every path (pid, logs, temp dirs) is inside `d`."""
    # As root, nginx's workers would switch to `nobody`, who cannot write in
    # our private temp dir: keep them as the current user.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{http_extra}
    server {{
        listen 127.0.0.1:{port}{listen_extra}
{server_body}
    }}
}}
"""


class Nginx(Mirror):
    key = "nginx"
    label = "nginx cache"
    h2c_port = None

    def h2c_url(self):
        return f"http://127.0.0.1:{self.h2c_port}" if self.h2c_port else None

    def _spawn(self, upstream_url):
        if not self.tls and self.key == "nginx":
            self.h2c_port = procs.free_port()
        os.makedirs(self._path("tmp"))
        conf = self._path("nginx.conf")
        with open(conf, "w") as f:
            f.write(self.config_text(upstream_url))
        return procs.Proc(self.label, [
            "nginx", "-c", conf, "-p", self.dir + "/", "-e", self._path("error.log"),
            "-g", "daemon off;"], log_path=self._path("stderr.log"))

    def config_text(self, upstream_url):
        host_port = upstream_url.split("://", 1)[1]
        http_extra = f"""    proxy_cache_path {self.dir}/cache levels=1:2 keys_zone=registry:64m
                     max_size=40g inactive=1d use_temp_path=off;
    upstream registry {{
        server {host_port};
        keepalive 64;
    }}"""
        server_body = """        location / {
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering on;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 206 1h;
            # One upstream fetch per object, however many clients miss it:
            # the others wait (lock_timeout) and no second fetch starts
            # while the first is still running (lock_age).
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }"""
        if self.tls:
            listen = (f" ssl http2;\n        ssl_certificate {self.tls[0]};\n"
                      f"        ssl_certificate_key {self.tls[1]};")
        else:
            listen = ";"
            if self.h2c_port:
                listen += f"\n        listen 127.0.0.1:{self.h2c_port} http2;"
        return nginx_conf(self.dir, self.port, http_extra, server_body, listen)


class StaticFiles(Nginx):
    """Not a mirror: nginx serving files from `docroot` (sendfile), for the
    loopback ceiling of the blob client (what curl gets from a plain static
    file server on this machine)."""
    key = "static"
    label = "nginx static files"

    def __init__(self, root, docroot):
        super().__init__(root)
        self.docroot = docroot

    def config_text(self, upstream_url):
        return nginx_conf(self.dir, self.port, "", f"        root {self.docroot};", ";")


def all_mirrors(root, berth_binary, tls=None):
    """The three mirrors compared in every scenario, berth first; over TLS
    with `tls=(cert, key)`."""
    return [Berth(root, berth_binary, tls), RegistryProxy(root, tls), Nginx(root, tls)]
