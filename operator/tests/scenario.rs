//! Scenario tests of the reconcilers against a mocked API server: the order of API calls of a
//! first reconcile, an idle reconcile that writes nothing, status updates, invalid specs.
//!
//! The mock is a `tower` service behind `kube::Client::new`: it records every request
//! (method, path, body) and answers from an in-memory object map (GET → stored object or
//! 404, server-side apply PATCH → stores the body, status PATCH → stored, Event POST → 201).
//! Exact API-server semantics (resourceVersion conflicts, SSA field ownership) are out of
//! scope here on purpose.

use axum::http::{Method, Request, Response, StatusCode};
use keystead_operator::context::Context;
use keystead_operator::context::Settings;
use keystead_operator::crd::{HsmPhase, ManagedHsm, ManagedHsmStatus};
use keystead_operator::hsm::plan::lifecycle::HSM_FINALIZER;
use keystead_operator::hsm::{controller, soft_delete, write};
use keystead_operator::metrics::Metrics;
use keystead_operator::pool::client::TokenSource;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    method: String,
    path: String,
}

impl Call {
    fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct World {
    objects: BTreeMap<String, Value>,
    calls: Vec<(Call, Value)>,
}

type Shared = Arc<Mutex<World>>;

fn status_404() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

async fn handle(
    world: Shared,
    req: Request<Body>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut w = world.lock().unwrap();
    w.calls.push((
        Call {
            method: method.to_string(),
            path: path.clone(),
        },
        body.clone(),
    ));
    let resp = match method {
        Method::GET => match w.objects.get(&path) {
            Some(v) => respond(StatusCode::OK, v),
            None if is_collection(&path) => {
                // A list: the stored objects one segment below (label selectors ignored).
                let items: Vec<Value> = w
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.strip_prefix(&format!("{path}/"))
                            .is_some_and(|rest| !rest.contains('/'))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            None => respond(StatusCode::NOT_FOUND, &status_404()),
        },
        Method::PATCH => {
            if let Some(base) = path.strip_suffix("/status") {
                let mut obj = w.objects.get(base).cloned().unwrap_or_else(|| json!({}));
                obj["status"] = body["status"].clone();
                w.objects.insert(base.to_string(), obj.clone());
                respond(StatusCode::OK, &obj)
            } else {
                let mut obj = body.clone();
                if obj.get("metadata").is_none() {
                    obj = w.objects.get(&path).cloned().unwrap_or(json!({}));
                } else if obj.get("apiVersion").is_none()
                    && let Some(existing) = w.objects.get(&path)
                {
                    // A merge patch (not an apply): merged into the stored object.
                    let mut merged = existing.clone();
                    merge(&mut merged, body.clone());
                    obj = merged;
                }
                w.objects.insert(path.clone(), obj.clone());
                respond(StatusCode::OK, &obj)
            }
        }
        Method::POST => respond(StatusCode::CREATED, &body),
        // A deletion answers with the object (as while finalizers run) or a success Status.
        Method::DELETE => match w.objects.get(&path) {
            Some(v) => respond(StatusCode::OK, v),
            None => respond(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
        },
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, &status_404()),
    };
    Ok(resp)
}

/// A namespaced collection path (`/api/v1/namespaces/ns/plural`,
/// `/apis/group/version/namespaces/ns/plural`).
fn is_collection(path: &str) -> bool {
    let n = path.split('/').filter(|s| !s.is_empty()).count();
    (path.starts_with("/apis/") && n == 6) || (path.starts_with("/api/") && n == 5)
}

fn mock_client(world: Shared) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<Body>| handle(world.clone(), req));
    kube::Client::new(svc, "default")
}

fn context(client: kube::Client) -> Arc<Context> {
    context_with(client, Settings::default())
}

fn context_with(client: kube::Client, settings: Settings) -> Arc<Context> {
    let reporter = Reporter {
        controller: "keystead-operator".into(),
        instance: Some("test".into()),
    };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        metrics: Metrics::default(),
        settings,
        tokens: TokenSource::new(client.clone(), None),
        read_partitions: false,
        caches: Default::default(),
        client,
    })
}

fn pool(finalized: bool, name: &str) -> ManagedHsm {
    let mut h: ManagedHsm = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1",
        "kind": "ManagedHsm",
        "metadata": {"name": name, "namespace": "hsm", "uid": "5e1c1a9e-0000-4000-8000-000000000001", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"initialAdministrators": ["alice"]},
    }))
    .unwrap();
    if finalized {
        h.metadata.finalizers = Some(vec![HSM_FINALIZER.into()]);
    }
    h
}

