//! Pure tests of the replication plan (`keystead_operator::replication::plan`): validation,
//! the partitions' region configuration, the next admin call for each role and spec (name,
//! demote, promote by token or force), status, the `ReplicationHealthy` condition and the
//! Events of each transition. No API server, no partitions.

use keystead_core::region::{AcceptedRegion, PeerRegionStatus, RegionRole, RegionStatus};
use keystead_operator::conditions::{Reason, Status};
use keystead_operator::crd::{CaConfigMapRef, PeerRegion, ReplicationRole, ReplicationSpec};
use keystead_operator::replication::plan::{self, Step};
use std::collections::BTreeMap;

/// A throw-away CA certificate (public, generated per test run).
fn ca_pem(name: &str) -> String {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&key).unwrap().pem()
}

fn peer(name: &str) -> PeerRegion {
    PeerRegion {
        name: name.into(),
        endpoints: vec![format!("https://{name}.example.com:443")],
        ca_config_map: CaConfigMapRef {
            name: format!("{name}-ca"),
            key: None,
        },
    }
}

/// Region `me` of a topology `me` + `others`, `primary` the primary.
fn spec(me: &str, primary: &str, others: &[&str]) -> ReplicationSpec {
    ReplicationSpec {
        region: me.into(),
        primary: primary.into(),
        promotion_token: None,
        force: None,
        regions: others.iter().map(|o| peer(o)).collect(),
        write_lease_seconds: None,
    }
}

fn primary_view(accepted: &[(&str, &str)]) -> RegionStatus {
    RegionStatus {
        name: Some("east".into()),
        role: RegionRole::Primary,
        epoch: 1,
        primary_index: 40,
        accepted: accepted
            .iter()
            .map(|(n, pem)| AcceptedRegion {
                name: n.to_string(),
                ca_sha256: plan::ca_sha256(pem).unwrap(),
                added: 1,
            })
            .collect(),
        ..RegionStatus::default()
    }
}

fn replica_view(joined: bool, reachable: bool) -> RegionStatus {
    RegionStatus {
        name: Some("west".into()),
        role: RegionRole::Replica,
        epoch: 1,
        primary: Some("east".into()),
        joined,
        applied_primary_index: 38,
        primary_index: 40,
        lag_entries: 2,
        lag_ms: 1234,
        primary_reachable: reachable,
        ..RegionStatus::default()
    }
}

#[test]
fn validation_names_each_problem() {
    assert!(plan::validate(&spec("west", "east", &["east"])).is_empty());
    assert!(plan::validate(&spec("east", "east", &["west", "north"])).is_empty());
    let mut s = spec("West", "nowhere", &["west"]);
    s.regions[0].endpoints = vec!["http://x".into()];
    s.promotion_token = Some("t".into());
    s.force = Some(true);
    let p = plan::validate(&s).join("\n");
    for want in [
        "not valid",
        "neither this region",
        "https://",
        "only for the region named primary",
        "not both",
    ] {
        assert!(p.contains(want), "{want} missing in {p}");
    }
}

#[test]
fn a_replica_starts_with_the_primary_in_its_region_config_a_primary_without() {
    let r = plan::region_config(&spec("west", "east", &["east"]));
    assert_eq!(r.name, "west");
    assert!(r.validate().is_ok());
    let p = r.primary.expect("a replica names its primary");
    assert_eq!(p.name, "east");
    assert_eq!(
        p.endpoints,
        vec!["https://east.example.com:443".to_string()]
    );
    assert!(p.ca_file.ends_with(plan::PRIMARY_CA_FILE));
    let r = plan::region_config(&spec("east", "east", &["west"]));
    assert_eq!((r.name.as_str(), r.primary), ("east", None));
    // The write lease is carried in seconds in the spec, in ms in the partitions' file.
    let mut s = spec("east", "east", &["west"]);
    s.write_lease_seconds = Some(5);
    let r = plan::region_config(&s);
    assert_eq!(r.write_lease_ms, Some(5_000));
    assert!(r.validate().is_ok());
}

