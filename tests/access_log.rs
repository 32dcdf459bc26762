//! What berth's request log says, read from the binary's JSON logs as an
//! operator reads them: the cache outcome names what happened (`hit`,
//! `stale`, `miss`, `refused`), the upstream chosen and the `ns` a client
//! gave are there, and a client's error names an unreachable upstream by
//! its configured name while only the server's log holds its address.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use common::content::{Fixture, Pusher};
use common::http::{client, Reply};
use common::registry::Registry;
use common::{eventually, free_port};

/// The `berth` binary with JSON logs, every line kept; killed on drop.
struct LoggedBerth {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    url: String,
    _dir: tempfile::TempDir,
}

impl LoggedBerth {
    fn start(upstream_url: &str, extra: &str) -> LoggedBerth {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("berth.toml");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{upstream_url}\"\n{extra}",
            dir.path().join("data").display(),
        );
        std::fs::write(&config, text).expect("write config");
        let mut child = common::berth::command()
            .args(["--log-format", "json", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(value);
            }
        });
        LoggedBerth {
            child,
            lines,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn serving(&self) {
        let up = eventually(Duration::from_secs(30), || {
            self.lines()
                .iter()
                .any(|l| l["message"] == "berth is serving")
        })
        .await;
        assert!(up, "berth never said it serves: {:#?}", self.lines());
    }

    /// The request line of the `nth` (from 0) request for `path`, once
    /// written (when its body has ended).
    async fn request_line(&self, path: &str, nth: usize) -> Value {
        let find = || {
            self.lines()
                .into_iter()
                .filter(|l| l["message"] == "request" && l["path"] == path)
                .nth(nth)
        };
        let written = eventually(Duration::from_secs(30), || find().is_some()).await;
        assert!(
            written,
            "no request line {nth} for {path}: {:#?}",
            self.lines()
        );
        find().unwrap_or_default()
    }

    async fn get(&self, path_and_query: &str) -> Reply {
        Reply::of(client().get(format!("{}{path_and_query}", self.url))).await
    }
}

impl Drop for LoggedBerth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_line_says_what_berth_did() {
    let mut registry = Registry::start();
    let app = Fixture::oci_image("test/app", "v1");
    let other = Fixture::oci_image("test/other", "v1");
    let pusher = Pusher::to(&registry);
    pusher.push_all(&[app.clone(), other.clone()]).await;
    // Tags revalidate on every pull, so that a pull with the registry down
    // is answered stale.
    let berth = LoggedBerth::start(&registry.url(), "tag_ttl = \"0s\"\n");
    berth.serving().await;

    let tag = format!("/v2/{}/manifests/v1", app.repo);
    assert_eq!(
        berth.get(&format!("{tag}?ns=registry.test")).await.status,
        200
    );
    let line = berth.request_line(&tag, 0).await;
    assert_eq!(line["cache"], "miss", "{line}");
    assert_eq!(line["ns"], "registry.test", "{line}");
    assert_eq!(line["upstream"], "registry.test", "{line}");

    let layer = app.largest_blob();
    let blob = format!("/v2/{}/blobs/{}", app.repo, layer.digest);
    assert_eq!(berth.get(&blob).await.status, 200);
    assert_eq!(berth.request_line(&blob, 0).await["cache"], "miss");
    assert_eq!(berth.get(&blob).await.status, 200);
    let line = berth.request_line(&blob, 1).await;
    assert_eq!(
        (&line["cache"], &line["ns"]),
        (&"hit".into(), &"-".into()),
        "{line}"
    );

    // berth holds the bytes, but test/other was never seen with them.
    let elsewhere = format!("/v2/{}/blobs/{}", other.repo, layer.digest);
    assert_eq!(berth.get(&elsewhere).await.status, 404);
    assert_eq!(berth.request_line(&elsewhere, 0).await["cache"], "refused");

    registry.stop();
    assert_eq!(berth.get(&tag).await.status, 200, "the last known tag");
    let line = berth.request_line(&tag, 1).await;
    assert_eq!(line["cache"], "stale", "{line}");

    // A client's error names the upstream, not its address...
    let never = format!("/v2/{}/manifests/v2", other.repo);
    let reply = berth.get(&never).await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 502, "{body}");
    assert!(body.contains("registry.test"), "{body}");
    let address = registry.url().replace("http://", "");
    assert!(!body.contains(&address), "{body}");
    assert!(!body.contains("http://"), "{body}");
    // ...which the server's log keeps.
    let logged = berth.lines().iter().any(|l| {
        l["message"] == "upstream request failed"
            && l["url"].as_str().is_some_and(|u| u.contains(&address))
    });
    assert!(
        logged,
        "the address is in the server's log: {:#?}",
        berth.lines()
    );
}
