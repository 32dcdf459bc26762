//! berth as an operator runs it: TLS (skopeo over HTTPS with a test CA,
//! HTTP/2 by ALPN, client certificates), h2c, pull authentication, limits
//! that answer 503, `/metrics`, `/healthz` and `/readyz`, JSON logs, and a
//! SIGTERM that lets a large transfer finish.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::free_port;
use common::hostile::{Behaviour, Hostile};
use common::http::{client, get_digest, oci_error};
use common::registry::Registry;
use common::skopeo::{copy_all_with, verify_dir};
use common::tls::TestPki;
use sha2::Digest as _;

fn tls_extra(pki: &TestPki, client_ca: bool) -> String {
    let mut extra = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.server_cert().display(),
        pki.server_key().display()
    );
    if client_ca {
        extra.push_str(&format!(
            "client_ca_file = \"{}\"\n",
            pki.ca_cert().display()
        ));
    }
    extra
}

/// A reqwest client trusting the test CA, optionally with the client cert.
fn tls_client(pki: &TestPki, with_identity: bool) -> reqwest::Client {
    let ca = std::fs::read(pki.ca_cert()).expect("read ca.pem");
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .timeout(Duration::from_secs(60))
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"));
    if with_identity {
        let mut pem = std::fs::read(pki.client_cert()).expect("client.pem");
        pem.extend(std::fs::read(pki.client_key()).expect("client.key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("TLS client")
}

/// The directory skopeo reads for a registry's TLS: `ca.crt`, and the
/// client certificate as `client.cert` / `client.key` when given.
fn skopeo_cert_dir(pki: &TestPki, dir: &Path, with_identity: bool) {
    std::fs::create_dir_all(dir).expect("cert dir");
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).expect("ca.crt");
    if with_identity {
        std::fs::copy(pki.client_cert(), dir.join("client.cert")).expect("client.cert");
        std::fs::copy(pki.client_key(), dir.join("client.key")).expect("client.key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_over_tls_and_http2_is_negotiated() {
    let pki = TestPki::generate();
    let registry = Registry::start();
    let image = Fixture::multi_platform("test/secure", "v1");
    Pusher::to(&registry).push(&image).await.expect("push");
    let mut berth = Berth::start(&tls_extra(&pki, false), &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir");
    let certs = out.path().join("certs");
    skopeo_cert_dir(&pki, &certs, false);

    let dest = out.path().join("copy");
    let source = format!("{}/{}", berth.host(), image.reference());
    let cert_dir = format!("--src-cert-dir={}", certs.display());
    copy_all_with(&source, &dest, &[&cert_dir, "--src-no-creds"])
        .await
        .unwrap_or_else(|e| panic!("skopeo over TLS: {e}"));
    verify_dir(&dest, &image).unwrap_or_else(|e| panic!("{e}"));

    let resp = tls_client(&pki, false)
        .get(format!("https://{}/v2/", berth.host()))
        .send()
        .await
        .expect("GET /v2/ over TLS");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN chose h2");

    let plain = client()
        .get(format!("http://{}/v2/", berth.host()))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP on the TLS port must not be served"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_required_when_a_client_ca_is_set() {
    let pki = TestPki::generate();
    let registry = Registry::start();
    let image = Fixture::oci_image("test/mtls", "v1");
    Pusher::to(&registry).push(&image).await.expect("push");
    let mut berth = Berth::start(&tls_extra(&pki, true), &registry.url()).await;
    let url = format!("https://{}/v2/", berth.host());

    let refused = tls_client(&pki, false).get(&url).send().await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let resp = tls_client(&pki, true)
        .get(&url)
        .send()
        .await
        .expect("with a cert");
    assert_eq!(resp.status(), 200);

    let out = tempfile::tempdir().expect("temp dir");
    let source = format!("{}/{}", berth.host(), image.reference());
    for (with_identity, should_work) in [(false, false), (true, true)] {
        let certs = out.path().join(format!("certs-{with_identity}"));
        skopeo_cert_dir(&pki, &certs, with_identity);
        let dest = out.path().join(format!("copy-{with_identity}"));
        let cert_dir = format!("--src-cert-dir={}", certs.display());
        let result = copy_all_with(&source, &dest, &[&cert_dir, "--src-no-creds"]).await;
        assert_eq!(
            result.is_ok(),
            should_work,
            "client cert {with_identity}: {result:?}"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_speak_h2c() {
    let registry = Registry::start();
    let mut berth = Berth::start("", &registry.url()).await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    let resp = h2c
        .get(format!("{}/v2/", berth.url()))
        .send()
        .await
        .expect("h2c GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_need_credentials_when_auth_is_configured() {
    let registry = Registry::start();
    let image = Fixture::oci_image("test/private", "v1");
    Pusher::to(&registry).push(&image).await.expect("push");
    let dir = tempfile::tempdir().expect("temp dir");
    let htpasswd = dir.path().join("htpasswd");
    let line = std::process::Command::new("htpasswd")
        .args(["-Bbn", "puller", "pull-secret"])
        .output()
        .expect("run htpasswd (apache2-utils)");
    std::fs::write(&htpasswd, &line.stdout).expect("write htpasswd");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ci-token-1\n").expect("write tokens");
    let extra = format!(
        "[auth]\nhtpasswd_file = \"{}\"\ntokens_file = \"{}\"\n",
        htpasswd.display(),
        tokens.display()
    );
    let mut berth = Berth::start(&extra, &registry.url()).await;

    let resp = client()
        .get(format!("{}/v2/", berth.url()))
        .send()
        .await
        .expect("GET");
    let challenge = common::http::header(&resp, "www-authenticate").to_owned();
    let (status, codes) = oci_error(resp).await;
    assert_eq!(status, 401);
    assert_eq!(codes, ["UNAUTHORIZED"]);
    assert_eq!(challenge, "Basic realm=\"berth\"");
    let bearer = client()
        .get(format!("{}/v2/", berth.url()))
        .bearer_auth("ci-token-1")
        .send()
        .await
        .expect("GET with a token");
    assert_eq!(bearer.status(), 200);

    let source = format!("{}/{}", berth.host(), image.reference());
    let denied = copy_all_with(
        &source,
        &dir.path().join("denied"),
        &["--src-tls-verify=false", "--src-creds=puller:wrong"],
    )
    .await;
    assert!(denied.is_err(), "a wrong password pulls nothing");
    let dest = dir.path().join("allowed");
    copy_all_with(
        &source,
        &dest,
        &["--src-tls-verify=false", "--src-creds=puller:pull-secret"],
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo with credentials: {e}"));
    verify_dir(&dest, &image).unwrap_or_else(|e| panic!("{e}"));
    // The admin endpoints stay open: probes carry no credentials.
    let health = client()
        .get(format!("{}/healthz", berth.url()))
        .send()
        .await;
    assert_eq!(health.expect("healthz").status(), 200);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_503_instead_of_hanging() {
    let hostile = Hostile::start().await;
    let held = hostile.add_blob(
        Bytes::from(vec![7u8; 200_000]),
        Behaviour::Gated { at: 1000 },
    );
    let other = hostile.add_blob(Bytes::from(vec![8u8; 200_000]), Behaviour::Normal);
    let mut berth = Berth::start(
        "[limits]\nmax_fills = 1\nmax_connections = 2\n",
        &hostile.url(),
    )
    .await;
    let blob = |d: &str| format!("{}/v2/test/limits/blobs/{d}", berth.url());

    // One fill running (held upstream): a second miss is refused, not queued.
    let held_url = blob(&held);
    let first = tokio::spawn(async move { get_digest(&client(), &held_url).await });
    for _ in 0..400 {
        if hostile.blob_gets(&held) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hostile.blob_gets(&held), 1, "the held fill started");
    let resp = client()
        .get(blob(&other))
        .send()
        .await
        .expect("second miss");
    let (status, codes) = oci_error(resp).await;
    assert_eq!(
        hostile.blob_gets(&other),
        0,
        "a refused fill asks nothing upstream"
    );
    assert_eq!(
        (status.as_u16(), codes),
        (503, vec!["UNAVAILABLE".to_owned()])
    );
    hostile.release(&held);
    let (digest, _) = first.await.expect("join").expect("the held fill completes");
    assert_eq!(digest, held);

    // Two connections held open; the third gets a 503 and is closed. Each
    // held one is proven to have been admitted (a 200 on it), since the
    // connections of the requests above may still be closing server-side.
    let mut open = Vec::new();
    while open.len() < 2 {
        open.push(admitted_connection(berth.addr()).await);
    }
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let resp = fresh
        .get(format!("{}/v2/", berth.url()))
        .send()
        .await
        .expect("third");
    let (status, codes) = oci_error(resp).await;
    assert_eq!(
        (status.as_u16(), codes),
        (503, vec!["UNAVAILABLE".to_owned()])
    );
    drop(open);
    berth.stop().await;
}

/// A raw keep-alive connection on which berth answered `GET /v2/` with 200,
/// i.e. one that holds a connection permit; retried while earlier
/// connections are still being released.
async fn admitted_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
            .await
            .expect("write request");
        let mut head = vec![0u8; 1024];
        let n = stream.read(&mut head).await.expect("read answer");
        if head[..n].starts_with(b"HTTP/1.1 200") {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no connection was admitted within 4 s");
}

/// Every sample line of a Prometheus/OpenMetrics text exposition, as
/// (name with labels, value); panics on a line that is neither a comment
/// nor a sample.
fn samples(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line}: {e}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn sample(all: &[(String, f64)], series: &str) -> f64 {
    all.iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_from_a_miss_to_a_hit() {
    let registry = Registry::start();
    let image = Fixture::big_image("test/counted", "v1", 300_000);
    Pusher::to(&registry).push(&image).await.expect("push");
    let admin_port = free_port();
    let mut berth = Berth::start(
        &format!("admin_listen = \"127.0.0.1:{admin_port}\"\n"),
        &registry.url(),
    )
    .await;
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    let scrape = || async {
        let resp = client().get(&metrics_url).send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        samples(&resp.text().await.expect("metrics body"))
    };
    let layer = image.largest_blob();
    let url = format!("{}/v2/{}/blobs/{}", berth.url(), image.repo, layer.digest);
    for _ in 0..2 {
        let (digest, _) = get_digest(&client(), &url).await.expect("pull");
        assert_eq!(digest, layer.digest);
    }
    let after = scrape().await;
    let blob = |outcome: &str| {
        sample(
            &after,
            &format!("berth_cache_requests_total{{kind=\"blob\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(
        (blob("miss"), blob("hit")),
        (1.0, 1.0),
        "one miss, then a hit"
    );
    let len = layer.bytes.len() as f64;
    assert_eq!(
        sample(&after, "berth_served_bytes_total{source=\"upstream\"}"),
        len
    );
    assert_eq!(
        sample(&after, "berth_served_bytes_total{source=\"cache\"}"),
        len
    );
    assert!(
        sample(
            &after,
            "berth_upstream_requests_total{upstream=\"registry.test\",status=\"200\"}"
        ) >= 1.0
    );
    // The gauge counts committed bytes; a fill commits (fsync, rename,
    // record) after its clients have their verified bytes, so the commit
    // may still be under way when the second pull ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut used = sample(&after, "berth_disk_used_bytes");
    while used < len && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        used = sample(&scrape().await, "berth_disk_used_bytes");
    }
    assert!(
        used >= len,
        "disk used {used} after the commit of {len} bytes"
    );
    assert!(
        sample(
            &after,
            "berth_http_requests_total{route=\"blob\",status=\"200\"}"
        ) >= 2.0
    );

    // Admin endpoints live on the admin listener only.
    for path in ["/healthz", "/readyz"] {
        let resp = client()
            .get(format!("http://127.0.0.1:{admin_port}{path}"))
            .send()
            .await
            .expect("probe");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let ready: serde_json::Value = client()
        .get(format!("http://127.0.0.1:{admin_port}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("readyz JSON");
    assert_eq!(ready["store"], "ok");
    let on_main = client()
        .get(format!("{}/metrics", berth.url()))
        .send()
        .await;
    assert_eq!(on_main.expect("main /metrics").status(), 404);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_large_transfer_finish_and_logs_are_json() {
    let mut registry = Registry::start();
    let image = Fixture::big_image("test/draining", "v1", 48 << 20);
    Pusher::to(&registry).push(&image).await.expect("push");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\n",
            dir.path().join("data").display(),
            registry.url()
        ),
    )
    .expect("write config");
    let mut child = common::berth::command()
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let serving = lines_rx
        .iter()
        .take(50)
        .any(|l| l.contains("berth is serving"));
    assert!(serving, "berth did not report that it serves");

    let layer = image.largest_blob();
    let url = format!(
        "http://127.0.0.1:{port}/v2/{}/blobs/{}",
        image.repo, layer.digest
    );
    let mut resp = client().get(&url).send().await.expect("GET the layer");
    assert_eq!(resp.status(), 200);
    let mut hasher = sha2::Sha256::new();
    let first = resp
        .chunk()
        .await
        .expect("first chunk")
        .expect("some bytes");
    hasher.update(&first);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = first.len();
    while let Some(chunk) = resp.chunk().await.expect("the transfer continues") {
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, layer.bytes.len());
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        layer.digest
    );
    let status = child.wait().expect("wait for berth");
    assert_eq!(status.code(), Some(0));

    let logs: Vec<serde_json::Value> = lines_rx
        .try_iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let path = format!("/v2/{}/blobs/{}", image.repo, layer.digest);
    let request = logs
        .iter()
        .find(|l| l["message"] == "request" && l["path"].as_str() == Some(path.as_str()))
        .unwrap_or_else(|| panic!("no request line for the layer in {logs:#?}"));
    assert_eq!(request["status"], 200);
    assert_eq!(request["cache"], "miss");
    assert_eq!(request["upstream"], "registry.test");
    // Written when the body ended: what the client got, and the whole
    // transfer's duration, which spans the 300 ms pause above.
    assert_eq!(request["bytes"], layer.bytes.len());
    assert_eq!(request["body"], "complete");
    assert!(request["elapsed_ms"].as_u64() >= Some(300), "{request}");

    // After the restart the layer is whole in the cache, upstream or not.
    registry.stop();
    let check = common::berth::command()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .expect("berth check");
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains(" 0 bad"));
    let stored = common::blob_file(&dir.path().join("data"), &layer.digest);
    assert!(stored.exists(), "the drained fill was committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_dropping_connections() {
    let old = TestPki::generate();
    let new = TestPki::generate();
    let live = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    std::fs::copy(old.server_cert(), &cert).expect("install the old cert");
    std::fs::copy(old.server_key(), &key).expect("install the old key");
    let registry = Registry::start();
    let extra = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut berth = Berth::start(&extra, &registry.url()).await;
    let url = format!("https://{}/v2/", berth.host());
    let old_client = tls_client(&old, false);
    let resp = old_client.get(&url).send().await.expect("old certificate");
    assert_eq!(resp.status(), 200);

    // A renewal writes the key and the certificate in place.
    std::fs::copy(new.server_key(), &key).expect("renew the key");
    std::fs::copy(new.server_cert(), &cert).expect("renew the cert");
    let new_client = tls_client(&new, false);
    let mut renewed = false;
    for _ in 0..100 {
        if new_client.get(&url).send().await.is_ok() {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the renewed certificate was never served");
    // The connection made before the renewal still works.
    let again = old_client
        .get(&url)
        .send()
        .await
        .expect("the old connection");
    assert_eq!(again.status(), 200);
    berth.stop().await;
}
