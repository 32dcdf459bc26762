//! Checks of the cluster harness itself, with no berth involved: the
//! Garage it starts (one node, and three with replication factor 3) is a
//! real S3 store that takes what berth's shared tier will send, its outages
//! are real, its request counters count; the Redis it starts answers,
//! refuses connections once stopped, and comes back; the hostile
//! upstream's throttled body is paced and says when it ended.
//!
//! If these fail, every shared-tier and cluster test built on the harness
//! means nothing.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::signer::Signer as _;
use object_store::{ObjectStore as _, WriteMultipart};

use common::content::random_bytes;
use common::garage::{Garage, GarageCluster};
use common::redis::{Redis, RedisOptions};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_node_takes_a_put_a_ranged_get_and_a_multipart_upload() {
    let started = Instant::now();
    let garage = Garage::start();
    eprintln!("one Garage node ready in {:?}", started.elapsed());
    let store = garage.store();

    let small = random_bytes("garage-small", 0, MIB);
    let small_key = "harness/blobs/small";
    garage.access().put(small_key, small.clone()).await;

    // A ranged GET, with its status visible: a URL signed by the key.
    let url = store
        .signed_url(
            http::Method::GET,
            &ObjectPath::from(small_key),
            Duration::from_secs(60),
        )
        .await
        .expect("sign a GET URL");
    let response = common::http::client()
        .get(url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("ranged GET");
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 1000-1999/{}", small.len()).as_str()
    );
    let part = response.bytes().await.expect("the range's body");
    assert_eq!(part, small.slice(1000..2000));
    // And through object_store's own ranged read.
    let tail = store
        .get_range(&ObjectPath::from(small_key), (MIB as u64 - 10)..MIB as u64)
        .await
        .expect("get_range");
    assert_eq!(tail, small.slice(MIB - 10..));

    // 12 MiB in 5 MiB parts: three UploadParts.
    let big = random_bytes("garage-big", 0, 12 * MIB);
    let big_key = "harness/blobs/big";
    let upload = store
        .put_multipart(&ObjectPath::from(big_key))
        .await
        .expect("start a multipart upload");
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * MIB);
    writer.put(big.clone());
    writer
        .finish()
        .await
        .expect("complete the multipart upload");

    assert_eq!(garage.read(big_key).await, Some(big));
    assert_eq!(garage.read(small_key).await, Some(small));
    assert_eq!(garage.read("harness/blobs/none").await, None);
    assert_eq!(
        garage.keys("harness/blobs").await,
        vec![big_key.to_owned(), small_key.to_owned()]
    );
    assert!(garage.keys("harness/other").await.is_empty());

    // The counters count: the log, request by request...
    let requests = garage.s3_requests();
    let to_big = |method: &str, query: &str| {
        requests
            .iter()
            .filter(|r| {
                r.method == method
                    && r.object_key().as_deref() == Some(big_key)
                    && r.query.contains(query)
            })
            .count()
    };
    assert_eq!(to_big("POST", "uploads"), 1, "{requests:#?}");
    assert_eq!(to_big("PUT", "partNumber="), 3, "{requests:#?}");
    assert_eq!(to_big("POST", "uploadId="), 1, "{requests:#?}");
    // Every request signed by the key: in its header, or (the presigned
    // ranged GET) in its query, which Garage does not name in the log.
    let key_id = garage.access_key_id();
    let signed = |r: &&common::garage::S3Request| {
        r.key_id.as_deref() == Some(key_id)
            || r.query.contains(&format!("X-Amz-Credential={key_id}"))
    };
    assert!(requests.iter().all(|r| signed(&r)), "{requests:#?}");
    // ...and the metrics, by operation.
    let operations = garage.s3_operations();
    let op = |name: &str| operations.get(name).copied().unwrap_or(0);
    assert_eq!(op("CreateMultipartUpload"), 1, "{operations:?}");
    assert_eq!(op("UploadPart"), 3, "{operations:?}");
    assert_eq!(op("CompleteMultipartUpload"), 1, "{operations:?}");
    assert_eq!(op("PutObject"), 1, "{operations:?}");
    let total: u64 = operations.values().sum();
    assert_eq!(
        total as usize,
        requests.len(),
        "{operations:?}\n{requests:#?}"
    );

    // A wrong secret is refused: the key is really checked.
    let mut forged = garage.access().clone();
    forged.secret_access_key = "0".repeat(64);
    assert!(forged.try_read(small_key).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_garage_node_refuses_connections_and_restarts_with_its_data() {
    let mut garage = Garage::start();
    let bytes = random_bytes("garage-outage", 0, 64 * 1024);
    garage.access().put("outage/one", bytes.clone()).await;
    let addr = garage
        .endpoint()
        .strip_prefix("http://")
        .expect("an http endpoint")
        .to_owned();

    garage.stop();
    assert!(!garage.is_running());
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still accepts");
    assert!(garage.access().try_read("outage/one").await.is_err());

    let started = Instant::now();
    garage.restart();
    eprintln!("Garage node restarted in {:?}", started.elapsed());
    assert_eq!(garage.read("outage/one").await, Some(bytes.clone()));

    // A SIGKILL loses nothing that was acknowledged either.
    garage.access().put("outage/two", bytes.clone()).await;
    garage.kill();
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still accepts");
    garage.restart();
    assert_eq!(garage.read("outage/two").await, Some(bytes));
    // The log is kept across restarts: every request of this test is there.
    let gets = garage
        .s3_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.object_key().is_some())
        .count();
    assert_eq!(gets, 2, "{:#?}", garage.s3_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_garage_cluster_serves_gets_and_puts_with_one_node_down() {
    let started = Instant::now();
    let mut cluster = GarageCluster::start();
    eprintln!("three Garage nodes ready in {:?}", started.elapsed());
    assert_eq!(cluster.len(), 3);

    let one = random_bytes("cluster", 1, 2 * MIB);
    cluster.access(0).put("cluster/one", one.clone()).await;
    // Replicated: every node serves it.
    for i in 0..3 {
        assert_eq!(
            cluster.access(i).read("cluster/one").await,
            Some(one.clone())
        );
    }

    cluster.kill_node(2);
    assert!(cluster.access(2).try_read("cluster/one").await.is_err());
    // Quorum 2 of 3: reads and writes through the others still succeed.
    assert_eq!(
        cluster.access(1).read("cluster/one").await,
        Some(one.clone())
    );
    let two = random_bytes("cluster", 2, 6 * MIB);
    let store = cluster.access(0).store();
    let upload = store
        .put_multipart(&ObjectPath::from("cluster/two"))
        .await
        .expect("start a multipart upload with a node down");
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * MIB);
    writer.put(two.clone());
    writer
        .finish()
        .await
        .expect("complete a multipart upload with a node down");
    assert_eq!(
        cluster.access(1).read("cluster/two").await,
        Some(two.clone())
    );
    assert_eq!(
        cluster.keys("cluster").await,
        vec!["cluster/one".to_owned(), "cluster/two".to_owned()]
    );

    let restarted = Instant::now();
    cluster.restart_node(2);
    eprintln!(
        "Garage node 2 back, cluster fully up, in {:?}",
        restarted.elapsed()
    );
    assert_eq!(cluster.access(2).read("cluster/two").await, Some(two));
    // Each node counts the requests it received.
    let node2_gets = cluster
        .s3_requests_to(2)
        .iter()
        .filter(|r| r.method == "GET" && r.object_key().is_some())
        .count();
    assert_eq!(node2_gets, 2, "{:#?}", cluster.s3_requests_to(2));
}

#[test]
fn redis_answers_refuses_once_stopped_and_comes_back_empty() {
    let started = Instant::now();
    let mut redis = Redis::start_with_password("harness-secret");
    eprintln!("Redis ready in {:?}", started.elapsed());
    assert!(redis
        .url()
        .starts_with("redis://:harness-secret@127.0.0.1:"));

    assert_eq!(redis.cli(&["SET", "berth:t", "a value"]), "OK");
    assert_eq!(redis.get("berth:t").as_deref(), Some("a value"));
    assert_eq!(
        redis.cli(&["SET", "berth:lease", "me", "NX", "PX", "60000"]),
        "OK"
    );
    assert_eq!(
        redis.cli(&["SET", "berth:lease", "you", "NX", "PX", "60000"]),
        ""
    );
    assert!(redis.pttl("berth:lease").is_some_and(|ms| ms <= 60_000));
    assert_eq!(redis.keys("berth:*"), vec!["berth:lease", "berth:t"]);
    assert_eq!(redis.get("berth:none"), None);
    assert!(redis.try_cli(&["NOSUCHCOMMAND"]).is_err());

    // The password is required.
    let anonymous = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "GET", "berth:t"])
        .env_remove("REDISCLI_AUTH")
        .output()
        .expect("run redis-cli");
    assert!(String::from_utf8_lossy(&anonymous.stdout).starts_with("NOAUTH"));

    redis.stop();
    let refused = TcpStream::connect(redis.addr()).expect_err("a stopped Redis accepts");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(redis.try_cli(&["PING"]).is_err());

    let restarted = Instant::now();
    redis.restart();
    eprintln!("Redis restarted in {:?}", restarted.elapsed());
    assert_eq!(redis.cli(&["PING"]), "PONG");
    // No persistence: an outage forgets everything.
    assert_eq!(redis.get("berth:t"), None);
}