#[test]
fn a_primary_names_every_region_whose_ca_it_can_read_and_renames_a_changed_ca() {
    let s = spec("east", "east", &["west", "north"]);
    let west = ca_pem("west");
    let cas = BTreeMap::from([("west".to_string(), west.clone())]);
    assert_eq!(
        plan::next_steps(&s, &Some(primary_view(&[])), &cas),
        vec![Step::Accept {
            name: "west".into(),
            ca_pem: west.clone()
        }],
        "north's CA is unknown: not named"
    );
    assert!(plan::next_steps(&s, &Some(primary_view(&[("west", &west)])), &cas).is_empty());
    let rotated = ca_pem("west-2");
    let cas = BTreeMap::from([("west".to_string(), rotated.clone())]);
    assert_eq!(
        plan::next_steps(&s, &Some(primary_view(&[("west", &west)])), &cas).len(),
        1
    );
    assert!(
        plan::next_steps(&s, &None, &cas).is_empty(),
        "no view, no call"
    );
}

#[test]
fn a_primary_removes_the_regions_the_spec_no_longer_lists() {
    let west = ca_pem("west");
    let north = ca_pem("north");
    let cas = BTreeMap::from([("west".to_string(), west.clone())]);
    // north was named (by an earlier spec or by hand) and is gone from the spec: removed;
    // west stays; the primary's own name is never removed.
    let s = spec("east", "east", &["west"]);
    let view = primary_view(&[("west", &west), ("north", &north), ("east", &west)]);
    assert_eq!(
        plan::next_steps(&s, &Some(view), &cas),
        vec![Step::Remove {
            name: "north".into()
        }]
    );
    // Nothing listed any more: every named region goes.
    let alone = spec("east", "east", &[]);
    let steps = plan::next_steps(&alone, &Some(primary_view(&[("west", &west)])), &cas);
    assert_eq!(
        steps,
        vec![Step::Remove {
            name: "west".into()
        }]
    );
    // A replica removes nothing (it names no region).
    assert!(plan::next_steps(&alone, &Some(replica_view(true, true)), &cas).is_empty());
}

#[test]
fn naming_another_primary_demotes_once_the_successor_is_named() {
    let s = spec("east", "west", &["west"]);
    let west = ca_pem("west");
    let cas = BTreeMap::from([("west".to_string(), west.clone())]);
    let steps = plan::next_steps(&s, &Some(primary_view(&[])), &cas);
    assert_eq!(
        steps.len(),
        1,
        "first named, demoted on the next pass: {steps:?}"
    );
    let steps = plan::next_steps(&s, &Some(primary_view(&[("west", &west)])), &cas);
    assert_eq!(
        steps,
        vec![Step::Demote {
            to: "west".into(),
            endpoints: vec!["https://west.example.com:443".into()]
        }]
    );
    let mut demoted = primary_view(&[("west", &west)]);
    demoted.demoted_to = Some("west".into());
    // Until every region has applied the last index, no token: still demoting, and the
    // demotion is not made again.
    assert!(plan::next_steps(&s, &Some(demoted.clone()), &cas).is_empty());
    let c = plan::condition(&s, &Some(demoted.clone()), &[], None);
    assert_eq!((c.status, c.reason), (Status::False, Reason::Demoting));
    assert!(c.message.contains("every region"), "{}", c.message);
    demoted.demotion_token = Some("tok".into());
    assert!(plan::next_steps(&s, &Some(demoted.clone()), &cas).is_empty());
    let st = plan::status(&s, &demoted);
    assert_eq!(st.role, Some(ReplicationRole::Demoted));
    assert_eq!(st.demotion_token.as_deref(), Some("tok"));
    let c = plan::condition(&s, &Some(demoted), &[], None);
    assert_eq!((c.status, c.reason), (Status::False, Reason::Demoted));
}

#[test]
fn a_replica_named_primary_promotes_with_the_token_or_by_force_and_waits_without() {
    let mut s = spec("west", "west", &["east"]);
    let v = Some(replica_view(true, true));
    assert!(plan::next_steps(&s, &v, &BTreeMap::new()).is_empty());
    let c = plan::condition(&s, &v, &[], None);
    assert_eq!(c.reason, Reason::WaitingForPromotion);
    s.promotion_token = Some("tok".into());
    assert_eq!(
        plan::next_steps(&s, &v, &BTreeMap::new()),
        vec![Step::Promote {
            token: "tok".into()
        }]
    );
    s.promotion_token = None;
    s.force = Some(true);
    assert_eq!(
        plan::next_steps(&s, &v, &BTreeMap::new()),
        vec![Step::ForcePromote]
    );
    assert!(
        plan::next_steps(&s, &Some(replica_view(false, true)), &BTreeMap::new()).is_empty(),
        "a region that never joined has nothing to promote"
    );
    // Once promoted: a primary, nothing more to call.
    let mut promoted = primary_view(&[]);
    promoted.epoch = 2;
    assert!(plan::next_steps(&s, &Some(promoted), &BTreeMap::new()).is_empty());
}

