//! A real browser: Debian's headless Chromium, as an operator's browser
//! loads berth's status page. `dump_dom` gives the document as Chromium
//! rendered it (after the page's own scripts ran at load), `screenshot` a
//! PNG for people to look at.
//!
//! Each call runs a fresh Chromium with its own profile directory, no
//! network beyond what it is told to load, and a hang guard.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

const BINARY: &str = "chromium";
/// A hang guard: a headless load of a local page takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(120);

pub struct Chromium {
    profiles: TempDir,
}

impl Default for Chromium {
    fn default() -> Self {
        Self::new()
    }
}

impl Chromium {
    pub fn new() -> Chromium {
        Chromium {
            profiles: tempfile::Builder::new()
                .prefix("berth-chromium-")
                .tempdir()
                .expect("create a temp dir for Chromium's profiles"),
        }
    }

    /// The page at `url` as Chromium's DOM, serialized.
    pub async fn dump_dom(&self, url: &str) -> String {
        self.run(&["--dump-dom", url]).await
    }

    /// The page at `url` after `virtual_ms` of the page's own time: its
    /// timers run (Chromium's virtual time, not a wait), so a page that
    /// refreshes itself has done so.
    pub async fn dump_dom_after(&self, url: &str, virtual_ms: u32) -> String {
        let budget = format!("--virtual-time-budget={virtual_ms}");
        self.run(&[&budget, "--dump-dom", url]).await
    }

    /// A PNG of the page at `url`, `width` x `height` pixels, written to
    /// `path`.
    pub async fn screenshot(&self, url: &str, path: &Path, width: u32, height: u32) {
        let shot = format!("--screenshot={}", path.display());
        let size = format!("--window-size={width},{height}");
        self.run(&[&shot, &size, url]).await;
        let png = std::fs::read(path)
            .unwrap_or_else(|e| panic!("Chromium wrote no screenshot at {}: {e}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
    }

    async fn run(&self, args: &[&str]) -> String {
        let profile = tempfile::Builder::new()
            .prefix("profile-")
            .tempdir_in(self.profiles.path())
            .expect("create a Chromium profile dir");
        let mut cmd = Command::new(BINARY);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a hung Chromium and the helper
        // processes it forked can be ended together.
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BINARY} (scripts/test installs it): {e}"));
        let id = child.id();
        let waited = tokio::time::timeout(
            DEADLINE,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await;
        let output = match waited {
            Ok(joined) => joined
                .expect("the thread waiting for Chromium panicked")
                .expect("wait for Chromium"),
            Err(_) => {
                // The child is owned by the blocked thread; end its group.
                let _ = Command::new("kill")
                    .args(["-9", "--", &format!("-{id}")])
                    .status();
                panic!("Chromium did not finish within {DEADLINE:?}: {args:?}");
            }
        };
        assert!(
            output.status.success(),
            "Chromium failed ({}) for {args:?}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
