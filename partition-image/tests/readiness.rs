//! `/readyz` on real partition processes (issue 15): a pool awaiting its ceremony is ready
//! (the ceremony must reach it), and a partition of an activated pool is ready only once it
//! has caught up and holds the security domain — what the second `keystead-bench load` run of
//! `scripts/bench.sh` on a resumed pool needs (it failed with 503 PartitionSealed).

mod cluster;
mod common;

use cluster::{Cluster, N};
use reqwest::StatusCode;

/// `/readyz` of partition `i`: status and body.
async fn readyz(c: &Cluster, i: usize) -> (StatusCode, String) {
    match c.http.get(format!("{}/readyz", c.url(i))).send().await {
        Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_partition_is_ready_only_once_it_holds_the_domain() {
    let c = Cluster::start().await;
    // Not activated: every partition is ready, so that the download can reach it.
    for i in 0..N {
        c.until("a provisioned partition is ready", 60, || c.ready(i))
            .await;
    }
    let status = c.status(0).await.expect("status");
    assert_eq!(status["activation"], "Provisioned", "{status}");
    c.activate().await;
    c.create(0, "k").await.expect("create");

    // The whole pool stops and resumes (the benchmark's second run on the same directory).
    for i in 0..N {
        c.kill(i);
    }
    for i in 0..N {
        c.spawn(i);
    }
    for i in 0..N {
        c.until("the resumed partition is ready", 90, || c.ready(i))
            .await;
        // Ready means: the log is applied and the domain is held — at once, no retry.
        let status = c.status(i).await.expect("status");
        assert_eq!(status["activation"], "Activated", "p{i}: {status}");
        assert_eq!(status["domainLoaded"], true, "p{i}: {status}");
        assert_eq!(c.sign(i, "k").await, StatusCode::OK, "p{i}");
    }
}

/// Every partition restarted without the domain (memory-only sealing): the pool is activated
/// but no partition can serve a key, so none is ready, and each says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_an_activated_pool_without_the_domain_are_not_ready() {
    let mut c = Cluster::start().await;
    c.activate().await;
    c.restart_all_without_domain();
    // Once a partition has caught up (its status says activated), it names the domain.
    for i in 0..N {
        c.until("the partition reports the activated pool", 60, || async {
            let activated = c
                .status(i)
                .await
                .is_some_and(|v| v["activation"] == "Activated");
            activated && readyz(&c, i).await.1.contains("security domain")
        })
        .await;
        let (s, body) = readyz(&c, i).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "p{i}: {body}");
        assert!(body.contains("does not hold its security domain"), "{body}");
    }
}
