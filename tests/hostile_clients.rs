//! berth against clients that misbehave (issue 22, classes 5 and 10):
//! sockets that never send a byte give their connection slot back after
//! the header-read timeout; header floods (slow, huge, many, over HTTP/1.1
//! and HTTP/2) are cut off without memory growing; and thousands of
//! distinct, large `Accept` values neither grow memory nor multiply
//! upstream requests, since berth keys on the handful of media types it
//! knows. After each, a normal pull works.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::berth::Berth;
use common::bounds::{bounded, normal_pull_works, Rss, HANG_GUARD};
use common::content::{Fixture, DOCKER_MANIFEST, OCI_INDEX};
use common::hostile::Hostile;
use common::http::client;
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether berth closed `socket`: a read ends (EOF or reset) within the
/// hang guard.
async fn closed_by_berth(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // A 408 or 431 before the close is fine.
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read).await.is_ok()
}

async fn status_of(url: &str) -> Result<StatusCode, String> {
    bounded(&format!("GET {url}"), client().get(url).send())
        .await
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_give_their_slots_back_after_the_header_read_timeout() {
    const SLOTS: usize = 4;
    let hostile = Hostile::start().await;
    let extra = format!("[limits]\nmax_connections = {SLOTS}\nheader_read_timeout = \"1s\"\n");
    let mut berth = Berth::start(&extra, &hostile.url()).await;
    let probe = format!("{}/v2/", berth.url());

    let mut silent = Vec::new();
    for _ in 0..SLOTS {
        silent.push(TcpStream::connect(berth.addr()).await.expect("connect"));
    }
    // Every slot is held by a socket that sent nothing...
    assert_eq!(
        status_of(&probe).await,
        Ok(StatusCode::SERVICE_UNAVAILABLE),
        "with {SLOTS} silent sockets holding every slot"
    );
    // ...until berth closes them, and real clients get in again.
    for (n, socket) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_berth(socket).await,
            "silent socket {n} was never closed"
        );
    }
    let mut served = false;
    for _ in 0..100 {
        if status_of(&probe).await == Ok(StatusCode::OK) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "real clients are still refused after the silent sockets closed"
    );
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_cut_off_and_memory_stays_bounded() {
    let hostile = Hostile::start().await;
    let extra = "[limits]\nheader_read_timeout = \"1s\"\n";
    let mut berth = Berth::start(extra, &hostile.url()).await;

    // Slow: a header line every 100 ms, never the end of the headers.
    let mut slow = TcpStream::connect(berth.addr()).await.expect("connect");
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")
        .await
        .expect("request line");
    let drip = async {
        for i in 0.. {
            let line = format!("X-Drip-{i}: {}\r\n", "d".repeat(32));
            if slow.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        tokio::time::timeout(HANG_GUARD, drip).await.is_ok(),
        "a client dripping headers was never cut off"
    );

    // A first round of floods takes memory to what floods cost at most
    // (each of 64 connections may fill hyper's header buffer at once);
    // more rounds must not add to it.
    flood(&berth).await;
    let rss = Rss::now();
    for _ in 0..3 {
        flood(&berth).await;
    }
    rss.assert_within(1.5, "three more rounds of header floods");
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

/// 64 HTTP/1.1 connections each sending 4 MiB of headers, then 256
/// HTTP/2 streams at once on one connection, each with 120 KiB of headers.
async fn flood(berth: &Berth) {
    let floods: Vec<_> = (0..64)
        .map(|i| {
            let addr = berth.addr();
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.expect("connect");
                let _ = socket
                    .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")
                    .await;
                let line = Bytes::from(format!("X-Flood-{i}: {}\r\n", "f".repeat(8190)));
                for _ in 0..512 {
                    if socket.write_all(&line).await.is_err() {
                        break;
                    }
                }
                closed_by_berth(&mut socket).await
            })
        })
        .collect();
    for flood in floods {
        assert!(
            bounded("a header flood", flood).await.expect("join"),
            "a flooding connection was never closed"
        );
    }

    // hyper's client connection itself, so the test sees when berth ends
    // the connection: the h2 client has left a request that was still
    // queued waiting for good after its connection closed (2 runs in 40
    // under load, with reqwest too). Once the connection is gone no
    // answer can come, so the flood is over; a berth that keeps the
    // connection open without answering still fails the bound.
    let stream = TcpStream::connect(berth.addr()).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    let closed = tokio::spawn(connection);
    let big = "h".repeat(60 << 10);
    let url = format!("{}/v2/", berth.url());
    let answers = futures_util::stream::iter(0..256)
        .map(|i| {
            let mut sender = sender.clone();
            let request = http::Request::get(url.as_str())
                .header(format!("x-h2-flood-{i}"), big.as_str())
                .header("x-h2-more", big.as_str())
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("a request");
            async move { sender.send_request(request).await.map(|r| r.status()) }
        })
        .buffer_unordered(64)
        .take_until(closed)
        .collect::<Vec<_>>();
    // Refused (431, a reset stream) or answered: never a hang.
    let answered = bounded("an HTTP/2 header flood", answers).await;
    for status in answered.into_iter().flatten() {
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{status}"
        );
    }
}

/// An `Accept` of about `size` bytes: noise around the known types given.
fn accept_value(n: usize, size: usize, known: &[&str]) -> String {
    let mut value = known.join(", ");
    let mut i = 0;
    while value.len() < size {
        value.push_str(&format!(", application/x-noise-{n}-{i}"));
        i += 1;
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_distinct_large_accepts_neither_grow_memory_nor_multiply_upstream_gets() {
    const REQUESTS: usize = 2000;
    const SIZE: usize = 100 << 10;
    let hostile = Hostile::start().await;
    // A tag served as an index to berth, and as a Docker manifest to a
    // client that cannot read an index: every request below negotiates.
    let index = Fixture::multi_platform("test/accept", "v1");
    let docker = Fixture::docker_image("test/accept", "docker");
    hostile.add_fixture(&index);
    hostile.add_fixture(&docker);
    hostile.add_manifest_variants(
        "test/accept",
        "v1",
        &[
            (OCI_INDEX, index.root.bytes.clone()),
            (DOCKER_MANIFEST, docker.root.bytes.clone()),
        ],
    );
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = format!("{}/v2/test/accept/manifests/v1", berth.url());
    // Two distinct sets of known types, hidden in distinct noise.
    let sets: [&[&str]; 2] = [
        &[DOCKER_MANIFEST],
        &[
            DOCKER_MANIFEST,
            "application/vnd.docker.distribution.manifest.v1+json",
        ],
    ];
    let warm = bounded("the first pull", client().get(&url).send())
        .await
        .expect("an answer");
    assert_eq!(warm.status(), StatusCode::OK);
    let rss = Rss::now();

    let http = client();
    let answers = futures_util::stream::iter(0..REQUESTS)
        .map(|n| {
            let accept = accept_value(n, SIZE, sets[n % sets.len()]);
            let request = http.get(&url).header("accept", accept).send();
            async move {
                let response = request.await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((status, body))
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    for answer in bounded("the Accept flood", answers).await {
        let (status, body) = answer.expect("an answer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, docker.root.bytes,
            "the Docker manifest, as negotiated"
        );
    }
    rss.assert_within(
        2.0,
        &format!("{REQUESTS} distinct {SIZE}-byte Accept values"),
    );
    let gets = hostile.manifest_gets("test/accept", "v1");
    assert!(
        gets <= 1 + sets.len(),
        "{REQUESTS} requests in {} sets of known types cost {gets} upstream GETs",
        sets.len()
    );
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}