const HSM_PATH: &str = "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool";

fn seed(world: &Shared, h: &ManagedHsm) {
    world
        .lock()
        .unwrap()
        .objects
        .insert(HSM_PATH.into(), serde_json::to_value(h).unwrap());
}

async fn reconcile_with_deadline(
    h: ManagedHsm,
    ctx: Arc<Context>,
) -> Result<kube::runtime::controller::Action, keystead_operator::context::Error> {
    tokio::time::timeout(
        Duration::from_secs(30),
        controller::reconcile(Arc::new(h), ctx),
    )
    .await
    .expect("reconcile finished within its deadline")
}

fn calls(world: &Shared) -> Vec<Call> {
    world
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(c, _)| c.clone())
        .collect()
}

fn c(method: &str, path: &str) -> Call {
    Call {
        method: method.into(),
        path: path.into(),
    }
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_and_nothing_else() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    seed(&world, &pool(false, "pool"));
    reconcile_with_deadline(pool(false, "pool"), ctx)
        .await
        .unwrap();
    world
        .lock()
        .unwrap()
        .calls
        .retain(|(c, _)| c.method != "GET");
    let w = world.lock().unwrap();
    assert_eq!(w.calls.len(), 1, "{:?}", w.calls);
    let (call, body) = &w.calls[0];
    assert_eq!(
        call,
        &c(
            "PATCH",
            "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool"
        )
    );
    assert!(body.to_string().contains(HSM_FINALIZER), "{body}");
}

#[tokio::test]
async fn provisioning_reconcile_applies_children_in_order_then_idles() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let h = pool(true, "pool");
    seed(&world, &h);
    reconcile_with_deadline(h.clone(), ctx.clone())
        .await
        .unwrap();

    let core = "/api/v1/namespaces/hsm";
    let expected_writes_in_order = vec![
        c("PATCH", &format!("{core}/serviceaccounts/pool-partition")),
        c("PATCH", &format!("{core}/services/pool-peers")),
        c("PATCH", &format!("{core}/services/pool")),
        c("PATCH", &format!("{core}/secrets/pool-ca")),
        c("PATCH", &format!("{core}/secrets/pool-tls")),
        c("PATCH", &format!("{core}/configmaps/pool-ca-bundle")),
        c("PATCH", &format!("{core}/configmaps/pool-config")),
        c("PATCH", "/apis/apps/v1/namespaces/hsm/statefulsets/pool"),
        c(
            "PATCH",
            "/apis/policy/v1/namespaces/hsm/poddisruptionbudgets/pool",
        ),
        c(
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/hsm/networkpolicies/pool",
        ),
        c("POST", "/apis/events.k8s.io/v1/namespaces/hsm/events"),
        c(
            "PATCH",
            "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool/status",
        ),
    ];
    let all = calls(&world);
    let writes: Vec<Call> = all.iter().filter(|c| c.is_write()).cloned().collect();
    assert_eq!(writes, expected_writes_in_order);
    // Every write was preceded by reads only: the first calls check for retained data and TLS.
    assert_eq!(all[0], c("GET", &format!("{core}/secrets/pool-ca")));
    // The pool's CA and TLS Secrets are read once per reconcile.
    for secret in ["pool-ca", "pool-tls"] {
        let read = c("GET", &format!("{core}/secrets/{secret}"));
        assert_eq!(all.iter().filter(|x| **x == read).count(), 1, "{secret}");
    }
    // Pods and volumes are read for the status.
    for p in ["pool-0", "pool-1", "pool-2"] {
        assert!(all.contains(&c("GET", &format!("{core}/pods/{p}"))));
        assert!(all.contains(&c(
            "GET",
            &format!("{core}/persistentvolumeclaims/data-{p}")
        )));
    }

    // The applies are server-side applies with the operator's field manager, with an owner.
    {
        let w = world.lock().unwrap();
        let (_, sts) = w
            .calls
            .iter()
            .find(|(c, _)| c.path.ends_with("/statefulsets/pool") && c.method == "PATCH")
            .unwrap();
        assert_eq!(sts["kind"], "StatefulSet");
        assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "ManagedHsm");
        assert!(sts["metadata"]["annotations"][write::APPLIED_HASH_ANNOTATION].is_string());
    }

    // The status written: Provisioning, with endpoint and CA bundle.
    let status: ManagedHsmStatus = {
        let w = world.lock().unwrap();
        serde_json::from_value(
            w.objects["/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool"]["status"]
                .clone(),
        )
        .unwrap()
    };
    assert_eq!(status.phase, Some(HsmPhase::Provisioning));
    assert_eq!(status.ready_partitions.as_deref(), Some("0/3"));
    assert_eq!(status.endpoint.as_deref(), Some("https://pool.hsm.svc"));
    assert_eq!(
        status.ca_bundle_config_map.as_deref(),
        Some("pool-ca-bundle")
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.conditions.len(), 4);

    // Idle: the same object with the status it was given → no write at all.
    world.lock().unwrap().calls.clear();
    let mut again = h.clone();
    again.status = Some(status);
    reconcile_with_deadline(again, ctx).await.unwrap();
    let writes: Vec<Call> = calls(&world).into_iter().filter(Call::is_write).collect();
    assert_eq!(writes, vec![], "an idle reconcile must not write");
    assert!(!calls(&world).is_empty(), "it still reads");
}

