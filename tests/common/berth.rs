//! berth itself, started in-process the way `main` starts it: a config parsed
//! from TOML, `berth::run` on a listener bound to 127.0.0.1:0, and a shutdown
//! future the test controls.
//!
//! The data directory outlives a stop, so a test can restart berth on it and
//! see what survived.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for any drain in these tests; only a guard against a hang.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a start may take to open the store, and a stop to let go of it.
const LOCK_DEADLINE: Duration = Duration::from_secs(10);
/// Free ports a [`Process`] tries before giving up on starting.
const PORT_ATTEMPTS: usize = 3;

pub struct Berth {
    data_dir: TempDir,
    config: String,
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ::berth::Error>>,
}

impl Berth {
    /// Start berth with one upstream at `upstream_url`. `toml_extra` is
    /// merged over the generated config (tables merge, values replace), e.g.
    /// `"[upstream]\nusername = \"u\"\n"` or `"[cache]\ninline_max = \"1KiB\"\n"`.
    pub async fn start(toml_extra: &str, upstream_url: &str) -> Berth {
        Berth::start_at("127.0.0.1:0", toml_extra, upstream_url).await
    }

    /// [`Berth::start`] listening on `listen` (`[::1]:0`, say) instead of
    /// a free port of 127.0.0.1.
    pub async fn start_at(listen: &str, toml_extra: &str, upstream_url: &str) -> Berth {
        let data_dir = tempfile::Builder::new()
            .prefix("berth-data-")
            .tempdir()
            .expect("create berth's temp data dir");
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("bind berth's listener on {listen}: {e}"));
        let addr = listener.local_addr().expect("berth's listener address");
        let config = config_text(toml_extra, upstream_url, addr, data_dir.path());
        let mut berth = Berth {
            data_dir,
            config,
            addr,
            running: None,
        };
        berth.launch(listener).await;
        berth
    }

    /// `http://127.0.0.1:PORT` (`http://[::1]:PORT` on IPv6).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT` (`[::1]:PORT`), as a registry client names it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The TOML berth was started with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Trigger shutdown and wait for `run` to return; panics if it returned
    /// an error or never returned. Idempotent.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let _ = running.shutdown.send(());
        match tokio::time::timeout(STOP_DEADLINE, running.task).await {
            Err(_) => panic!("berth::run did not return within {STOP_DEADLINE:?} of shutdown"),
            Ok(Err(join)) => panic!("berth::run panicked: {join}"),
            Ok(Ok(Err(e))) => panic!("berth::run returned an error: {e}"),
            Ok(Ok(Ok(()))) => {}
        }
        // sled lets go of the data directory's lock a moment after `run`
        // returns; a test that hands the directory to the `berth` binary
        // next (warm, import, check) must not find it still held.
        assert!(
            super::eventually(LOCK_DEADLINE, || !self.data_dir_in_use()).await,
            "berth still holds {} {LOCK_DEADLINE:?} after it stopped",
            self.data_dir.path().display()
        );
    }

    /// Stop, then start again on the same address and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebind berth's address {}: {e}", self.addr));
        self.launch(listener).await;
    }

    /// Stop, then start again on the same address and data directory with
    /// a config generated afresh from `toml_extra` and `upstream_url`, as
    /// [`Berth::start`] generates it: berth reconfigured over the cache an
    /// earlier run filled (taken offline, say, or pointed elsewhere).
    pub async fn restart_with(&mut self, toml_extra: &str, upstream_url: &str) {
        self.stop().await;
        self.config = config_text(toml_extra, upstream_url, self.addr, self.data_dir.path());
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebind berth's address {}: {e}", self.addr));
        self.launch(listener).await;
    }

    /// Whether a berth (this one) holds the data directory's lock.
    fn data_dir_in_use(&self) -> bool {
        matches!(
            ::berth::store::ensure_free(self.data_dir.path()),
            Err(::berth::store::StoreError::InUse { .. })
        )
    }

    /// Runs berth on `listener` and returns once it holds its data
    /// directory (or `run` ended early, which `stop` reports). Requests
    /// would wait in the listener's backlog anyway, but a test that runs
    /// the `berth` binary next (expecting "in use") must not be first.
    async fn launch(&mut self, listener: TcpListener) {
        let config = ::berth::Config::from_toml(&self.config)
            .unwrap_or_else(|e| panic!("berth rejected the test config: {e}\n{}", self.config));
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(::berth::run(config, listener, async move {
            // A dropped sender (the test ended) is a shutdown too.
            let _ = signal.await;
        }));
        // Not asserted: `stop` reports a `run` that ended early.
        super::eventually(LOCK_DEADLINE, || {
            self.data_dir_in_use() || task.is_finished()
        })
        .await;
        self.running = Some(Running { shutdown, task });
    }
}