#[test]
fn a_replica_reports_its_lag_and_is_healthy_while_it_follows() {
    let s = spec("west", "east", &["east"]);
    let st = plan::status(&s, &replica_view(true, true));
    assert_eq!(st.role, Some(ReplicationRole::Replica));
    assert_eq!(st.primary.as_deref(), Some("east"));
    assert_eq!(
        (
            st.applied_primary_index,
            st.lag_entries,
            st.lag_seconds.as_deref()
        ),
        (Some(38), Some(2), Some("1.234"))
    );
    let c = plan::condition(&s, &Some(replica_view(true, true)), &[], None);
    assert_eq!((c.status, c.reason), (Status::True, Reason::Following));
    let c = plan::condition(&s, &Some(replica_view(false, true)), &[], None);
    assert_eq!((c.status, c.reason), (Status::False, Reason::Joining));
    let c = plan::condition(&s, &Some(replica_view(true, false)), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::False, Reason::PrimaryUnreachable)
    );
    assert!(c.message.contains("promote"), "{}", c.message);
    // Removed on the primary: it answers, but refuses this region.
    let refused = RegionStatus {
        primary_refuses: true,
        ..replica_view(true, true)
    };
    let c = plan::condition(&s, &Some(refused.clone()), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::False, Reason::PrimaryRefuses)
    );
    assert!(c.message.contains("name this region"), "{}", c.message);
    assert_eq!(plan::status(&s, &refused).primary_refuses, Some(true));
    assert_eq!(st.primary_refuses, None);
    // Removed and purged (the primary's notice verified): said so, and an Event.
    let purged = RegionStatus {
        removed_by: Some("east".into()),
        ..refused.clone()
    };
    let c = plan::condition(&s, &Some(purged.clone()), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::False, Reason::RemovedByPrimary)
    );
    assert!(c.message.contains("purged"), "{}", c.message);
    let was = plan::status(&s, &refused);
    let now = plan::status(&s, &purged);
    assert_eq!(now.removed_by.as_deref(), Some("east"));
    let notes = plan::events(Some(&was), &now, &s);
    assert!(
        notes
            .iter()
            .any(|(warning, r, _)| *warning && *r == "RegionPurged"),
        "{notes:?}"
    );
    let c = plan::condition(&s, &None, &[], None);
    assert_eq!(c.reason, Reason::PartitionsUnreachable);
    let c = plan::condition(&s, &Some(replica_view(true, true)), &["east".into()], None);
    assert_eq!(c.reason, Reason::RegionCaMissing);
}

#[test]
fn a_primary_is_healthy_once_every_region_follows_and_reports_each_lag() {
    let s = spec("east", "east", &["west", "north"]);
    let mut v = primary_view(&[("west", &ca_pem("w")), ("north", &ca_pem("n"))]);
    v.regions = vec![PeerRegionStatus {
        name: "west".into(),
        acknowledged_index: 37,
        lag_entries: 3,
        last_seen_seconds_ago: Some(1),
    }];
    let c = plan::condition(&s, &Some(v.clone()), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::False, Reason::RegionNotFollowing)
    );
    assert!(c.message.contains("north"), "{}", c.message);
    let st = plan::status(&s, &v);
    assert_eq!(st.regions.len(), 2);
    assert_eq!(
        (st.regions[0].name.as_str(), st.regions[0].lag_entries),
        ("west", Some(3))
    );
    assert_eq!(st.regions[1].acknowledged_index, None);
    v.regions.push(PeerRegionStatus {
        name: "north".into(),
        acknowledged_index: 40,
        lag_entries: 0,
        last_seen_seconds_ago: Some(0),
    });
    let c = plan::condition(&s, &Some(v.clone()), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::True, Reason::RegionsFollowing)
    );
    let c = plan::condition(&s, &Some(v.clone()), &[], Some("naming a region: 403"));
    assert_eq!(c.reason, Reason::RegionCallFailed);
    // With a write lease no region polled within: not healthy, and said in the status.
    v.write_lease_ms = Some(5000);
    v.writes_refused_by_lease = true;
    let c = plan::condition(&s, &Some(v.clone()), &[], None);
    assert_eq!(
        (c.status, c.reason),
        (Status::False, Reason::WriteLeaseExpired)
    );
    assert_eq!(plan::status(&s, &v).write_lease_expired, Some(true));
}

