//! Operator-in-the-loop: the real `keystead-operator run` binary, watch-driven, against the
//! in-repo API emulator (`tests/emulator`). No partitions run (the emulator has no kubelet),
//! so this covers leader election, provisioning of the children, spec changes, soft delete
//! and graceful shutdown — not activation or healing.

mod emulator;

use emulator::Emulator;
use keystead_operator::crd::ManagedHsm;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(60);
const HSM: &str = "keystead.io/v1alpha1/managedhsms";
const STS: &str = "apps/v1/statefulsets";
const SECRETS: &str = "v1/secrets";
const LEASES: &str = "coordination.k8s.io/v1/leases";

/// Wait until `pred` holds, re-checking on every change of the emulator's store.
async fn wait_until(emu: &Emulator, what: &str, pred: impl Fn(&Emulator) -> bool) {
    let mut rx = emu.changes();
    let deadline = Instant::now() + DEADLINE;
    while !pred(emu) {
        tokio::select! {
            r = rx.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    panic!("emulator closed while waiting for {what}");
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("{what}: not reached within {DEADLINE:?}"),
        }
    }
}

fn sts_image(emu: &Emulator) -> Option<String> {
    emu.get(STS, Some("hsm"), "pool").and_then(|s| {
        s["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(String::from)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_binary_provisions_follows_changes_soft_deletes_and_shuts_down() {
    let emu = Emulator::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = emu.router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: emu\n  user:\n    token: emulated\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: emu\n\
             current-context: emu\n"
        ),
    )
    .unwrap();

    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_keystead-operator"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "keystead-system")
        .env("POD_NAME", "operator-0")
        .env("KEYSTEAD_SERVICE_ACCOUNT", "keystead-operator")
        .env("KEYSTEAD_ALLOW_LOOPBACK_STORAGE_ENDPOINTS", "true")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the operator binary starts");

    // Leader election through the Lease.
    wait_until(&emu, "Lease held by operator-0", |e| {
        e.get(LEASES, Some("keystead-system"), "keystead-operator-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "operator-0")
    })
    .await;

    // A test client of its own.
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ManagedHsm> = Api::namespaced(client, "hsm");
    let hsm: ManagedHsm = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
        "metadata": {"name": "pool", "namespace": "hsm"},
        "spec": {"initialAdministrators": ["alice"]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &hsm).await.unwrap();

    // Finalizer, children, status.
    wait_until(&emu, "status Provisioning", |e| {
        e.get(HSM, Some("hsm"), "pool")
            .is_some_and(|h| h["status"]["phase"] == "Provisioning")
    })
    .await;
    let h = emu.get(HSM, Some("hsm"), "pool").unwrap();
    assert_eq!(
        h["metadata"]["finalizers"],
        json!(["keystead.io/soft-delete"])
    );
    assert_eq!(h["status"]["observedGeneration"], 1);
    assert_eq!(
        sts_image(&emu).as_deref(),
        Some("ghcr.io/keystead/keystead-partition:0.1.0")
    );
    let cfg = emu
        .get("v1/configmaps", Some("hsm"), "pool-config")
        .unwrap();
    let p0: Value = serde_json::from_str(cfg["data"]["pool-0.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        p0["initialAdministrators"],
        json!([
            "alice",
            "system:serviceaccount:keystead-system:keystead-operator"
        ])
    );
    for (coll, name) in [
        ("v1/services", "pool"),
        ("v1/services", "pool-peers"),
        ("v1/serviceaccounts", "pool-partition"),
        (SECRETS, "pool-ca"),
        (SECRETS, "pool-tls"),
        ("v1/configmaps", "pool-ca-bundle"),
        ("policy/v1/poddisruptionbudgets", "pool"),
        ("networking.k8s.io/v1/networkpolicies", "pool"),
    ] {
        assert!(
            emu.get(coll, Some("hsm"), name).is_some(),
            "{coll} {name} missing"
        );
    }
    let events = emu
        .store
        .lock()
        .unwrap()
        .objects
        .keys()
        .filter(|k| k.starts_with("events.k8s.io/v1/events|hsm|"))
        .count();
    assert!(events >= 1, "an Event for the Provisioning transition");

    // A spec change is picked up from the watch: the StatefulSet follows, generation observed.
    api.patch(
        "pool",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"image": "ghcr.io/keystead/keystead-partition:0.2.0"}})),
    )
    .await
    .unwrap();
    wait_until(
        &emu,
        "StatefulSet on the new image and generation 2 observed",
        |e| {
            sts_image(e).as_deref() == Some("ghcr.io/keystead/keystead-partition:0.2.0")
                && e.get(HSM, Some("hsm"), "pool")
                    .is_some_and(|h| h["status"]["observedGeneration"] == 2)
        },
    )
    .await;

    // Soft delete: the object goes, the StatefulSet is collected, the CA Secret is retained.
    api.delete("pool", &Default::default()).await.unwrap();
    wait_until(&emu, "ManagedHsm gone", |e| {
        e.get(HSM, Some("hsm"), "pool").is_none()
    })
    .await;
    assert!(
        emu.get(STS, Some("hsm"), "pool").is_none(),
        "the StatefulSet is garbage-collected"
    );
    let ca = emu
        .get(SECRETS, Some("hsm"), "pool-ca")
        .expect("the CA Secret is retained");
    assert!(ca["metadata"]["annotations"]["keystead.io/purge-after"].is_string());
    assert_eq!(
        ca["metadata"]["labels"]["keystead.io/soft-deleted-pool"],
        "pool"
    );
    assert!(ca["metadata"].get("ownerReferences").is_none());

    // An invalid spec (a principal listed twice: the schema cannot say it) gets a clear
    // condition and an Event, and the operator keeps running.
    let bad: ManagedHsm = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
        "metadata": {"name": "bad", "namespace": "hsm"},
        "spec": {"initialAdministrators": ["bob", "bob"]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &bad).await.unwrap();
    wait_until(&emu, "InvalidSpec condition on the invalid pool", |e| {
        e.get(HSM, Some("hsm"), "bad").is_some_and(|h| {
            h["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "InvalidSpec"))
        })
    })
    .await;
    let h = emu.get(HSM, Some("hsm"), "bad").unwrap();
    let cond = h["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason"] == "InvalidSpec")
        .unwrap()
        .clone();
    assert!(
        cond["message"].as_str().unwrap().contains("bob"),
        "the condition says what is wrong: {cond}"
    );
    wait_until(&emu, "an Event for the invalid spec", |e| {
        e.store.lock().unwrap().objects.iter().any(|(k, v)| {
            k.starts_with("events.k8s.io/v1/events|hsm|")
                && v["reason"] == "InvalidSpec"
                && v["regarding"]["name"] == "bad"
        })
    })
    .await;
    assert!(
        emu.get(STS, Some("hsm"), "bad").is_none(),
        "no children for an invalid pool"
    );
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator keeps running"
    );

    // Graceful shutdown on SIGTERM releases the Lease.
    let pid = operator.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(DEADLINE, operator.wait())
        .await
        .expect("exits within the deadline")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let lease = emu
        .get(LEASES, Some("keystead-system"), "keystead-operator-leader")
        .unwrap();
    assert!(
        lease["spec"].get("holderIdentity").is_none(),
        "Lease released: {lease}"
    );
}
