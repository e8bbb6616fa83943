//! Membership changes of a replicated pool on real processes (`/admin/members`):
//!
//! - a failed partition replaced by a brand-new one (new id, name, certificate, token,
//!   address, empty disk) while clients keep writing: the pool keeps serving, the new member
//!   receives the domain from a peer without any custodian and holds every acknowledged
//!   key; the handover and the change are audited; the removed partition's identity is
//!   refused afterwards;
//! - removals that would leave the pool unsafe are refused; a fourth partition joins as a
//!   learner, serves reads, and is removed; its node id is never reused.

mod cluster;
mod common;

use cluster::{Cluster, kid_path};
use keystead_partition::consensus::raft::client::PeerError;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Send a membership change and repeat it while it answers 202 (the new member is still
/// catching up; the request is idempotent). Returns the final status and body.
async fn change(
    c: &Cluster,
    i: usize,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (s, v) = c.call(i, method.clone(), path, body.clone()).await;
        if s == StatusCode::BAD_GATEWAY {
            // The request did not reach the partition (the harness's transport error): a
            // crash is a failure, a dropped connection is retried (the change is idempotent).
            if let Some(e) = c.exited(i) {
                panic!("{method} {path}: partition {i} {e}");
            }
        } else if s != StatusCode::ACCEPTED {
            return (s, v);
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path} still pending: {v}"
        );
        if s == StatusCode::BAD_GATEWAY {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn voters(view: &Value) -> BTreeSet<u64> {
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "voter")
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

fn member(view: &Value, id: u64) -> Option<&Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
}

/// A domain request to partition `to` presented with partition `from`'s certificate and
/// workload token (the body is never reached when the caller is refused).
async fn ask_domain(c: &Cluster, from: usize, to: usize) -> Result<Value, PeerError> {
    c.peer_client(from)
        .post::<_, Value>(
            c.url(to),
            "/internal/domain",
            &json!({"exchangeCertificate": "not a certificate"}),
            Duration::from_secs(5),
        )
        .await
}

fn status_of(r: &Result<Value, PeerError>) -> Option<u16> {
    match r {
        Err(PeerError::Status(_, s, _)) => Some(*s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_failed_partition_with_a_new_identity_at_a_new_address() {
    let mut c = Cluster::start().await;
    c.activate().await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    for i in 0..3 {
        let v = c.create(i, &format!("before-{i}")).await.expect("create");
        acked
            .lock()
            .unwrap()
            .insert(format!("before-{i}"), kid_path(&v));
    }
    let leader = c.leader(&[0, 1, 2]).await;
    let old = (leader + 1) % 3;
    let via = (leader + 2) % 3;
    let old_id = c.node_id(old);

    // A brand-new partition: new node id, name, certificate, token, address, empty disk.
    let new = c.add_partition("p3", 4);
    // Not a member yet: its pool-CA certificate and identity alone do not get the domain.
    let r = ask_domain(&c, new, leader).await;
    assert_eq!(status_of(&r), Some(403), "{r:?}");
    c.spawn(new);
    // The old partition is lost for good.
    c.kill(old);

    // Clients keep writing (through both remaining partitions) during the replacement.
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("during-{n}");
                let target = if n % 2 == 0 { leader } else { via };
                n += 1;
                if let Ok(v) = c.create(target, &name).await {
                    acked.lock().unwrap().insert(name, kid_path(&v));
                }
            }
        })
    };
    // Replace through a follower: the request is forwarded to the leader.
    let (s, view) = change(
        &c,
        via,
        Method::PUT,
        &format!("/admin/members/{old_id}"),
        Some(json!({"id": 4, "name": "p3", "url": c.url(new)})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let expected = BTreeSet::from([c.node_id(leader), c.node_id(via), 4]);
    assert_eq!(voters(&view), expected, "{view}");
    assert!(member(&view, old_id).is_none(), "{view}");
    // Repeating the finished request changes nothing.
    let (s, again) = c
        .call(
            leader,
            Method::PUT,
            &format!("/admin/members/{old_id}"),
            Some(json!({"id": 4, "name": "p3", "url": c.url(new)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(voters(&again), expected);

    // The pool kept serving: writes were acknowledged during the change, and continue.
    let during = acked.lock().unwrap().len();
    let t = Instant::now();
    while acked.lock().unwrap().len() < during + 3 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "writes stopped after the replacement"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        acked.lock().unwrap().len() > 3 + 3,
        "no write was acknowledged during the replacement"
    );

    // The new member got the domain from a peer (no custodian, no upload) and holds every
    // acknowledged key, identical to the others; it signs and takes writes.
    c.until("the new member holds the domain", 60, || {
        c.domain_loaded(new)
    })
    .await;
    let v = c
        .create(new, "after-replace")
        .await
        .expect("write through the new member");
    acked
        .lock()
        .unwrap()
        .insert("after-replace".into(), kid_path(&v));
    let acked = acked.lock().unwrap().clone();
    c.assert_converged_on(&acked, &[leader, via, new]).await;
    assert_eq!(c.sign(new, "before-0").await, StatusCode::OK);
    assert!(c.cfgs[new].data_dir.join("domain.sealed").exists());

    // Audit: the handover (who received it, when) on the partition that handed it over,
    // and the change on the partition that took the request.
    let handovers: Vec<Value> = [leader, via]
        .iter()
        .flat_map(|&i| c.audit_records(i))
        .filter(|r| {
            r["operation"] == "SecurityDomainHandover"
                && r["status"] == 200
                && r["caller"] == "partition:p3"
        })
        .collect();
    assert!(!handovers.is_empty(), "no handover audit record");
    for h in &handovers {
        assert_eq!(h["member"], "p3", "{h}");
        assert_eq!(h["memberId"], 4, "{h}");
        assert!(h["time"].as_str().is_some_and(|t| !t.is_empty()), "{h}");
    }
    let refused_before = c
        .audit_records(leader)
        .into_iter()
        .any(|r| r["operation"] == "SecurityDomainHandover" && r["status"] == 403);
    assert!(
        refused_before,
        "the refused early domain request is not audited"
    );
    let replaced = c.audit_records(via).into_iter().any(|r| {
        r["operation"] == "MemberReplace"
            && r["caller"] == keystead_partition::local::ADMIN_SUBJECT
            && r["status"] == 200
            && r["memberId"] == 4
            && r["dataAction"] == "Microsoft.KeyVault/managedHsm/securitydomain/download/action"
    });
    assert!(replaced, "the replacement is not audited");

    // The removed partition's certificate and token are refused by every member now.
    for i in [leader, via, new] {
        let r = ask_domain(&c, old, i).await;
        assert_eq!(status_of(&r), Some(403), "partition {i}: {r:?}");
        let r = c
            .peer_client(old)
            .get::<Value>(c.url(i), "/internal/state", Duration::from_secs(5))
            .await;
        assert!(
            matches!(r, Err(PeerError::Status(_, 403, _))),
            "partition {i}: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_and_leaves_and_unsafe_removals_are_refused() {
    let mut c = Cluster::start().await;
    c.activate().await;
    let v = c.create(0, "k-before").await.expect("create");
    let leader = c.leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let follower_id = c.node_id(follower);

    // Membership is for administrators: a crypto user may neither list nor change it.
    let user = c.token_for("crypto-user");
    let (s, _) = c
        .call_as(&user, follower, Method::GET, "/admin/members", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v403) = c
        .call_as(
            &user,
            follower,
            Method::DELETE,
            &format!("/admin/members/{follower_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v403}");

    // The list, asked of a follower, is the leader's view: three healthy voters.
    c.until("three healthy voters", 60, || async {
        let (s, v) = c.members(follower).await;
        s == StatusCode::OK
            && v["members"].as_array().is_some_and(|m| {
                m.len() == 3
                    && m.iter()
                        .all(|m| m["health"] == "healthy" && m["role"] == "voter")
            })
    })
    .await;
    let (_, view) = c.members(follower).await;
    assert_eq!(view["observedBy"], view["leader"], "{view}");
    assert_eq!(view["leader"], c.cfgs[leader].partition_id.as_str());
    assert!(member(&view, c.node_id(leader)).unwrap()["lag"].is_u64());

    // Unsafe or wrong removals are refused with a reason.
    let (s, e) = c
        .call(
            follower,
            Method::DELETE,
            &format!("/admin/members/{follower_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "BelowQuorumSafeSize", "{e}");
    let (s, e) = c.call(0, Method::DELETE, "/admin/members/99", None).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("MemberNotFound"))
    );
    let (s, _) = c.call(0, Method::DELETE, "/admin/members/p1", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, e) = c
        .call(
            0,
            Method::POST,
            "/admin/members",
            Some(json!({"id": 9, "name": "p9", "url": "http://127.0.0.1:1"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = c
        .call(
            0,
            Method::POST,
            "/admin/members",
            Some(json!({"id": follower_id, "name": "other", "url": "https://127.0.0.1:1"})),
        )
        .await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (StatusCode::CONFLICT, &json!("MemberIdInUse"))
    );
    assert_eq!(voters(&c.members(0).await.1).len(), 3);

    // A fourth partition joins as a learner: it catches up, receives the domain and serves
    // reads, without a vote.
    let new = c.add_partition("p3", 4);
    c.spawn(new);
    let spec = json!({"id": 4, "name": "p3", "url": c.url(new), "role": "learner"});
    let (s, view) = change(
        &c,
        follower,
        Method::POST,
        "/admin/members",
        Some(spec.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(member(&view, 4).unwrap()["role"], "learner", "{view}");
    assert_eq!(voters(&view).len(), 3, "{view}");
    assert_eq!(member(&view, 4).unwrap()["domainLoaded"], true, "{view}");
    let kid = kid_path(&v);
    let served = c
        .key_identity(new, "k-before")
        .await
        .expect("the learner serves reads");
    assert_eq!(served.0, kid);
    assert_eq!(c.sign(new, "k-before").await, StatusCode::OK);

    // ... and leaves.
    let (s, view) = change(&c, 0, Method::DELETE, "/admin/members/4", None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert!(member(&view, 4).is_none(), "{view}");
    assert_eq!(voters(&view).len(), 3, "{view}");
    // Removing it again is a no-op; its node id is never given to anyone again.
    let (s, _) = c.call(0, Method::DELETE, "/admin/members/4", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = c.call(0, Method::POST, "/admin/members", Some(spec)).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (StatusCode::CONFLICT, &json!("MemberIdRetired"))
    );
    // Its peer requests are refused by the members.
    for i in 0..3 {
        let r = ask_domain(&c, new, i).await;
        assert_eq!(status_of(&r), Some(403), "partition {i}: {r:?}");
    }
    // The pool serves as before.
    c.create(follower, "k-after")
        .await
        .expect("create after the removal");
    let removals = c
        .audit_records(0)
        .into_iter()
        .filter(|r| r["operation"] == "MemberRemove" && r["memberId"] == 4)
        .count();
    assert_eq!(
        removals, 2,
        "both removal requests are audited on partition 0"
    );

    // With two of three partitions gone the pool cannot commit, but the list still answers
    // and says which members are unreachable.
    c.kill(1);
    c.kill(2);
    let (s, view) = c.members(0).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    for m in view["members"].as_array().unwrap() {
        let id = m["id"].as_u64().unwrap();
        let want = if id == c.node_id(0) {
            "healthy"
        } else {
            "unreachable"
        };
        assert_eq!(m["health"], want, "member {id}: {view}");
    }
    let (s, e) = c
        .call(
            0,
            Method::DELETE,
            &format!("/admin/members/{}", c.node_id(1)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
}