#[tokio::test]
async fn status_changes_are_written_when_pods_become_ready() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let h = pool(true, "pool");
    seed(&world, &h);
    reconcile_with_deadline(h.clone(), ctx.clone())
        .await
        .unwrap();
    let status: ManagedHsmStatus = {
        let w = world.lock().unwrap();
        serde_json::from_value(
            w.objects["/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool"]["status"]
                .clone(),
        )
        .unwrap()
    };
    // A pod appears (not Ready): partitions' messages change → one status write, no child write.
    world.lock().unwrap().objects.insert(
        "/api/v1/namespaces/hsm/pods/pool-0".into(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pool-0", "namespace": "hsm"},
               "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    world.lock().unwrap().calls.clear();
    let mut again = h.clone();
    again.status = Some(status);
    reconcile_with_deadline(again, ctx).await.unwrap();
    let writes: Vec<Call> = calls(&world).into_iter().filter(Call::is_write).collect();
    assert_eq!(
        writes,
        vec![c(
            "PATCH",
            "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool/status"
        )]
    );
    let w = world.lock().unwrap();
    let st = &w.objects["/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool"]["status"];
    assert_eq!(st["partitions"][0]["message"], "pod is not Ready");
    assert_eq!(st["partitions"][1]["message"], "pod does not exist");
}

#[tokio::test]
async fn invalid_spec_writes_a_condition_and_an_event_once() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let mut h = pool(true, "pool");
    h.spec.tls.renew_before_days = 200;
    seed(&world, &h);
    reconcile_with_deadline(h.clone(), ctx.clone())
        .await
        .unwrap();
    let writes: Vec<Call> = calls(&world).into_iter().filter(Call::is_write).collect();
    assert_eq!(
        writes,
        vec![
            c(
                "PATCH",
                "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool/status"
            ),
            c("POST", "/apis/events.k8s.io/v1/namespaces/hsm/events"),
        ]
    );
    let status: ManagedHsmStatus = {
        let w = world.lock().unwrap();
        serde_json::from_value(
            w.objects["/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool"]["status"]
                .clone(),
        )
        .unwrap()
    };
    assert_eq!(status.phase, Some(HsmPhase::Failed));
    assert_eq!(status.conditions[0].reason, "InvalidSpec");
    assert!(status.conditions[0].message.contains("renewBeforeDays"));
    // No child was created for an invalid pool.
    assert!(
        !calls(&world)
            .iter()
            .any(|c| c.path.contains("statefulsets"))
    );

    world.lock().unwrap().calls.clear();
    h.status = Some(status);
    reconcile_with_deadline(h, ctx).await.unwrap();
    assert_eq!(calls(&world).into_iter().filter(Call::is_write).count(), 0);
}

