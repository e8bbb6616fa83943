//! Region replication on real processes (docs/regions.md): pool A (three `serve` processes)
//! and pool B, a replica region of A (three more, with a CA of their own), as
//! `keystead-partition local --extend` runs them.
//!
//! - a key created in A is served by B (replication lag measured and printed); a write sent
//!   to B lands in A and is readable in B at once; a signature made in B verifies with A's
//!   public key; lag is reported in the status and the metrics;
//! - SIGKILL of every partition of A: B keeps serving reads and crypto and refuses writes
//!   with a 503 Key Vault error naming the primary and how to promote; failover then;
//! - planned switchover under continuous writes loses nothing; the old primary follows;
//! - with three regions, the demotion waits until every region applied its last index, and
//!   the third region follows the new primary by itself;
//! - after a failover the returning old primary is fenced, lists its lost writes, follows;
//! - after a failover a third region is re-pointed to the promoted region: in place when it
//!   had applied what that region had, re-seeded with its lost writes listed when ahead;
//! - with a write lease, a primary no region polls refuses writes (reads and crypto go on)
//!   and resumes when a region polls again; a failover waits the lease out;
//! - a region joining after A's log was compacted catches up from a streamed snapshot;
//! - a pool whose CA A does not accept cannot obtain the domain (refused and audited); named,
//!   it obtains it sealed to its transfer key; removed, it is refused on its open connection.

mod cluster;
mod common;