/// The generated config with `extra` merged over it.
fn config_text(extra: &str, upstream_url: &str, addr: SocketAddr, data_dir: &Path) -> String {
    let mut upstream = toml::Table::new();
    upstream.insert("name".into(), "registry.test".into());
    upstream.insert("url".into(), upstream_url.into());
    let mut base = toml::Table::new();
    base.insert("listen".into(), addr.to_string().into());
    base.insert("data_dir".into(), data_dir.display().to_string().into());
    let mut extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("test's extra TOML does not parse: {e}\n{extra}"));
    // A plain `[upstream]` table in a test's extra TOML adjusts the one
    // upstream; a `[[upstream]]` list replaces it.
    match extra.remove("upstream") {
        Some(toml::Value::Table(fields)) => {
            merge(&mut upstream, fields);
            base.insert("upstream".into(), toml::Value::Array(vec![upstream.into()]));
        }
        Some(list) => {
            base.insert("upstream".into(), list);
        }
        None => {
            base.insert("upstream".into(), toml::Value::Array(vec![upstream.into()]));
        }
    }
    merge(&mut base, extra);
    toml::to_string(&base).expect("serialize berth test config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The `berth` binary as an operator runs it, with no `BERTH_*` variable
/// of the test's environment and no standard input.
pub fn command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("BERTH_")) {
        cmd.env_remove(var);
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// berth as a process of its own (the `berth` binary serving a config
/// file), for what an in-process berth cannot show: a SIGKILL at a chosen
/// moment, an exit code, credentials handed over in the environment of
/// that one process. Its data directory and config live in a temporary
/// directory; dropping it kills the process.
pub struct Process {
    dir: TempDir,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    child: Option<std::process::Child>,
}

impl Process {
    /// Writes the config that [`Berth::start`] would generate from
    /// `toml_extra` and `upstream_url` (on a free loopback port), starts
    /// `berth --config <it>` with `env` added to its environment, and waits
    /// until it answers `/v2/`; panics with its log if it exits first.
    /// The free port may be taken by another test before berth binds it:
    /// then it starts again on another one, a few times.
    pub async fn start(toml_extra: &str, upstream_url: &str, env: &[(&str, &str)]) -> Process {
        for attempt in 1..=PORT_ATTEMPTS {
            let mut process = Process::configure(toml_extra, upstream_url, env);
            process.spawn();
            match process.wait_ready().await {
                Ok(()) => return process,
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("Address already in use") => {}
                Err(log) => panic!("berth exited while starting; its log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The process's files (config, data directory) without starting it:
    /// for a test that runs the binary itself ([`Process::run`]).
    pub fn configure(toml_extra: &str, upstream_url: &str, env: &[(&str, &str)]) -> Process {
        let dir = tempfile::Builder::new()
            .prefix("berth-process-")
            .tempdir()
            .expect("create berth's temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let data_dir = dir.path().join("data");
        let config = dir.path().join("berth.toml");
        std::fs::write(
            &config,
            config_text(toml_extra, upstream_url, addr, &data_dir),
        )
        .expect("write berth.toml");
        Process {
            dir,
            config,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            addr,
            child: None,
        }
    }

    /// `berth --config <config> <args>` with the process's environment, run
    /// to completion (killed past `limit`, a hang guard).
    pub fn run(&self, args: &[&str], limit: Duration) -> std::process::Output {
        let mut cmd = self.command();
        cmd.args(args);
        super::run_bounded(cmd, limit)
            .unwrap_or_else(|e| panic!("run berth {}: {e}", args.join(" ")))
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = command();
        cmd.arg("--config").arg(&self.config);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("create berth's log");
        let log_err = log.try_clone().expect("clone berth's log handle");
        let child = self
            .command()
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("start the berth binary");
        self.child = Some(child);
    }

    /// Waits until it answers `/v2/`; `Err` with its exit status and log
    /// if it exits first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = super::http::client();
        let url = format!("{}/v2/", self.url());
        let until = tokio::time::Instant::now() + LOCK_DEADLINE * 3;
        loop {
            let up = http.get(&url).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("({status})\n{}", self.log()));
            }
            assert!(
                tokio::time::Instant::now() < until,
                "berth never answered {url}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Everything berth wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("berth.log")
    }

    /// How it exited, if it has (reaped then); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, and reap it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