#[tokio::test]
async fn soft_delete_detaches_and_marks_the_retained_data() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let h = pool(true, "pool");
    seed(&world, &h);
    reconcile_with_deadline(h.clone(), ctx.clone())
        .await
        .unwrap();
    world.lock().unwrap().objects.insert(
        "/api/v1/namespaces/hsm/persistentvolumeclaims/data-pool-0".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-pool-0", "namespace": "hsm"}}),
    );
    world.lock().unwrap().calls.clear();
    let mut deleting = h.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
    reconcile_with_deadline(deleting, ctx).await.unwrap();
    let w = world.lock().unwrap();
    let patches: Vec<&(Call, Value)> = w
        .calls
        .iter()
        .filter(|(c, _)| c.method == "PATCH")
        .collect();
    let paths: Vec<&str> = patches.iter().map(|(c, _)| c.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/api/v1/namespaces/hsm/secrets/pool-ca",
            "/api/v1/namespaces/hsm/secrets/pool-tls",
            "/api/v1/namespaces/hsm/persistentvolumeclaims/data-pool-0",
            "/apis/keystead.io/v1alpha1/namespaces/hsm/managedhsms/pool",
        ]
    );
    let (_, body) = patches[0];
    assert_eq!(
        body["metadata"]["annotations"]["keystead.io/purge-after"],
        "2026-04-01T00:00:00Z"
    );
    assert_eq!(body["metadata"]["ownerReferences"], Value::Null);
    assert_eq!(
        body["metadata"]["labels"]["keystead.io/soft-deleted-pool"],
        "pool"
    );
    // The last patch removes the finalizer.
    let (_, fin) = patches[3];
    assert!(
        fin.to_string().contains("remove") || fin.to_string().contains("finalizers"),
        "{fin}"
    );
}

#[tokio::test]
async fn purge_sweep_deletes_only_what_is_due() {
    let world = Shared::default();
    let client = mock_client(world.clone());
    let secret = |name: &str, after: &str, protected: &str, requested: bool| {
        let mut ann =
            json!({"keystead.io/purge-after": after, "keystead.io/purge-protection": protected});
        if requested {
            ann["keystead.io/purge-requested"] = json!("true");
        }
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": "hsm", "labels": {"keystead.io/soft-deleted-pool": "pool"}, "annotations": ann}})
    };
    world.lock().unwrap().objects.insert(
        "/api/v1/secrets".into(),
        json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": [
            secret("expired", "2020-01-01T00:00:00Z", "true", false),
            secret("protected-early", "2999-01-01T00:00:00Z", "true", true),
            secret("unprotected-early", "2999-01-01T00:00:00Z", "false", true),
            secret("not-due", "2999-01-01T00:00:00Z", "false", false),
        ]}),
    );
    world.lock().unwrap().objects.insert(
        "/api/v1/persistentvolumeclaims".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": []}),
    );
    let n = tokio::time::timeout(Duration::from_secs(30), soft_delete::purge_sweep(&client))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2);
    let deletes: Vec<Call> = calls(&world)
        .into_iter()
        .filter(|c| c.method == "DELETE")
        .collect();
    assert_eq!(
        deletes,
        vec![
            c("DELETE", "/api/v1/namespaces/hsm/secrets/expired"),
            c("DELETE", "/api/v1/namespaces/hsm/secrets/unprotected-early")
        ]
    );
}

#[tokio::test]
async fn deleting_a_refused_pool_does_not_touch_the_retained_data() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let h = pool(true, "pool");
    seed(&world, &h);
    let retained = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pool-ca", "namespace": "hsm",
        "annotations": {"keystead.io/purge-after": "2026-02-01T00:00:00Z", "keystead.io/purge-protection": "true"},
        "labels": {"keystead.io/soft-deleted-pool": "pool"}}});
    world.lock().unwrap().objects.insert(
        "/api/v1/namespaces/hsm/secrets/pool-ca".into(),
        retained.clone(),
    );
    // Re-created without recover: refused.
    reconcile_with_deadline(h.clone(), ctx.clone())
        .await
        .unwrap();
    let status: ManagedHsmStatus = {
        let w = world.lock().unwrap();
        serde_json::from_value(w.objects[HSM_PATH]["status"].clone()).unwrap()
    };
    assert_eq!(status.phase, Some(HsmPhase::Failed));
    assert_eq!(status.conditions[0].reason, "SoftDeletedPoolExists");
    assert!(
        !calls(&world)
            .iter()
            .any(|c| c.path.contains("statefulsets"))
    );
    // Deleting the refused object leaves the retained Secret exactly as it was.
    world.lock().unwrap().calls.clear();
    let mut deleting = h.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-15T00:00:00Z".parse().unwrap(),
        ));
    reconcile_with_deadline(deleting, ctx).await.unwrap();
    assert!(
        !calls(&world)
            .iter()
            .any(|c| c.method == "PATCH" && c.path.contains("/secrets/"))
    );
    assert_eq!(
        world.lock().unwrap().objects["/api/v1/namespaces/hsm/secrets/pool-ca"],
        retained
    );
}

