//! Scenario tests of the reconcilers against a mocked API server: the order of API calls of a
//! first reconcile, an idle reconcile that writes nothing, status updates, invalid specs.
//!
//! The mock is a `tower` service behind `kube::Client::new`: it records every request
//! (method, path, body) and answers from an in-memory object map (GET → stored object or
//! 404, server-side apply PATCH → stores the body, status PATCH → stored, Event POST → 201).
//! Exact API-server semantics (resourceVersion conflicts, SSA field ownership) are out of
//! scope here on purpose.

use axum::http::{Method, Request, Response, StatusCode};
use keystead_operator::children::{HSM_FINALIZER, Settings};
use keystead_operator::controller::{self, Context};
use keystead_operator::crd::{HsmPhase, ManagedHsm, ManagedHsmStatus};
use keystead_operator::metrics::Metrics;
use keystead_operator::pool_client::TokenSource;
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
                }
                w.objects.insert(path.clone(), obj.clone());
                respond(StatusCode::OK, &obj)
            }
        }
        Method::POST | Method::DELETE => respond(StatusCode::CREATED, &body),
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, &status_404()),
    };
    Ok(resp)
}

fn mock_client(world: Shared) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<Body>| handle(world.clone(), req));
    kube::Client::new(svc, "default")
}

fn context(client: kube::Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "keystead-operator".into(),
        instance: Some("test".into()),
    };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        metrics: Metrics::default(),
        settings: Settings::default(),
        tokens: TokenSource::new(client.clone(), None),
        read_partitions: false,
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
) -> Result<kube::runtime::controller::Action, controller::Error> {
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
        assert!(sts["metadata"]["annotations"][controller::APPLIED_HASH_ANNOTATION].is_string());
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
    let n = tokio::time::timeout(Duration::from_secs(30), controller::purge_sweep(&client))
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
