//! The peer endpoint, as another replica and as anyone else sees it: it
//! answers only requests that carry the cluster's secret (401 otherwise,
//! a wrong secret included), serves a blob the replica holds whole or from
//! a byte on (`Range: bytes=N-`, the body starting where `Berth-Offset`
//! says), every byte right; and the clients' listener never serves it.

use reqwest::StatusCode;

use crate::common::content::random_bytes;
use crate::common::hostile::{Behaviour, Hostile};
use crate::common::http::{client, Reply};
use crate::common::sha256_digest;
use crate::support::{pull_image_blob, Cluster, Options};

const SIZE: usize = 3 * 1024 * 1024 + 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_endpoint_serves_only_the_cluster_and_only_on_its_own_listener() {
    let hostile = Hostile::start().await;
    let bytes = random_bytes("cluster-peer", 0, SIZE);
    let digest = hostile.add_blob(bytes.clone(), Behaviour::Normal);
    let cluster = Cluster::start(&hostile.url(), Options::default()).await;
    // Replica 0 holds the blob.
    pull_image_blob(&cluster.url(0), "test/peer", &digest, SIZE).await;

    let http = client();
    let peer_url = format!("http://{}/peer/v1/blobs/{digest}", cluster.peer(0));
    let bearer = format!("Bearer {}", cluster.peer_secret);

    let anonymous = Reply::of(http.get(&peer_url)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "no secret");
    let wrong = Reply::of(
        http.get(&peer_url)
            .header("authorization", format!("Bearer {}", "0".repeat(48))),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "a wrong secret");
    assert!(
        !wrong.body.windows(4).any(|w| w == &bytes[..4]),
        "a refusal carries none of the blob"
    );

    let whole = Reply::of(http.get(&peer_url).header("authorization", &bearer)).await;
    assert_eq!(whole.status, StatusCode::OK, "with the secret");
    assert_eq!(sha256_digest(&whole.body), digest, "the peer's body");

    let from = 1_000_003;
    let ranged = Reply::of(
        http.get(&peer_url)
            .header("authorization", &bearer)
            .header("range", format!("bytes={from}-")),
    )
    .await;
    assert!(
        ranged.status.is_success(),
        "a ranged peer GET: {}",
        ranged.status
    );
    let offset: usize = ranged
        .header("berth-offset")
        .parse()
        .unwrap_or_else(|e| panic!("Berth-Offset {:?}: {e}", ranged.header("berth-offset")));
    assert!(
        offset <= from,
        "the body starts at {offset}, past the {from} asked for"
    );
    assert!(
        ranged.body == bytes.slice(offset..),
        "the ranged body is not the blob from byte {offset}"
    );

    // The clients' listener has no peer endpoint, secret or not.
    let on_client_listener = format!("{}/peer/v1/blobs/{digest}", cluster.url(0));
    let refused = Reply::of(
        http.get(&on_client_listener)
            .header("authorization", &bearer),
    )
    .await;
    assert_ne!(
        refused.status,
        StatusCode::OK,
        "/peer on the clients' listener"
    );
    assert!(
        refused.body != bytes,
        "the clients' listener served the blob under /peer"
    );
}