#[tokio::test]
async fn recovering_a_pool_unmarks_its_retained_data_reading_the_ca_secret_once() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let mut h = pool(true, "pool");
    h.spec.recover = true;
    seed(&world, &h);
    let ca = "/api/v1/namespaces/hsm/secrets/pool-ca";
    world.lock().unwrap().objects.insert(
        ca.into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pool-ca", "namespace": "hsm",
            "annotations": {"keystead.io/purge-after": "2026-02-01T00:00:00Z"},
            "labels": {"keystead.io/soft-deleted-pool": "pool"}}}),
    );
    reconcile_with_deadline(h, ctx).await.unwrap();
    let all = calls(&world);
    assert_eq!(all.iter().filter(|x| **x == c("GET", ca)).count(), 1);
    // First the soft-delete marks go (a merge patch), then the Secret is applied.
    let patches: Vec<Value> = world
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(x, _)| *x == c("PATCH", ca))
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(patches[0].get("kind").is_none());
    assert!(patches[0]["metadata"]["annotations"]["keystead.io/purge-after"].is_null());
    assert!(
        patches[0]["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key("keystead.io/purge-after")
    );
    assert_eq!(patches[1]["kind"], "Secret");
}

// ---------------------------------------------------------------------------------------
// Backup, Restore, BackupSchedule
// ---------------------------------------------------------------------------------------

const KS: &str = "/apis/keystead.io/v1alpha1/namespaces/hsm";

fn backup_obj(name: &str, extra: Value) -> keystead_operator::crd::Backup {
    let mut v = json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "hsm", "uid": format!("uid-{name}"), "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": "2026-03-01T00:00:00Z"},
        "spec": {"hsmRef": {"name": "pool"},
                 "destination": {"s3": {"bucket": "bk", "credentials": {"name": "s3-creds"}}}},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

/// A JSON merge patch (RFC 7386): `null` removes the key.
fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

fn put(world: &Shared, path: &str, v: Value) {
    world.lock().unwrap().objects.insert(path.into(), v);
}

fn writes(world: &Shared) -> Vec<Call> {
    calls(world).into_iter().filter(Call::is_write).collect()
}

fn stored_status(world: &Shared, path: &str) -> Value {
    world.lock().unwrap().objects[path]["status"].clone()
}

async fn deadline<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("reconcile finished within its deadline")
}

#[tokio::test]
async fn a_backup_waits_with_typed_reasons_and_writes_only_on_change() {
    use keystead_operator::backup::take::reconcile_backup;
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let path = format!("{KS}/backups/b1");
    let b = backup_obj("b1", json!({}));
    put(&world, &path, serde_json::to_value(&b).unwrap());

    // 1. No credentials Secret: Pending/CredentialsNotFound, one status write + one Event.
    deadline(reconcile_backup(Arc::new(b.clone()), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(
        writes(&world),
        vec![
            c("PATCH", &format!("{path}/status")),
            c("POST", "/apis/events.k8s.io/v1/namespaces/hsm/events"),
        ]
    );
    let st = stored_status(&world, &path);
    assert_eq!(st["phase"], "Pending");
    assert_eq!(st["conditions"][0]["type"], "Succeeded");
    assert_eq!(st["conditions"][0]["status"], "Unknown");
    assert_eq!(st["conditions"][0]["reason"], "CredentialsNotFound");
    assert!(st.get("jobId").is_none());

    // 2. The same state again: reads only.
    world.lock().unwrap().calls.clear();
    let mut again = b.clone();
    again.status = serde_json::from_value(st).unwrap();
    deadline(reconcile_backup(Arc::new(again.clone()), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(writes(&world), vec![], "an unchanged wait writes nothing");

    // 3. Credentials exist (values never reach status or events), the pool does not.
    put(
        &world,
        "/api/v1/namespaces/hsm/secrets/s3-creds",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "hsm"},
               "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "dG9wLXNlY3JldA=="}}),
    );
    world.lock().unwrap().calls.clear();
    deadline(reconcile_backup(Arc::new(again.clone()), ctx.clone()))
        .await
        .unwrap();
    let st = stored_status(&world, &path);
    assert_eq!(st["conditions"][0]["reason"], "PoolNotFound");

    // 4. The pool exists but is not activated.
    let mut h = pool(true, "pool");
    seed(&world, &h);
    again.status = serde_json::from_value(st).unwrap();
    deadline(reconcile_backup(Arc::new(again.clone()), ctx.clone()))
        .await
        .unwrap();
    let st = stored_status(&world, &path);
    assert_eq!(st["conditions"][0]["reason"], "PoolNotReady");

    // 5. Activated with a Ready partition: the operator needs its own token; without an
    //    identity it cannot get one → PoolUnreachable, retried, no job started.
    h.status = Some(serde_json::from_value(json!({
        "conditions": [{"type": "SecurityDomainActivated", "status": "True", "reason": "Activated",
                        "message": "", "lastTransitionTime": "2026-03-01T00:00:00Z"}],
        "partitions": [{"name": "pool-0", "ready": true}],
    })).unwrap());
    seed(&world, &h);
    put(
        &world,
        "/api/v1/namespaces/hsm/configmaps/pool-ca-bundle",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pool-ca-bundle", "namespace": "hsm"},
               "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"}}),
    );
    again.status = serde_json::from_value(st).unwrap();
    world.lock().unwrap().calls.clear();
    deadline(reconcile_backup(Arc::new(again.clone()), ctx.clone()))
        .await
        .unwrap();
    let st = stored_status(&world, &path);
    assert_eq!(st["conditions"][0]["reason"], "PoolUnreachable", "{st}");
    assert_eq!(st["phase"], "Pending");
    let w = world.lock().unwrap();
    let everything: String = w.calls.iter().map(|(_, b)| b.to_string()).collect();
    assert!(
        !everything.contains("top-secret"),
        "credentials never appear in a status or an Event"
    );
}