use cluster::{Cluster, N};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Poll `cond` until it holds; how long that took (fails after `secs`).
async fn time_until<F, Fut>(what: &str, secs: u64, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// The end of every partition's log (on a failure).
fn dump_logs(pools: &[&Cluster]) {
    for c in pools {
        for (i, cfg) in c.configs.iter().enumerate() {
            eprintln!("== {}\n{}", cfg.display(), c.log_tail(i, 40));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Promote region `c` through partition `i` with `body`; it is the primary of epoch 2.
async fn promote(c: &Cluster, i: usize, body: Value) {
    let (s, v) = c
        .call(i, Method::POST, "/admin/regions/promote", Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["role"].as_str(), v["epoch"].as_u64()),
        (Some("Primary"), Some(2)),
        "{v}"
    );
}

/// A primary activated and a replica region `west` of it that has joined.
async fn two_regions() -> (Cluster, Cluster) {
    Cluster::primary_and_replica().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_region_serves_the_primarys_keys_forwards_its_writes_and_signs_with_the_same_keys()
 {
    let (a, b) = two_regions().await;

    // Keys created in A are served by B: the lag, from A's answer to B serving the key.
    let mut lags = Vec::new();
    for n in 0..20 {
        let name = format!("k{n}");
        a.create(n % N, &name).await.expect("create in A");
        let b_partition = (n + 1) % N;
        lags.push(
            time_until("B serves a key created in A", 30, || {
                b.has_key(b_partition, &name)
            })
            .await,
        );
    }
    lags.sort();
    println!(
        "replication lag A -> B (create acknowledged in A until served by B), 20 keys: p50 {:.1} ms, max {:.1} ms",
        ms(lags[lags.len() / 2]),
        ms(lags[lags.len() - 1])
    );

    // A write sent to B lands in A and is readable in B at once (read-your-writes).
    for i in 0..N {
        let name = format!("from-b{i}");
        let started = Instant::now();
        let created = b.create(i, &name).await.expect("a write sent to B");
        println!(
            "write through B partition {i} (forwarded to A, applied in B): {:.1} ms",
            ms(started.elapsed())
        );
        assert!(
            b.has_key(i, &name).await,
            "B partition {i} reads its own write at once"
        );
        let (s, v) = a.call(0, Method::GET, &format!("/keys/{name}"), None).await;
        assert_eq!(s, StatusCode::OK, "the write landed in A: {v}");
        assert_eq!(
            v["key"]["x"], created["key"]["x"],
            "the same key in both regions"
        );
    }

    // A signature made in B verifies with A's public key.
    let message = b"signed in region west";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
    let (s, sig) = b
        .call(
            2,
            Method::POST,
            "/keys/k0/sign",
            Some(json!({"alg": "ES256", "value": keystead_core::b64::encode_url(digest.as_ref())})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{sig}");
    let sig = keystead_core::b64::decode_url(sig["value"].as_str().unwrap()).unwrap();
    let (s, key) = a.call(1, Method::GET, "/keys/k0", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut point = vec![4u8];
    for c in ["x", "y"] {
        point.extend(keystead_core::b64::decode_url(key["key"][c].as_str().unwrap()).unwrap());
    }
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &point,
    )
    .verify(message, &sig)
    .expect("B's signature verifies with A's public key");

    // Lag and role in the status of both regions, and in B's metrics.
    let r = b.region(0).await.unwrap();
    assert_eq!(r["role"], "Replica", "{r}");
    assert_eq!(r["primary"], "faults", "{r}");
    b.until("B reports no lag", 30, || async {
        matches!(b.region(0).await, Some(r) if r["lagEntries"] == 0 && r["primaryReachable"] == true)
    })
    .await;
    let r = b.region(0).await.unwrap();
    println!("B's region status: {r}");
    let applied = r["appliedPrimaryIndex"].as_u64().unwrap();
    assert!(applied > 20, "{r}");
    let primary = a.region(a.leader(&[0, 1, 2]).await).await.unwrap();
    assert_eq!(primary["role"], "Primary", "{primary}");
    assert_eq!(primary["accepted"][0]["name"], "west", "{primary}");
    let metrics = b
        .http
        .get(format!("{}/metrics", b.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "keystead_region_applied_primary_index",
        "keystead_region_lag_entries 0",
        "keystead_region_lag_seconds",
        "keystead_region_primary_reachable 1",
    ] {
        assert!(
            metrics.contains(m),
            "{m} missing from B's metrics:\n{metrics}"
        );
    }
    // The join is audited on both sides.
    let joined_in_b = (0..N).any(|i| {
        b.audit_records(i)
            .iter()
            .any(|r| r["operation"] == "RegionJoined")
    });
    let joined_in_a = (0..N).any(|i| {
        a.audit_records(i)
            .iter()
            .any(|r| r["operation"] == "RegionJoin" && r["status"] == 200)
    });
    assert!(
        joined_in_a && joined_in_b,
        "the join is audited in A and in B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_primary_partition_killed_the_replica_serves_reads_and_crypto_refuses_writes_until_failed_over()
 {
    let (a, b) = two_regions().await;
    a.create(0, "before").await.expect("create in A");
    b.until("B serves the key", 30, || b.has_key(1, "before"))
        .await;
    for i in 0..N {
        a.kill(i);
    }
    for i in 0..N {
        assert!(b.has_key(i, "before").await, "B partition {i} still reads");
        assert_eq!(
            b.sign(i, "before").await,
            StatusCode::OK,
            "B partition {i} still signs"
        );
    }
    let (s, v) = b
        .call(
            0,
            Method::POST,
            "/keys/after/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "RegionPrimaryUnreachable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("'faults'") && msg.contains("promote"), "{msg}");
    println!("write refused by B with the primary down: {msg}");
    b.until("B reports the primary unreachable", 30, || async {
        matches!(b.region(0).await, Some(r) if r["primaryReachable"] == false)
    })
    .await;
    assert!(!b.has_key(0, "after").await, "nothing was written");
    // Failover: B is promoted without a token and takes writes under the next epoch.
    promote(&b, 2, json!({"force": true})).await;
    b.until("B takes writes after the failover", 30, || async {
        b.create(0, "after").await.is_ok()
    })
    .await;
    assert!(b.has_key(1, "after").await && b.has_key(2, "before").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_joining_after_the_primarys_log_was_compacted_catches_up_from_a_snapshot() {
    let a = std::sync::Arc::new(Cluster::start().await);
    a.activate().await;
    // More than one snapshot interval (2,000–2,300 entries, staggered by member): the log's
    // head is purged on every partition.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (a, next) = (a.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= 2_700 {
                        return;
                    }
                    a.create(w % N, &format!("bulk{n}")).await.expect("create");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    a.until("A took a snapshot and compacted its log", 60, || async {
        matches!(a.status(0).await, Some(v) if v["replication"]["snapshotIndex"].as_u64() > Some(0))
    })
    .await;
    // The purged entries stay in memory for regions (the log tail, docs/regions.md) until a
    // restart: restart A so that only a snapshot can bring B up to date.
    a.restart_all().await;
    let started = Instant::now();
    let b = Cluster::extend(&a, "west").await;
    b.until_joined().await;
    b.until("B holds every key of A", 120, || async {
        matches!(b.status(0).await, Some(v) if v["keys"] == 2_700)
    })
    .await;
    println!(
        "region bootstrap from a snapshot of 2,700 keys (start of B's processes to all keys served): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let logs: String = b
        .configs
        .iter()
        .map(|c| std::fs::read_to_string(c.with_file_name("stderr.log")).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("catching up from a snapshot"),
        "B caught up from a snapshot, not from the log"
    );
    // The feed continues after the snapshot.
    a.create(1, "after-snapshot").await.expect("create in A");
    b.until("B serves a key created after its snapshot", 30, || {
        b.has_key(2, "after-snapshot")
    })
    .await;
    assert!(b.has_key(0, "bulk0").await && b.has_key(1, "bulk2299").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_pool_the_primary_names_obtains_the_domain_and_removal_cuts_it_off() {
    let a = Cluster::start().await;
    a.activate().await;
    // A pool of its own CA (its partition's certificate), never named on A.
    let tmp = tempfile::tempdir().unwrap();
    let rogue = keystead_partition::local::LocalPki::open_or_create(tmp.path(), "rogue").unwrap();
    let (_, cfg) = rogue
        .partition("p0", keystead_partition::local::free_port().unwrap(), &[])
        .unwrap();
    let mut identity = std::fs::read(&cfg.tls.cert_file).unwrap();
    identity.extend(std::fs::read(&cfg.tls.key_file).unwrap());
    let a_ca = std::fs::read(a.dir.join("ca.pem")).unwrap();
    let client = |with_cert: bool| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&a_ca).unwrap());
        if with_cert {
            b = b.identity(reqwest::Identity::from_pem(&identity).unwrap());
        }
        b.build().unwrap()
    };
    let exchange = keystead_core::sd::ExchangeKey::generate("rogue-pool").unwrap();
    let body = json!({"region": "rogue", "exchangeCertificate": exchange.certificate_pem()});
    let url = format!("{}/internal/region/join", a.url(0));
    for (with_cert, want) in [
        (true, StatusCode::FORBIDDEN),
        (false, StatusCode::UNAUTHORIZED),
    ] {
        let r = client(with_cert)
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{v}");
        assert!(
            v.get("blob").is_none(),
            "no domain for an unnamed pool: {v}"
        );
        if with_cert {
            assert_eq!(v["error"]["code"], "RegionNotAccepted", "{v}");
        }
    }
    // Nor may it read the feed or forward a write.
    let r = client(true)
        .get(format!("{}/internal/region/feed?after=0", a.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let refused = a
        .audit_records(0)
        .into_iter()
        .filter(|r| r["operation"] == "RegionRefused" && r["status"] == 403)
        .count();
    assert!(refused >= 1, "the refusal is audited on the primary");

    // Once named (its CA), the same pool obtains the domain sealed to its transfer key over
    // the same kind of connection; removed again, it is refused on its open connection.
    let named = client(true);
    let (s, v) = a
        .call(
            0,
            Method::PUT,
            "/admin/regions/rogue",
            Some(json!({"caCertificate": std::fs::read_to_string(&cfg.tls.ca_file).unwrap()})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = named.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let reply: Value = r.json().await.unwrap();
    let secret = exchange
        .open_transfer_blob(reply["blob"].as_str().unwrap(), "rogue-pool")
        .expect("the blob opens with the transfer key only");
    assert_eq!(reply["fingerprint"], secret.fingerprint());
    let (s, _) = a
        .call(0, Method::DELETE, "/admin/regions/rogue", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Removed: answered at once (on the open connection) with 410 and a removal notice
    // that verifies under the domain only — what a removed region purges its pool on.
    let r = named.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE, "removed: refused at once");
    let v: Value = r.json().await.unwrap();
    assert!(v.get("blob").is_none(), "{v}");
    assert_eq!(v["error"]["code"], "RegionRemoved", "{v}");
    let notice = v["removalNotice"].as_str().expect("a removal notice");
    let n = keystead_core::region_token::RemovalNotice::open(notice, secret.master_key())
        .expect("the notice verifies under the domain");
    assert_eq!(n.region, "rogue");
    assert!(
        keystead_core::region_token::RemovalNotice::open(notice, &[9; 32]).is_err(),
        "and under no other key"
    );
    assert!(
        (0..N).any(|i| a
            .audit_records(i)
            .iter()
            .any(|r| r["operation"] == "RegionRemovedNotice" && r["status"] == 410)),
        "the notice is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_under_continuous_writes_loses_nothing_and_the_old_primary_follows() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let (a, b) = two_regions().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Writers through both regions, every partition, all the time.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (a, b, acked, stop) = (a.clone(), b.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{n}");
                    n += 1;
                    let region = if w % 2 == 0 { &a } else { &b };
                    if region.create(n % N, &name).await.is_ok() {
                        acked.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    time_until("writes are acknowledged", 60, || async { count() >= 20 }).await;

    let started = Instant::now();
    let (s, v) = a
        .call(
            0,
            Method::POST,
            "/admin/regions/demote",
            Some(json!({"to": "west", "endpoints": (0..N).map(|i| b.url(i)).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["epoch"], 2, "{v}");
    // A forged or altered token is refused.
    let mut forged = token.clone();
    forged.insert(3, 'x');
    let (s, _) = b
        .call(
            1,
            Method::POST,
            "/admin/regions/promote",
            Some(json!({"token": forged})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    promote(&b, 1, json!({"token": token})).await;
    let before = count();
    time_until("writes continue after the switchover", 60, || async {
        count() >= before + 20
    })
    .await;
    println!(
        "planned switchover: demote to promote {:.0} ms; {} writes acknowledged so far",
        ms(started.elapsed()),
        count()
    );
    // The old primary follows the new one (no re-seeding), and writes sent to it land in B.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(a.region(0).await, Some(r) if r["role"] == "Replica" && r["primary"] == "west" && r["epoch"] == 2)
    {
        if Instant::now() > deadline {
            dump_logs(&[&a, &b]);
            panic!("A does not follow B: {:?}", a.region(0).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written_through_a = a
        .create(2, "through-a-after")
        .await
        .expect("a write sent to A");
    let (s, v) = b.call(0, Method::GET, "/keys/through-a-after", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key"]["x"], written_through_a["key"]["x"]);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Zero loss: every acknowledged write is in both regions.
    let acked = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        for (k, name) in acked.iter().enumerate() {
            for (c, region) in [(&a, "A"), (&b, "B")] {
                if !c.has_key(k % N, name).await {
                    missing.push(format!("{name} in {region} (partition {})", k % N));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&[&a, &b]);
            panic!("acknowledged writes missing: {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} acknowledged writes, all present in both regions",
        acked.len()
    );
    let audited = |c: &Cluster, op: &str| {
        (0..N).any(|i| {
            c.audit_records(i)
                .iter()
                .any(|r| r["operation"] == op && r["status"] == 200)
        })
    };
    assert!(audited(&a, "RegionDemote") && audited(&b, "RegionPromote"));
}

/// Until every partition of `c` follows `primary` at `epoch`.
async fn until_following(c: &Cluster, primary: &str, epoch: u64, pools: &[&Cluster]) {
    for i in 0..N {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(c.region(i).await, Some(r) if r["role"] == "Replica" && r["primary"] == primary && r["epoch"] == epoch)
        {
            if Instant::now() > deadline {
                dump_logs(pools);
                panic!(
                    "partition {i} does not follow {primary} at epoch {epoch}: {:?}",
                    c.region(i).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_waits_for_every_region_and_the_third_region_follows_the_new_primary() {
    let (a, b) = two_regions().await;
    let c = Cluster::extend(&a, "north").await;
    c.until_joined().await;
    let before: Vec<String> = (0..6).map(|k| format!("before-{k}")).collect();
    for (k, name) in before.iter().enumerate() {
        a.create(k % N, name).await.expect("a write in A");
    }
    // North is stopped: the demotion cannot hand over while it has not applied A's last
    // index — it answers which region is behind, publishes no token, and takes no writes.
    for i in 0..N {
        c.pause(i);
    }
    let endpoints: Vec<String> = (0..N).map(|i| b.url(i).to_string()).collect();
    let (s, v) = a
        .call(
            0,
            Method::POST,
            "/admin/regions/demote",
            Some(json!({"to": "west", "endpoints": endpoints, "waitSeconds": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("RegionsNotCaughtUp") && text.contains("'north'"),
        "{v}"
    );
    for i in 0..N {
        let r = a.region(i).await.expect("A's status");
        assert!(r["demotionToken"].is_null(), "token published early: {r}");
        assert_eq!(r["demotedTo"], "west", "{r}");
    }
    assert!(
        a.create(1, "after-demotion").await.is_err(),
        "a demoted primary takes no writes"
    );
    for i in 0..N {
        c.resume(i);
    }
    // Called again, the demotion waits again (within the test client's 30 s): north
    // catches up and the token is published.
    let (s, v) = a
        .call(
            1,
            Method::POST,
            "/admin/regions/demote",
            Some(json!({"to": "west", "endpoints": endpoints, "waitSeconds": 25})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().expect("a token").to_string();
    a.until("every partition of A publishes the token", 30, || async {
        let mut all = true;
        for i in 0..N {
            all &= matches!(a.region(i).await, Some(r) if r["demotionToken"] == token.as_str());
        }
        all
    })
    .await;
    promote(&b, 0, json!({"token": token})).await;
    // The old primary and north both follow west, without re-seeding.
    until_following(&a, "west", 2, &[&a, &b, &c]).await;
    until_following(&c, "west", 2, &[&a, &b, &c]).await;
    let a_name = a.region(0).await.expect("A's status")["name"].clone();
    let west = b.region(0).await.expect("west's status");
    let accepted: Vec<&Value> = west["accepted"]
        .as_array()
        .map(|l| l.iter().map(|r| &r["name"]).collect())
        .unwrap_or_default();
    assert!(
        accepted.contains(&&json!("north")) && accepted.contains(&&a_name),
        "west accepts A and north: {west}"
    );
    // A write through north lands in west and is served by north at once.
    let through_north = c
        .create(2, "through-north")
        .await
        .expect("a write via north");
    assert!(b.has_key(0, "through-north").await);
    let (s, v) = c.call(1, Method::GET, "/keys/through-north", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key"]["x"], through_north["key"]["x"]);
    // A write in west reaches north and A; everything written before is everywhere.
    b.create(1, "in-west").await.expect("a write in west");
    for (pool, name) in [(&a, "A"), (&c, "north")] {
        pool.until(&format!("west's write reaches {name}"), 30, || async {
            pool.has_key(0, "in-west").await
        })
        .await;
    }
    for (k, key) in before.iter().enumerate() {
        for pool in [&a, &b, &c] {
            assert!(pool.has_key(k % N, key).await, "{key} is missing");
        }
    }
    for pool in [&a, &b, &c] {
        assert!(!pool.has_key(0, "after-demotion").await);
    }
}

/// Until every partition of `c` reports `refused` for its write lease.
async fn until_lease(c: &Cluster, refused: bool) {
    for i in 0..N {
        c.until(
            &format!("partition {i}: writes refused by the lease = {refused}"),
            60,
            || async move {
                matches!(c.region(i).await, Some(r) if r["writeLeaseMs"] == 3000 && r["writesRefusedByLease"] == refused)
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_write_lease_a_primary_cut_off_from_every_region_stops_taking_writes_and_a_failover_waits_it_out()
 {
    let (mut a, b) = two_regions().await;
    let name = a.region(0).await.expect("A's status")["name"].clone();
    a.restart_with_region_config(&json!({"name": name, "writeLeaseMs": 3000}))
        .await;
    // West polls A: the lease holds and A takes writes.
    until_lease(&a, false).await;
    a.create(0, "leased-1")
        .await
        .expect("a write under the lease");
    b.until("west serves the key", 30, || b.has_key(0, "leased-1"))
        .await;
    // West learns A's lease (a failover waits it out).
    b.until("west knows A's lease", 30, || async {
        matches!(b.region(0).await, Some(r) if r["primaryWriteLeaseMs"] == 3000)
    })
    .await;
    // Every region stopped: once the lease has run out A refuses writes, saying why; reads
    // and signatures continue.
    for i in 0..N {
        b.pause(i);
    }
    until_lease(&a, true).await;
    match a.create(1, "leased-2").await {
        Err((status, body)) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(
                body.to_string().contains("RegionWriteLeaseExpired"),
                "{body}"
            );
        }
        Ok(v) => panic!("a primary past its lease took a write: {v}"),
    }
    assert!(a.has_key(1, "leased-1").await);
    assert_eq!(a.sign(2, "leased-1").await, StatusCode::OK);
    // West polls again: writes resume.
    for i in 0..N {
        b.resume(i);
    }
    until_lease(&a, false).await;
    a.create(2, "leased-3").await.expect("writes resume");
    b.until("west serves the key", 30, || b.has_key(0, "leased-3"))
        .await;
    // A is lost; a forced promotion of west returns only once A's lease (and the margin)
    // has run out since west last reached it: a cut-off A would have stopped by then.
    let lost = Instant::now();
    for i in 0..N {
        a.kill(i);
    }
    promote(&b, 0, json!({"force": true})).await;
    assert!(
        lost.elapsed() >= Duration::from_millis(3000),
        "the failover did not wait out the lease: {:?}",
        lost.elapsed()
    );
    assert!(!b.has_key(0, "leased-2").await);
    b.create(1, "after-failover")
        .await
        .expect("west takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_returning_old_primary_is_fenced_lists_its_lost_writes_and_follows() {
    let (a, b) = two_regions().await;
    a.create(0, "before").await.expect("create in A");
    b.until("B serves the key", 30, || b.has_key(0, "before"))
        .await;
    // Region B is down while A takes a write (B never gets it); then A is lost and B back.
    for i in 0..N {
        b.kill(i);
    }
    a.create(1, "lost").await.expect("a write A acknowledged");
    for i in 0..N {
        a.kill(i);
    }
    for i in 0..N {
        b.spawn(i);
    }
    for i in 0..N {
        b.until("B is back with its domain", 60, || b.domain_loaded(i))
            .await;
    }
    assert!(b.has_key(0, "before").await && !b.has_key(0, "lost").await);
    promote(&b, 0, json!({"force": true})).await;
    b.until("B takes writes after the failover", 30, || async {
        b.create(1, "after").await.is_ok()
    })
    .await;
    // A comes back: it learns of epoch 2, stops, lists what it loses, re-seeds and follows.
    for i in 0..N {
        a.spawn(i);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = a.region(0).await;
        if matches!(&r, Some(r) if r["role"] == "Replica" && r["primary"] == "west" && r["epoch"] == 2)
            && a.has_key(0, "after").await
        {
            let r = r.unwrap();
            let discarded = r["discardedWrites"].to_string();
            assert!(discarded.contains("lost/"), "the lost write is listed: {r}");
            assert!(!discarded.contains("before"), "{r}");
            println!("old primary fenced; discarded writes: {discarded}");
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&[&a, &b]);
            panic!("A was not fenced: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !a.has_key(1, "lost").await,
        "the discarded write is gone from A"
    );
    assert!(a.has_key(2, "before").await);
    let fenced = (0..N).any(|i| {
        a.audit_records(i).iter().any(|r| {
            r["operation"] == "RegionFenced"
                && r["keyName"].as_str().is_some_and(|k| k.contains("lost/"))
        })
    });
    assert!(fenced, "the discarded writes are in A's audit log");
    // Writes sent to A now go to B.
    a.create(2, "via-a")
        .await
        .expect("a write through the old primary");
    assert!(b.has_key(0, "via-a").await);
}

/// Accept region `name` (pool `region`) on primary `on`.
async fn accept(on: &Cluster, name: &str, region: &Cluster) {
    let ca = std::fs::read_to_string(region.dir.join("ca.pem")).expect("the region's CA");
    let (s, v) = on
        .call(
            0,
            Method::PUT,
            &format!("/admin/regions/{name}"),
            Some(json!({"caCertificate": ca})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Re-point replica region `c` to `to` (pool `primary`), promoted by a failover.
async fn follow(c: &Cluster, to: &str, primary: &Cluster) -> (StatusCode, Value) {
    let ca = std::fs::read_to_string(primary.dir.join("ca.pem")).expect("the CA");
    let endpoints: Vec<String> = (0..N).map(|i| primary.url(i).to_string()).collect();
    c.call(
        1,
        Method::POST,
        "/admin/regions/follow",
        Some(json!({"to": to, "endpoints": endpoints, "caCertificate": ca})),
    )
    .await
}

/// Whether every partition of `c` serves `name`.
async fn everywhere(c: &Cluster, name: &str) -> bool {
    for i in 0..N {
        if !c.has_key(i, name).await {
            return false;
        }
    }
    true
}

/// The audit records of pool `c` with operation `op`.
fn audited(c: &Cluster, op: &str) -> Vec<Value> {
    (0..N)
        .flat_map(|i| c.audit_records(i))
        .filter(|r| r["operation"] == op)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_a_third_region_follows_the_promoted_region_in_place_or_re_seeded_listing_what_it_drops()
 {
    let (a, b) = two_regions().await;
    let c = Cluster::extend(&a, "north").await;
    c.until_joined().await;
    let a_name = a.region(0).await.expect("A's status")["name"]
        .as_str()
        .expect("A's region name")
        .to_string();
    a.create(0, "before").await.expect("a write in A");
    for pool in [&b, &c] {
        pool.until("both regions have A's write", 30, || {
            everywhere(pool, "before")
        })
        .await;
    }
    // 1. West and north have applied the same position of A when A is lost: north follows
    // west in place (no re-seed, nothing discarded).
    for i in 0..N {
        a.kill(i);
    }
    promote(&b, 0, json!({"force": true})).await;
    // Refused, saying why, while west does not accept north.
    let (s, v) = follow(&c, "west", &b).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v.to_string().contains("RegionNotAccepted"), "{v}");
    accept(&b, "north", &c).await;
    let (s, v) = follow(&c, "west", &b).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_following(&c, "west", 2, &[&a, &b, &c]).await;
    b.create(1, "in-west").await.expect("a write in west");
    c.until("west's write reaches north", 30, || {
        everywhere(&c, "in-west")
    })
    .await;
    let r = c.region(0).await.expect("north's status");
    assert!(
        r["discardedWrites"].as_array().is_none_or(|l| l.is_empty()),
        "{r}"
    );
    assert!(
        !audited(&c, "RegionFollowInPlace").is_empty(),
        "north followed in place"
    );
    assert!(audited(&c, "RegionFollowReseed").is_empty());
    assert!(
        !audited(&c, "RegionFollow").is_empty(),
        "the call is audited"
    );
    // A comes back, is fenced by west and follows it.
    for i in 0..N {
        a.spawn(i);
    }
    until_following(&a, "west", 2, &[&a, &b, &c]).await;
    a.until("A catches up with west", 60, || everywhere(&a, "in-west"))
        .await;
    // 2. A is down while west takes a write only north gets (killed, not paused: a paused
    // process still receives the answer to a poll in flight); then west is lost and A
    // promoted: north is ahead of A's position, so it re-seeds from A and lists the write
    // it drops.
    for i in 0..N {
        a.kill(i);
    }
    c.create(2, "only-north")
        .await
        .expect("a write through north");
    c.until("north has its write", 30, || everywhere(&c, "only-north"))
        .await;
    for i in 0..N {
        b.kill(i);
    }
    for i in 0..N {
        a.spawn(i);
    }
    for i in 0..N {
        a.until("A is back with its domain", 60, || a.domain_loaded(i))
            .await;
    }
    assert!(!a.has_key(0, "only-north").await);
    let (s, v) = a
        .call(
            0,
            Method::POST,
            "/admin/regions/promote",
            Some(json!({"force": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["epoch"], 3, "{v}");
    accept(&a, "north", &c).await;
    let (s, v) = follow(&c, &a_name, &a).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_following(&c, &a_name, 3, &[&a, &b, &c]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c.region(0).await;
        let seeded =
            matches!(&r, Some(r) if r["discardedWrites"].to_string().contains("only-north/"));
        if seeded && !c.has_key(0, "only-north").await && everywhere(&c, "in-west").await {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&[&a, &b, &c]);
            panic!("north did not re-seed from A listing its lost write: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !everywhere(&c, "only-north").await && c.has_key(2, "before").await,
        "north holds A's state"
    );
    let reseeded = audited(&c, "RegionFollowReseed");
    assert!(
        reseeded.iter().any(|r| r["keyName"]
            .as_str()
            .is_some_and(|k| k.contains("only-north/"))),
        "the dropped write is in north's audit log: {reseeded:?}"
    );
    // Writes through north land in A and are served by north.
    c.create(0, "via-north")
        .await
        .expect("a write through north");
    assert!(a.has_key(0, "via-north").await);
}
