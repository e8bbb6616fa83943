//! Region replication under randomized faults on real processes (docs/regions.md): primary A
//! and replica region B (three partitions each), each region on hosts of its own (network
//! namespaces, one bridge per region, one link between the two bridges) where the machine
//! allows it. Writers create keys through both regions and every partition while faults hit
//! either region, one at a time, each held 0.5–3 s: SIGKILL and restart of a partition,
//! SIGSTOP of a partition, a partition cut off from its region's peers (packets dropped),
//! the link between the regions cut (packets dropped; both regions keep serving their own
//! clients: B serves reads and signatures and refuses writes, A takes writes B gets later),
//! SIGSTOP of a whole region, SIGKILL and restart of a whole region; and planned switchovers
//! (the primary demoted, the other region promoted with the token), some with a partition
//! killed between demotion and promotion. Without network namespaces (not root, no
//! iproute2) the two network faults are replaced by SIGSTOP of the same partition / region
//! and the run says so.
//! After each fault is healed the affected region must serve again; at the end every write
//! acknowledged by either region is in both regions, identical (version, public point,
//! creation time) on all six partitions; the replica serves no key the primary lacks; its
//! lag is 0.
//!
//! Default tier: 12 faults. Long tier (opt-in, ignored otherwise):
//! `KEYSTEAD_LONG_REGION_FAULTS=N` runs N faults; `KEYSTEAD_FAULTS_SEED` replays a run.

mod cluster;
mod common;

use cluster::{Cluster, N};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// splitmix64: a seeded sequence of fault choices (replayable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("KEYSTEAD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPartition {
        region: usize,
        i: usize,
    },
    PausePartition {
        region: usize,
        i: usize,
    },
    /// Partition `i` cut off from its region's other partitions (network).
    IsolatePartition {
        region: usize,
        i: usize,
    },
    /// The link between the two regions cut (network); both keep serving.
    CutRegionLink,
    PauseRegion {
        region: usize,
    },
    KillRegion {
        region: usize,
    },
    /// The primary hands over to the other region; with `kill`, that partition of the
    /// other region is killed (and restarted) between the demotion and the promotion.
    Switchover {
        kill: Option<usize>,
    },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillPartition { .. } => "KillPartition",
            Fault::PausePartition { .. } => "PausePartition",
            Fault::IsolatePartition { .. } => "IsolatePartition",
            Fault::CutRegionLink => "CutRegionLink",
            Fault::PauseRegion { .. } => "PauseRegion",
            Fault::KillRegion { .. } => "KillRegion",
            Fault::Switchover { .. } => "Switchover",
        }
    }

    /// The region the fault hits (0: A, 1: B); a switchover: the one promoted; a cut
    /// region link: the replica (the one that must join again).
    fn region(&self, primary: usize) -> usize {
        match *self {
            Fault::KillPartition { region, .. }
            | Fault::PausePartition { region, .. }
            | Fault::IsolatePartition { region, .. }
            | Fault::PauseRegion { region }
            | Fault::KillRegion { region } => region,
            Fault::Switchover { .. } | Fault::CutRegionLink => 1 - primary,
        }
    }

    /// A fault at random; `network`: whether network faults can be made (hosts of their
    /// own), else each is replaced by the SIGSTOP of what it would cut off.
    fn pick(rng: &mut Rng, network: bool) -> Fault {
        let region = rng.below(2) as usize;
        let i = rng.below(N as u64) as usize;
        match rng.below(11) {
            0 | 1 => Fault::KillPartition { region, i },
            2 => Fault::PausePartition { region, i },
            3 if network => Fault::IsolatePartition { region, i },
            3 => Fault::PausePartition { region, i },
            4 | 5 if network => Fault::CutRegionLink,
            4 | 5 => Fault::PauseRegion { region },
            6 => Fault::PauseRegion { region },
            7 | 8 => Fault::KillRegion { region },
            _ => Fault::Switchover {
                kill: (rng.below(2) == 0).then_some(i),
            },
        }
    }
}