#[tokio::test]
async fn a_restore_follows_its_backup_and_fails_cleanly_when_it_failed() {
    use keystead_operator::backup::restore::reconcile_restore;
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let path = format!("{KS}/restores/r1");
    let r: keystead_operator::crd::Restore = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Restore",
        "metadata": {"name": "r1", "namespace": "hsm", "uid": "uid-r1", "generation": 1, "resourceVersion": "1"},
        "spec": {"hsmRef": {"name": "pool"}, "backupName": "b1"},
    }))
    .unwrap();
    put(&world, &path, serde_json::to_value(&r).unwrap());

    deadline(reconcile_restore(Arc::new(r.clone()), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(
        stored_status(&world, &path)["conditions"][0]["reason"],
        "BackupNotFound"
    );

    let running = backup_obj("b1", json!({"status": {"phase": "Running"}}));
    put(
        &world,
        &format!("{KS}/backups/b1"),
        serde_json::to_value(&running).unwrap(),
    );
    deadline(reconcile_restore(Arc::new(r.clone()), ctx.clone()))
        .await
        .unwrap();
    let st = stored_status(&world, &path);
    assert_eq!(st["conditions"][0]["reason"], "BackupNotReady");
    assert_eq!(st["phase"], "Pending");

    let failed = backup_obj(
        "b1",
        json!({"status": {"phase": "Failed", "error": "StorageError: gone"}}),
    );
    put(
        &world,
        &format!("{KS}/backups/b1"),
        serde_json::to_value(&failed).unwrap(),
    );
    world.lock().unwrap().calls.clear();
    let mut again = r.clone();
    again.status = serde_json::from_value(st).unwrap();
    deadline(reconcile_restore(Arc::new(again), ctx.clone()))
        .await
        .unwrap();
    let st = stored_status(&world, &path);
    assert_eq!(st["phase"], "Failed");
    assert_eq!(st["conditions"][0]["status"], "False");
    assert_eq!(st["conditions"][0]["reason"], "SourceBackupFailed");
    let w = world.lock().unwrap();
    let (_, ev) = w
        .calls
        .iter()
        .find(|(c, _)| c.path.ends_with("/events"))
        .expect("an Event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "SourceBackupFailed");
}

fn schedule_obj(extra: Value) -> keystead_operator::crd::BackupSchedule {
    let mut v = json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": "hsm", "uid": "uid-sched", "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"hsmRef": {"name": "pool"}, "schedule": "*/5 * * * *",
                 "destination": {"filesystem": {"claimName": "hsm-backups"}},
                 "retention": {"maxCount": 2}},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn owned_backup(name: &str, phase: &str, at: &str) -> Value {
    json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "hsm", "uid": format!("uid-{name}"),
                     "creationTimestamp": at,
                     "labels": {"keystead.io/backup-schedule": "nightly"},
                     "annotations": {"keystead.io/scheduled-time": at},
                     "ownerReferences": [{"apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
                                          "name": "nightly", "uid": "uid-sched", "controller": true}],
                     "finalizers": ["keystead.io/backup-folder"]},
        "spec": {"hsmRef": {"name": "pool"}, "destination": {"filesystem": {"claimName": "hsm-backups"}}},
        "status": {"phase": phase, "completionTime": at},
    })
}

