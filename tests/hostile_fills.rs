//! Blob fills against upstreams that never finish (issue 22, class 6): a
//! fill nobody waits for must keep a minimum rate or give its `max_fills`
//! slot back, and a body without `Content-Length` that never ends stops at
//! `max_blob_size` with nothing cached. After each, memory is bounded and a
//! normal pull works.

mod common;

use std::time::Duration;

use common::berth::Berth;
use common::bounds::{bounded, normal_pull_works, Rss, HANG_GUARD};
use common::content::random_bytes;
use common::hostile::{Behaviour, Hostile, SendOutcome};
use common::http::{client, get_digest, oci_error, Transfer};
use common::{blob_file, files_under};
use reqwest::StatusCode;

/// A size no trickle reaches: 10 GiB, as in the issue.
const TEN_GIB: u64 = 10 << 30;

fn blob_url(berth: &Berth, digest: &str) -> String {
    format!("{}/v2/test/fills/blobs/{digest}", berth.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_fills_whose_clients_left_give_their_slots_back() {
    const SLOTS: usize = 4;
    let hostile = Hostile::start().await;
    let trickling: Vec<String> = (0..SLOTS)
        .map(|i| {
            hostile.add_blob(
                random_bytes("trickle", i as u64, 64 << 10),
                Behaviour::Trickle {
                    pause: Duration::from_millis(100),
                    announce: TEN_GIB,
                },
            )
        })
        .collect();
    let fifth = hostile.add_blob(random_bytes("fifth", 1, 1 << 20), Behaviour::Normal);
    // A byte every 100 ms is far under 1 KiB/s: abandoned a second after
    // its client left.
    let extra = format!(
        "[limits]\nmax_fills = {SLOTS}\nunattended_grace = \"1s\"\nmin_unattended_rate = \"1KiB\"\n"
    );
    let mut berth = Berth::start(&extra, &hostile.url()).await;
    let rss = Rss::now();

    // Four clients start the four fills and read their first bytes...
    let mut attached = Vec::new();
    for digest in &trickling {
        let mut response = bounded(
            "a trickling blob's headers",
            client().get(blob_url(&berth, digest)).send(),
        )
        .await
        .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let first = bounded("a trickling blob's first byte", response.chunk()).await;
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        attached.push(response);
    }
    // ...so every slot is taken while they wait, and a fifth miss is refused.
    let refused = bounded(
        "a fifth miss",
        client().get(blob_url(&berth, &fifth)).send(),
    )
    .await
    .expect("an answer");
    let (status, codes) = oci_error(refused).await;
    assert_eq!(
        (status, codes.as_slice()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ["UNAVAILABLE".to_owned()].as_slice()
        ),
        "with every slot taken by an attended fill"
    );

    // The clients leave; their fills are abandoned and let go upstream...
    drop(attached);
    for digest in &trickling {
        let outcomes = hostile.wait_outcomes(digest, 1).await;
        assert_eq!(outcomes, [SendOutcome::Aborted], "{digest}");
    }
    // ...and the fifth miss gets a slot.
    let got = bounded(
        "the fifth miss",
        get_digest(&client(), &blob_url(&berth, &fifth)),
    )
    .await;
    assert_eq!(got.map(|(d, _)| d), Ok(fifth));
    for digest in &trickling {
        assert!(
            !blob_file(berth.data_dir(), digest).exists(),
            "{digest} cached"
        );
    }
    let tmp = berth.data_dir().join("tmp");
    assert!(
        common::eventually(HANG_GUARD, || files_under(&tmp).is_empty()).await,
        "abandoned fills left {:?}",
        files_under(&tmp)
    );
    rss.assert_within(2.0, "four abandoned fills");
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_stops_at_max_blob_size_and_nothing_is_cached() {
    const MAX: u64 = 8 << 20;
    let hostile = Hostile::start().await;
    // The digest of some bytes; the upstream sends endless others.
    let digest = hostile.add_blob(random_bytes("endless", 1, 1024), Behaviour::Endless);
    let too_big = hostile.add_blob(
        random_bytes("announced", 1, 1024),
        Behaviour::Trickle {
            pause: Duration::from_secs(1),
            announce: TEN_GIB,
        },
    );
    let extra = format!("[limits]\nmax_blob_size = \"{}MiB\"\n", MAX >> 20);
    let mut berth = Berth::start(&extra, &hostile.url()).await;
    let rss = Rss::now();

    for attempt in 1..=2 {
        let response = bounded(
            "an endless blob",
            client().get(blob_url(&berth, &digest)).send(),
        )
        .await
        .expect("an answer");
        if response.status() == StatusCode::OK {
            let transfer = bounded("an endless blob's body", Transfer::read(response)).await;
            assert!(
                matches!(transfer, Transfer::Failed { .. }),
                "attempt {attempt}: an endless body must end in a failed transfer, \
                 never a clean one"
            );
        } else {
            let (status, codes) = oci_error(response).await;
            assert_eq!(
                status,
                StatusCode::BAD_GATEWAY,
                "attempt {attempt}: {codes:?}"
            );
        }
        let sent = hostile.wait_endless(attempt).await;
        let last = sent[attempt - 1];
        assert!(
            last <= 2 * MAX,
            "attempt {attempt}: berth read {} MiB of an endless body, max_blob_size {} MiB",
            last >> 20,
            MAX >> 20
        );
    }
    assert!(!blob_file(berth.data_dir(), &digest).exists());

    // An announced size past the limit fails at once, before any body.
    let response = bounded(
        "a blob announced too large",
        client().get(blob_url(&berth, &too_big)).send(),
    )
    .await
    .expect("an answer");
    let (status, codes) = oci_error(response).await;
    assert_eq!(
        (status, codes.as_slice()),
        (
            StatusCode::BAD_GATEWAY,
            ["SIZE_INVALID".to_owned()].as_slice()
        )
    );

    let tmp = berth.data_dir().join("tmp");
    assert!(
        common::eventually(HANG_GUARD, || files_under(&tmp).is_empty()).await,
        "endless fills left {:?}",
        files_under(&tmp)
    );
    rss.assert_within(2.0, "endless bodies");
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}