#[test]
fn a_persistent_redis_keeps_its_data_across_a_kill() {
    let mut redis = Redis::start_with(RedisOptions {
        persistent: true,
        ..RedisOptions::default()
    });
    assert_eq!(redis.url(), format!("redis://{}", redis.addr()));
    assert_eq!(redis.cli(&["SET", "berth:kept", "yes"]), "OK");
    redis.kill();
    assert!(TcpStream::connect(redis.addr()).is_err());
    redis.restart();
    assert_eq!(redis.get("berth:kept").as_deref(), Some("yes"));
    assert!(redis.commands_processed() > 0);
    // An open Redis on its own port beside it.
    let other = Redis::start();
    assert_ne!(other.port(), redis.port());
    assert_eq!(other.get("berth:kept"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_upstream_body_is_paced_and_records_when_it_ended() {
    use common::hostile::{Behaviour, Hostile, SendOutcome};
    const SIZE: usize = 4 * MIB;
    const RATE: u64 = 8 * MIB as u64;
    let hostile = Hostile::start().await;
    let bytes = random_bytes("throttled", 0, SIZE);
    let digest = hostile.add_blob(
        bytes.clone(),
        Behaviour::Throttled {
            bytes_per_second: RATE,
        },
    );
    let started = Instant::now();
    let mut response = common::http::client()
        .get(format!("{}/v2/any/blobs/{digest}", hostile.url()))
        .send()
        .await
        .expect("GET the throttled blob");
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    let mut first_byte = None;
    while let Some(chunk) = response.chunk().await.expect("the throttled body") {
        first_byte.get_or_insert_with(Instant::now);
        body.extend_from_slice(&chunk);
    }
    let done = Instant::now();
    assert!(body == bytes, "the throttled body is not the blob's bytes");
    // Paced: the last piece is not due before SIZE / RATE minus one piece
    // (a lower bound the throttle guarantees, whatever the machine's load).
    let due = Duration::from_secs_f64((SIZE - 64 * 1024) as f64 / RATE as f64);
    assert!(
        done.duration_since(started) >= due,
        "{SIZE} bytes at {RATE} B/s came in {:?}",
        done.duration_since(started)
    );
    // The recorded end comes after the client's first byte (it is taken
    // once the last piece is handed over, so it may trail the client's
    // last byte by a moment: an ordering against first bytes only).
    let sends = hostile.wait_outcomes(&digest, 1).await;
    assert_eq!(sends, vec![SendOutcome::Completed]);
    let [(SendOutcome::Completed, ended)] = hostile.sends_ended(&digest)[..] else {
        panic!("one completed send: {:?}", hostile.sends_ended(&digest));
    };
    let first_byte = first_byte.expect("a first byte");
    assert!(
        first_byte < ended,
        "the send ended before the first byte came"
    );
}