#[tokio::test]
async fn a_schedule_expires_old_backups_then_creates_an_owned_one_with_the_finalizer() {
    use keystead_operator::backup::schedule::reconcile_schedule;
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let s = schedule_obj(json!({}));
    let spath = format!("{KS}/backupschedules/nightly");
    put(&world, &spath, serde_json::to_value(&s).unwrap());
    for (n, at) in [
        ("nightly-a", "2026-01-01T00:05:00Z"),
        ("nightly-b", "2026-01-01T00:10:00Z"),
        ("nightly-c", "2026-01-01T00:15:00Z"),
    ] {
        put(
            &world,
            &format!("{KS}/backups/{n}"),
            owned_backup(n, "Succeeded", at),
        );
    }
    // Someone else's Backup of the same pool is never touched by retention.
    put(
        &world,
        &format!("{KS}/backups/manual"),
        serde_json::to_value(backup_obj(
            "manual",
            json!({"status": {"phase": "Succeeded", "completionTime": "2020-01-01T00:00:00Z"}}),
        ))
        .unwrap(),
    );
    deadline(reconcile_schedule(Arc::new(s.clone()), ctx.clone()))
        .await
        .unwrap();
    let all = writes(&world);
    let ev = c("POST", "/apis/events.k8s.io/v1/namespaces/hsm/events");
    assert_eq!(
        all,
        vec![
            c("DELETE", &format!("{KS}/backups/nightly-a")),
            ev.clone(),
            c("POST", &format!("{KS}/backups")),
            ev,
            c("PATCH", &format!("{spath}/status")),
        ]
    );
    let w = world.lock().unwrap();
    let (_, created) = w
        .calls
        .iter()
        .find(|(c, _)| c.method == "POST" && c.path.ends_with("/backups"))
        .unwrap();
    let name = created["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("nightly-2026"), "{name}");
    assert_eq!(
        created["metadata"]["finalizers"][0],
        "keystead.io/backup-folder"
    );
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["kind"],
        "BackupSchedule"
    );
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    assert_eq!(
        created["metadata"]["labels"]["keystead.io/backup-schedule"],
        "nightly"
    );
    assert_eq!(created["metadata"]["labels"]["keystead.io/pool"], "pool");
    assert!(created["metadata"]["annotations"]["keystead.io/scheduled-time"].is_string());
    assert_eq!(
        created["spec"]["destination"]["filesystem"]["claimName"],
        "hsm-backups"
    );
    let st = &w.objects[&spath]["status"];
    assert_eq!(st["lastSuccessfulBackup"], "nightly-c");
    assert_eq!(st["backups"], 3);
    assert!(st["nextScheduleTime"].is_string());
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "Scheduled");
    let last = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "LastBackupSucceeded")
        .unwrap();
    assert_eq!(last["status"], "True");
}

