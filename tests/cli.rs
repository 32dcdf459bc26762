//! The `berth` binary as an operator meets it: refused configurations exit
//! with 64 and name every bad field; a good one serves, and SIGTERM stops it
//! cleanly with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn berth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    // Only what the test sets reaches berth's configuration.
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("BERTH_")) {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

#[test]
fn a_bad_config_file_is_refused_with_exit_64_and_every_field_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "listen = \"not an address\"\nfavourite = 1\n[[upstream]]\nname = \"x.example\"\nurl = \"gopher://x\"\ntag_ttl = \"often\"\n[cache]\nhot_size = \"huge\"\n",
    )
    .expect("write config");
    let out = berth()
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(64), "exit status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in [
        "listen",
        "favourite",
        "upstream[x.example].url",
        "upstream[x.example].tag_ttl",
        "cache.hot_size",
    ] {
        assert!(
            stderr.contains(&format!("{field}:")),
            "{field} not named in:\n{stderr}"
        );
    }
}

#[test]
fn a_bad_environment_override_is_refused_too() {
    let out = berth()
        .arg("check-config")
        .env("BERTH_UPSTREAM_URL", "not a url")
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream[docker.io].url"));
}

#[test]
fn the_embedded_defaults_are_a_valid_configuration() {
    let out = berth().arg("check-config").output().expect("run berth");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("127.0.0.1:5000"), "{stdout}");
    assert!(stdout.contains("registry-1.docker.io"), "{stdout}");
}

#[test]
fn sigterm_stops_a_serving_berth_with_exit_0_and_a_flushed_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut child = berth()
        .env("BERTH_LISTEN", "127.0.0.1:0")
        .env("BERTH_DATA_DIR", &data)
        // Nothing listens on the discard port; berth never needs it here.
        .env("BERTH_UPSTREAM_URL", "http://127.0.0.1:9")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth");
    let stderr = child.stderr.take().expect("stderr pipe");
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("berth is serving"));
    assert!(serving, "berth did not report that it serves");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait for berth");
    assert_eq!(
        status.code(),
        Some(0),
        "berth's last words:\n{}",
        rest.join("\n")
    );
    assert!(
        rest.iter().any(|l| l.contains("store flushed")),
        "{}",
        rest.join("\n")
    );
    assert!(data.join("meta").exists());
}

#[test]
fn berth_health_exits_0_while_the_configured_berth_answers_and_1_when_it_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // As the image's HEALTHCHECK runs it: the server's own configuration,
    // whose listen address is all addresses; the probe asks loopback.
    let listen = format!("0.0.0.0:{port}");
    let health = || {
        berth()
            .arg("health")
            .env("BERTH_LISTEN", &listen)
            .output()
            .expect("run berth health")
    };
    let out = health();
    assert_eq!(out.status.code(), Some(1), "nothing serves yet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not healthy"), "{stderr}");

    let mut child = berth()
        .env("BERTH_LISTEN", &listen)
        .env("BERTH_DATA_DIR", dir.path().join("data"))
        .env("BERTH_UPSTREAM_URL", "http://127.0.0.1:9")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth");
    let stderr = child.stderr.take().expect("stderr pipe");
    // Kept open while berth runs, so that its logging has a reader.
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("berth is serving"));
    assert!(serving, "berth did not report that it serves");
    let out = health();
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    assert!(
        out.status.success(),
        "berth health: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