/// A planned switchover from `regions[from]` to the other region, under the writers: the
/// demotion (which waits until the other region applied its last index), optionally a
/// partition of the other region killed and restarted, then the promotion with the token
/// (retried on another partition while the killed one comes back).
async fn switchover(regions: &[Cluster; 2], from: usize, kill: Option<usize>) {
    use reqwest::{Method, StatusCode};
    let (old, new) = (&regions[from], &regions[1 - from]);
    let to = new
        .region(0)
        .await
        .expect("the status of the region promoted")["name"]
        .clone();
    let endpoints: Vec<String> = (0..N).map(|i| new.url(i).to_string()).collect();
    // The demotion waits (here 20 s a call, under the test client's 30 s) until the other
    // region applied the last index; called again, it waits again.
    let deadline = Instant::now() + Duration::from_secs(120);
    let token = loop {
        let (s, v) = old
            .call(
                0,
                Method::POST,
                "/admin/regions/demote",
                Some(serde_json::json!({"to": to, "endpoints": endpoints, "waitSeconds": 20})),
            )
            .await;
        if s == StatusCode::OK {
            break v["token"].as_str().expect("a demotion token").to_string();
        }
        if Instant::now() > deadline {
            print_statuses(regions).await;
            panic!("the demotion does not hand over within 120 s: {s} {v}");
        }
    };
    if let Some(i) = kill {
        new.kill(i);
        new.spawn(i);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut k = 0;
    loop {
        let at = (kill.unwrap_or(N) + 1 + k) % N;
        k += 1;
        let (s, v) = new
            .call(
                at,
                Method::POST,
                "/admin/regions/promote",
                Some(serde_json::json!({"token": token})),
            )
            .await;
        if s == StatusCode::OK {
            break;
        }
        if Instant::now() > deadline {
            print_statuses(regions).await;
            panic!("the promotion does not succeed within 120 s: {s} {v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old primary follows the new one.
    for i in 0..N {
        old.until("the old primary follows the new one", 120, || async move {
            matches!(old.region(i).await, Some(r) if r["role"] == "Replica" && r["joined"] == true)
        })
        .await;
    }
}

/// On a failure (the test thread unwinding), the six partitions' logs are copied to
/// `$TMPDIR/keystead-failed-regions-<pid>/` (the clusters themselves are shared with the
/// writer tasks, so their own drop may not run on the failing thread).
struct KeepLogs(Arc<[Cluster; 2]>);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = std::env::temp_dir()
                .join(format!("keystead-failed-regions-{}", std::process::id()));
            for (c, region) in self.0.iter().zip(["A-", "B-"]) {
                c.keep_logs(&keep, region);
            }
        }
    }
}

/// Each partition's status, printed when a region does not serve again in time.
async fn print_statuses(regions: &[Cluster; 2]) {
    for (c, region) in regions.iter().zip(["A", "B"]) {
        for i in 0..N {
            eprintln!("{region} p{i}: {:?}", c.status(i).await);
        }
    }
}

/// While the region link is cut (for `hold`): the replica region still serves reads and
/// signatures on every partition from its own copy (a key it held before the cut).
async fn replica_serves_cut_off(regions: &[Cluster; 2], primary: usize, hold: Duration) {
    let replica = &regions[1 - primary];
    let until = Instant::now() + hold;
    let held = first_key(replica).await;
    for i in 0..N {
        if let Some(name) = &held {
            assert!(
                replica.has_key(i, name).await,
                "replica p{i} serves {name} with the region link cut"
            );
            assert_eq!(
                replica.sign(i, name).await,
                reqwest::StatusCode::OK,
                "replica p{i} signs with {name} with the region link cut"
            );
        }
    }
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
}

/// A key region `c` serves (the first one listed), if any.
async fn first_key(c: &Cluster) -> Option<String> {
    let (s, v) = c
        .call(0, reqwest::Method::GET, "/keys?maxresults=1", None)
        .await;
    (s == reqwest::StatusCode::OK)
        .then(|| v["value"][0]["kid"].as_str().map(str::to_string))
        .flatten()
        .and_then(|kid| kid.rsplit('/').next().map(str::to_string))
}

/// What a region must show again after a fault: every partition ready with its domain, and
/// (the replica) joined.
async fn serving_again(regions: &[Cluster; 2], region: usize, primary: usize) {
    let c = &regions[region];
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..N {
        while !matches!(c.status(i).await, Some(v)
            if v["domainLoaded"] == true && (region == primary || v["region"]["joined"] == true))
        {
            if Instant::now() > deadline {
                print_statuses(regions).await;
                panic!("partition {i} of region {region} does not serve again within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn run(faults: usize) {
    let seed = seed();
    eprintln!(
        "region fault run: {faults} faults, seed {seed} (replay: KEYSTEAD_FAULTS_SEED={seed})"
    );
    let mut rng = Rng(seed);
    let (a, b) = Cluster::primary_and_replica_on_hosts().await;
    let network = a.on_hosts() && b.on_hosts();
    eprintln!("network: {}", a.network());
    let regions = Arc::new([a, b]);
    let _keep = KeepLogs(regions.clone());
    // Acknowledged creates: name → (kid path, public x), and every name attempted.
    let acked = Arc::new(Mutex::new(BTreeMap::<String, (String, Value)>::new()));
    let tried = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (regions, acked, tried, stop) =
                (regions.clone(), acked.clone(), tried.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{n}");
                    n += 1;
                    tried.lock().unwrap().insert(name.clone());
                    let c = &regions[w % 2];
                    match c.create(n % N, &name).await {
                        Ok(v) => {
                            let kid = v["key"]["kid"].as_str().unwrap_or_default();
                            let path = kid.split_once("/keys/").map(|(_, p)| p.to_string());
                            acked
                                .lock()
                                .unwrap()
                                .insert(name, (path.unwrap_or_default(), v["key"]["x"].clone()));
                        }
                        // Refused or unknown outcome: not acknowledged; pause a little so a
                        // region that refuses writes is not hammered.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    let started = Instant::now();
    let mut by_kind = BTreeMap::<&str, usize>::new();
    // Which region is the primary (A at first; a switchover swaps them).
    let mut primary = 0;
    for k in 0..faults {
        let mut f = Fault::pick(&mut rng, network);
        // Every run makes at least one switchover (with a partition killed in the middle).
        if k == faults / 2 && !by_kind.contains_key("Switchover") {
            f = Fault::Switchover { kill: Some(k % N) };
        }
        let hold = Duration::from_millis(500 + rng.below(2500));
        let before = count();
        let c = &regions[f.region(primary)];
        eprintln!(
            "fault {k}: {f:?} for {} ms ({} acknowledged so far)",
            hold.as_millis(),
            before
        );
        match f {
            Fault::KillPartition { i, .. } => {
                c.kill(i);
                tokio::time::sleep(hold).await;
                c.spawn(i);
            }
            Fault::PausePartition { i, .. } => {
                c.pause(i);
                tokio::time::sleep(hold).await;
                c.resume(i);
            }
            Fault::IsolatePartition { i, .. } => {
                c.isolate(i, true);
                tokio::time::sleep(hold).await;
                c.isolate(i, false);
            }
            Fault::CutRegionLink => {
                regions[0].cut_region_link(&regions[1], true);
                replica_serves_cut_off(&regions, primary, hold).await;
                regions[0].cut_region_link(&regions[1], false);
            }
            Fault::PauseRegion { .. } => {
                (0..N).for_each(|i| c.pause(i));
                tokio::time::sleep(hold).await;
                (0..N).for_each(|i| c.resume(i));
            }
            Fault::KillRegion { .. } => {
                (0..N).for_each(|i| c.kill(i));
                tokio::time::sleep(hold).await;
                (0..N).for_each(|i| c.spawn(i));
            }
            Fault::Switchover { kill } => {
                switchover(&regions, primary, kill).await;
                primary = 1 - primary;
            }
        }
        *by_kind.entry(f.kind()).or_default() += 1;
        serving_again(&regions, f.region(primary), primary).await;
        // Progress: writes are acknowledged again after every fault.
        let healed = count();
        regions[primary]
            .until("writes are acknowledged after the fault", 60, || async {
                count() > healed
            })
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // `a` is the primary now, `b` the replica (swapped by an odd number of switchovers).
    let (a, b) = (&regions[primary], &regions[1 - primary]);
    // The replica catches up: lag 0 on every partition.
    for i in 0..N {
        b.until(
            "the replica caught up with the primary (lag 0)",
            120,
            || async move {
                matches!(b.region(i).await, Some(r) if r["lagEntries"] == 0 && r["joined"] == true)
            },
        )
        .await;
    }
    // Every acknowledged write, identical on the six partitions.
    let expected: BTreeMap<String, String> = acked
        .iter()
        .map(|(n, (path, _))| (n.clone(), path.clone()))
        .collect();
    a.assert_converged(&expected).await;
    b.assert_converged(&expected).await;
    for (name, (_, x)) in &acked {
        let (ia, ib) = (a.key_identity(0, name).await, b.key_identity(0, name).await);
        assert_eq!(ia, ib, "{name}: the same key in both regions");
        assert_eq!(
            ia.map(|i| i.1),
            Some(x.clone()),
            "{name}: the acknowledged key"
        );
    }
    // The replica never serves a key the primary lacks (every name ever tried,
    // acknowledged or not).
    let tried = tried.lock().unwrap().clone();
    for name in &tried {
        if b.has_key(0, name).await {
            assert!(
                a.has_key(0, name).await,
                "the replica serves {name}, the primary does not"
            );
        }
    }
    assert!(
        acked.len() > faults,
        "writes made progress: {} acknowledged over {faults} faults",
        acked.len()
    );
    eprintln!(
        "REGION FAULT RUN PASSED: seed {seed}; {:.0} s; faults {faults} {by_kind:?}; {} writes acknowledged, {} tried; all in both regions",
        started.elapsed().as_secs_f64(),
        acked.len(),
        tried.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_randomized_region_faults_lose_no_acknowledged_write() {
    run(12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long region fault run is opt-in: KEYSTEAD_LONG_REGION_FAULTS=N (docs/regions.md)"]
async fn long_randomized_region_faults_with_keystead_long_region_faults() {
    let n: usize = std::env::var("KEYSTEAD_LONG_REGION_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("set KEYSTEAD_LONG_REGION_FAULTS=N (the number of faults)");
    run(n).await;
}

/// The link between the two regions cut at the network level (packets dropped, not
/// connections refused): the replica keeps serving reads and signatures on every partition,
/// refuses a write with 503 naming the primary region, the primary keeps taking writes; once
/// the link is back the replica catches up and takes writes again. Needs network namespaces
/// (root, iproute2); elsewhere it says it cannot run and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_link_cut_replica_serves_refuses_writes_and_catches_up() {
    use reqwest::StatusCode;
    let (a, b) = Cluster::primary_and_replica_on_hosts().await;
    if !(a.on_hosts() && b.on_hosts()) {
        eprintln!(
            "NOT RUN: a region link cut needs each region on hosts of its own: {}",
            a.network()
        );
        return;
    }
    a.create(0, "before-cut")
        .await
        .expect("create on the primary");
    for i in 0..N {
        b.until(
            "the replica has the key made before the cut",
            60,
            || async { b.has_key(i, "before-cut").await },
        )
        .await;
    }
    a.cut_region_link(&b, true);
    for i in 0..N {
        assert!(
            b.has_key(i, "before-cut").await,
            "replica p{i} reads, cut off"
        );
        assert_eq!(
            b.sign(i, "before-cut").await,
            StatusCode::OK,
            "replica p{i} signs, cut off"
        );
    }
    let (status, body) = b
        .create(1, "during-cut")
        .await
        .expect_err("a write to the cut-off replica is refused");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("primary region"),
        "the refusal names the primary region: {message}"
    );
    a.create(2, "primary-during-cut")
        .await
        .expect("the primary takes writes with the region link cut");
    a.cut_region_link(&b, false);
    for i in 0..N {
        b.until(
            "the replica catches up once the link is back",
            60,
            || async { b.has_key(i, "primary-during-cut").await },
        )
        .await;
    }
    b.until("the replica takes writes again", 60, || async {
        b.create(0, "after-cut").await.is_ok() || b.has_key(0, "after-cut").await
    })
    .await;
    assert!(
        a.has_key(0, "after-cut").await,
        "the write landed in the primary"
    );
    // A write refused as uncertain may still land (its bytes were in flight when the link
    // was cut); wherever it is, it is the same key in both regions.
    for i in 0..N {
        b.until(
            "the regions agree on the write refused during the cut",
            60,
            || async {
                a.key_identity(0, "during-cut").await == b.key_identity(i, "during-cut").await
            },
        )
        .await;
    }
}