#[tokio::test]
async fn an_invalid_schedule_is_reported_once_and_suspend_creates_nothing() {
    use keystead_operator::backup::schedule::reconcile_schedule;
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let spath = format!("{KS}/backupschedules/nightly");
    let bad = schedule_obj(json!({"spec": {"schedule": "0 0 2 * * *"}}));
    put(&world, &spath, serde_json::to_value(&bad).unwrap());
    deadline(reconcile_schedule(Arc::new(bad.clone()), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(
        writes(&world),
        vec![
            c("PATCH", &format!("{spath}/status")),
            c("POST", "/apis/events.k8s.io/v1/namespaces/hsm/events"),
        ]
    );
    let st = stored_status(&world, &spath);
    assert_eq!(st["conditions"][0]["reason"], "InvalidSchedule");
    assert!(
        st["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("five fields")
    );
    world.lock().unwrap().calls.clear();
    let mut again = bad.clone();
    again.status = serde_json::from_value(st).unwrap();
    deadline(reconcile_schedule(Arc::new(again), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(writes(&world), vec![]);

    let suspended = schedule_obj(json!({"spec": {"suspend": true, "immediate": true}}));
    put(&world, &spath, serde_json::to_value(&suspended).unwrap());
    world.lock().unwrap().calls.clear();
    deadline(reconcile_schedule(Arc::new(suspended), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(writes(&world), vec![c("PATCH", &format!("{spath}/status"))]);
    let st = stored_status(&world, &spath);
    assert!(st.get("nextScheduleTime").is_none());
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "Suspended");
}

#[tokio::test]
async fn the_finalizer_keeps_a_claim_folder_it_cannot_delete_and_lets_go_when_told_to() {
    use keystead_operator::backup::take::reconcile_backup;
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    // A folder on a claim is deleted through the pool (only the partitions mount it); the
    // pool does not exist here, so the folder cannot go: a Warning, the finalizer stays.
    let mut v = owned_backup("nightly-a", "Succeeded", "2026-01-01T00:05:00Z");
    v["status"]["location"] = json!("pvc://hsm-backups/pool-20260101T000500000Z");
    v["metadata"]["deletionTimestamp"] = json!("2026-03-01T00:00:00Z");
    put(&world, &format!("{KS}/backups/nightly-a"), v.clone());
    let b: keystead_operator::crd::Backup = serde_json::from_value(v).unwrap();
    deadline(reconcile_backup(Arc::new(b.clone()), ctx.clone()))
        .await
        .unwrap();
    {
        let w = world.lock().unwrap();
        let wr: Vec<&(Call, Value)> = w.calls.iter().filter(|(c, _)| c.is_write()).collect();
        assert_eq!(wr.len(), 1, "only an Event: {wr:?}");
        assert_eq!(wr[0].1["reason"], "FolderDeleteFailed");
        let note = wr[0].1["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("pool cannot delete") && note.contains("keep-backup-folder"),
            "{note}"
        );
    }

    // Annotated to keep its folder: the finalizer lets go without touching the store.
    world.lock().unwrap().calls.clear();
    let mut v = owned_backup("nightly-b", "Succeeded", "2026-01-01T00:10:00Z");
    v["status"]["location"] = json!("pvc://hsm-backups/pool-20260101T001000000Z");
    v["metadata"]["deletionTimestamp"] = json!("2026-03-01T00:00:00Z");
    v["metadata"]["annotations"]["keystead.io/keep-backup-folder"] = json!("true");
    put(&world, &format!("{KS}/backups/nightly-b"), v.clone());
    let b: keystead_operator::crd::Backup = serde_json::from_value(v).unwrap();
    deadline(reconcile_backup(Arc::new(b), ctx.clone()))
        .await
        .unwrap();
    let w = world.lock().unwrap();
    let wr: Vec<&(Call, Value)> = w.calls.iter().filter(|(c, _)| c.is_write()).collect();
    assert_eq!(wr.len(), 1, "{wr:?}");
    assert_eq!(wr[0].0, c("PATCH", &format!("{KS}/backups/nightly-b")));
    assert_eq!(wr[0].1["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn the_pool_reports_its_newest_finished_backup() {
    let world = Shared::default();
    let ctx = context(mock_client(world.clone()));
    let h = pool(true, "pool");
    seed(&world, &h);
    put(
        &world,
        &format!("{KS}/backups/b1"),
        serde_json::to_value(backup_obj(
            "b1",
            json!({"status": {"phase": "Succeeded", "completionTime": "2026-03-01T00:10:00Z",
                              "location": "s3://bk/pool-1", "keyCount": 4}}),
        ))
        .unwrap(),
    );
    put(
        &world,
        &format!("{KS}/backups/other-pool"),
        serde_json::to_value(backup_obj(
            "other-pool",
            json!({"spec": {"hsmRef": {"name": "another"}},
                   "status": {"phase": "Failed", "completionTime": "2026-03-02T00:00:00Z"}}),
        ))
        .unwrap(),
    );
    reconcile_with_deadline(h, ctx).await.unwrap();
    let st = stored_status(&world, HSM_PATH);
    let cond = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "LastBackupSucceeded")
        .unwrap()
        .clone();
    assert_eq!(cond["status"], "True", "{cond}");
    assert_eq!(cond["reason"], "BackupSucceeded");
    assert_eq!(st["lastBackup"]["name"], "b1");
    assert_eq!(st["lastBackup"]["location"], "s3://bk/pool-1");
}