#[test]
fn events_mark_a_join_a_demotion_a_switchover_a_failover_and_discarded_writes() {
    let s = spec("west", "east", &["east"]);
    let before = plan::status(&s, &replica_view(false, true));
    let after = plan::status(&s, &replica_view(true, true));
    let reasons = |e: Vec<plan::Note>| e.into_iter().map(|(_, r, _)| r).collect::<Vec<_>>();
    assert_eq!(
        reasons(plan::events(Some(&before), &after, &s)),
        vec!["RegionJoined"]
    );
    assert!(
        plan::events(Some(&after), &after, &s).is_empty(),
        "no change, no Event"
    );

    let mut promoted_spec = spec("west", "west", &["east"]);
    promoted_spec.promotion_token = Some("tok".into());
    let promoted = plan::status(&promoted_spec, &primary_view(&[]));
    let e = plan::events(Some(&after), &promoted, &promoted_spec);
    assert_eq!(e[0].1, "Switchover");
    assert!(!e[0].0, "a switchover is Normal");
    promoted_spec.promotion_token = None;
    promoted_spec.force = Some(true);
    let e = plan::events(Some(&after), &promoted, &promoted_spec);
    assert_eq!((e[0].0, e[0].1), (true, "Failover"));

    let a = spec("east", "west", &["west"]);
    let mut demoted = primary_view(&[]);
    demoted.demoted_to = Some("west".into());
    let was = plan::status(&a, &primary_view(&[]));
    let now = plan::status(&a, &demoted);
    assert_eq!(reasons(plan::events(Some(&was), &now, &a)), vec!["Demoted"]);

    let mut fenced = replica_view(true, true);
    fenced.discarded_writes = vec!["lost/abc".into(), "roleAssignment/x".into()];
    let now = plan::status(&a, &fenced);
    let e = plan::events(Some(&after), &now, &a);
    let d = e
        .iter()
        .find(|(_, r, _)| *r == "DiscardedWrites")
        .expect("listed");
    assert!(
        d.0 && d.2.contains("lost/abc") && d.2.contains("2 change"),
        "{}",
        d.2
    );
}

#[test]
fn the_network_policy_opens_the_other_regions_ports_not_open_already() {
    let mut s = spec("east", "east", &["west", "north"]);
    s.regions[0].endpoints = vec![
        "https://west.example.com:8443/".into(),
        "https://10.0.0.1:9443".into(),
    ];
    s.regions[1].endpoints = vec![
        "https://north.example.com".into(),
        "https://n:6443".into(),
        "https://[fd00::1]:7443".into(),
    ];
    assert_eq!(plan::endpoint_ports(Some(&s)), vec![7443, 8443, 9443]);
    assert!(plan::endpoint_ports(None).is_empty());
}

#[test]
fn a_replica_whose_spec_names_another_primary_follows_it_once_its_ca_is_known() {
    // North follows east; east was lost and west promoted by a failover; north's spec now
    // names west.
    let s = spec("north", "west", &["east", "west"]);
    let mut v = replica_view(true, false);
    v.name = Some("north".into());
    assert!(
        plan::next_steps(&s, &Some(v.clone()), &BTreeMap::new()).is_empty(),
        "nothing without west's CA"
    );
    let west = ca_pem("west");
    let cas = BTreeMap::from([("west".to_string(), west.clone())]);
    assert_eq!(
        plan::next_steps(&s, &Some(v.clone()), &cas),
        vec![Step::Follow {
            to: "west".into(),
            endpoints: vec!["https://west.example.com:443".into()],
            ca_pem: west.clone(),
        }]
    );
    // Following west already: nothing more.
    v.primary = Some("west".into());
    assert!(plan::next_steps(&s, &Some(v.clone()), &cas).is_empty());
    // A region that never joined has nothing to re-point.
    let mut fresh = replica_view(false, false);
    fresh.name = Some("north".into());
    assert!(plan::next_steps(&s, &Some(fresh), &cas).is_empty());
}
