//! A small in-repo Kubernetes API emulator over HTTP, enough for the real `keystead-operator`
//! binary to run watch-driven against it: typed paths for namespaced and cluster-wide
//! collections, GET/LIST with label selectors, WATCH streams from a resourceVersion,
//! create (uid, resourceVersion, generation, creationTimestamp), merge / JSON / apply patches
//! (apply = merge upsert; no field ownership), the status subresource of custom resources,
//! resourceVersion preconditions (409), finalizer-aware deletion and ownerReference garbage
//! collection, TokenRequest (signed by a pluggable service-account issuer).
//!
//! Not emulated: server-side-apply field ownership and conflicts, admission, defaulting,
//! schema validation, other API groups' semantics (no controllers: no pods appear).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub collection: String,
    pub namespace: Option<String>,
    pub type_: &'static str,
    pub object: Value,
}

#[derive(Default)]
pub struct Store {
    /// key: "<collection>|<namespace>|<name>", collection = "<group/version>/<plural>".
    pub objects: BTreeMap<String, Value>,
    pub rv: u64,
    pub log: Vec<WatchEvent>,
    /// (method, path) of every write.
    pub writes: Vec<(String, String)>,
}

/// Mints the token of a TokenRequest: (namespace, service account, request spec) → token.
pub type TokenMinter = Arc<dyn Fn(&str, &str, &Value) -> Result<String, String> + Send + Sync>;

#[derive(Clone)]
pub struct Emulator {
    pub store: Arc<Mutex<Store>>,
    tx: broadcast::Sender<WatchEvent>,
    /// Signs TokenRequest answers (the API server's service-account issuer); without one,
    /// TokenRequest answers a fixed placeholder.
    minter: Arc<Mutex<Option<TokenMinter>>>,
}

/// Resources whose `status` is a subresource (main-resource writes ignore it).
const STATUS_SUBRESOURCE: &[&str] = &[
    "managedhsms",
    "securitydomains",
    "backups",
    "backupschedules",
    "restores",
];

struct Target {
    collection: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match *parts.first()? {
        "api" => (parts.get(1)?.to_string(), &parts[2..]),
        "apis" => (format!("{}/{}", parts.get(1)?, parts.get(2)?), &parts[3..]),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let plural = rest.first()?.to_string();
    Some(Target {
        collection: format!("{gv}/{plural}"),
        plural,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn key(collection: &str, ns: Option<&str>, name: &str) -> String {
    format!("{collection}|{}|{name}", ns.unwrap_or(""))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn reply(code: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_default()
}

fn err(code: u16, reason: &str, message: &str) -> Response {
    reply(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_body(code, reason, message),
    )
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn pointer_parent<'a>(doc: &'a mut Value, path: &str) -> Option<(&'a mut Value, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let p = if parent.is_empty() {
        Some(doc)
    } else {
        doc.pointer_mut(parent)
    }?;
    Some((p, last))
}

/// RFC 6902 subset: test, add, remove, replace.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("JSON patch must be an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str() {
            Some("test") => {
                if doc.pointer(path).unwrap_or(&Value::Null) != &op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") | Some("replace") => {
                let (parent, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match parent {
                    Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if op["op"] == "replace" && i < a.len() {
                            a[i] = op["value"].clone();
                        } else if i <= a.len() {
                            a.insert(i, op["value"].clone());
                        }
                    }
                    Value::Object(o) => {
                        o.insert(last, op["value"].clone());
                    }
                    Value::Null => {
                        *parent = json!({ last: op["value"].clone() });
                    }
                    _ => return Err("cannot add here".into()),
                }
            }
            Some("remove") => {
                let (parent, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match parent {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    Value::Object(o) => {
                        o.remove(&last);
                    }
                    _ => return Err("cannot remove here".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let labels = &obj["metadata"]["labels"];
        match term.split_once('=') {
            Some((k, v)) => {
                labels[k.trim_end_matches('!').trim_end_matches('=')].as_str()
                    == Some(v.trim_start_matches('='))
            }
            None => labels.get(term).is_some(),
        }
    })
}

impl Emulator {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            store: Arc::new(Mutex::new(Store::default())),
            tx,
            minter: Arc::new(Mutex::new(None)),
        }
    }

    /// Answer TokenRequests with tokens of this minter (a real service-account issuer).
    #[allow(dead_code)]
    pub fn set_token_minter(&self, minter: TokenMinter) {
        if let Ok(mut m) = self.minter.lock() {
            *m = Some(minter);
        }
    }

    /// Subscribe to every change (to wait on conditions without sleeping).
    pub fn changes(&self) -> broadcast::Receiver<WatchEvent> {
        self.tx.subscribe()
    }

    pub fn get(&self, collection: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.store
            .lock()
            .ok()?
            .objects
            .get(&key(collection, ns, name))
            .cloned()
    }

    fn emit(
        &self,
        s: &mut Store,
        collection: &str,
        ns: Option<&str>,
        type_: &'static str,
        object: Value,
    ) {
        let ev = WatchEvent {
            rv: s.rv,
            collection: collection.into(),
            namespace: ns.map(String::from),
            type_,
            object,
        };
        s.log.push(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// Store (create or replace) an object, bumping resourceVersion and generation.
    fn put(
        &self,
        s: &mut Store,
        collection: &str,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        old: Option<&Value>,
    ) -> Value {
        s.rv += 1;
        let rv = s.rv;
        let spec_changed = old.is_some_and(|o| o.get("spec") != obj.get("spec"));
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        match old {
            None => {
                meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
                meta["generation"] = json!(1);
                meta["creationTimestamp"] = json!(
                    k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                );
            }
            Some(o) => {
                meta["uid"] = o["metadata"]["uid"].clone();
                meta["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                meta["generation"] = json!(if spec_changed { g + 1 } else { g });
            }
        }
        if let Some(f) = obj["metadata"].get("finalizers")
            && f.as_array().is_some_and(|a| a.is_empty())
        {
            obj["metadata"]
                .as_object_mut()
                .map(|m| m.remove("finalizers"));
        }
        let deleting = obj["metadata"]
            .get("deletionTimestamp")
            .is_some_and(|d| !d.is_null());
        let no_finalizers = obj["metadata"].get("finalizers").is_none();
        if deleting && no_finalizers {
            s.objects.remove(&key(collection, ns, name));
            self.emit(s, collection, ns, "DELETED", obj.clone());
            self.collect_garbage(s, &obj);
            return obj;
        }
        s.objects.insert(key(collection, ns, name), obj.clone());
        self.emit(
            s,
            collection,
            ns,
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            obj.clone(),
        );
        obj
    }

    fn delete(
        &self,
        s: &mut Store,
        collection: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let obj = s.objects.get(&key(collection, ns, name))?.clone();
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if has_finalizers {
            if obj["metadata"].get("deletionTimestamp").is_none() {
                let mut o = obj.clone();
                o["metadata"]["deletionTimestamp"] = json!(
                    k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                );
                return Some(self.put(s, collection, ns, name, o, Some(&obj)));
            }
            return Some(obj);
        }
        s.rv += 1;
        s.objects.remove(&key(collection, ns, name));
        self.emit(s, collection, ns, "DELETED", obj.clone());
        self.collect_garbage(s, &obj);
        Some(obj)
    }

    fn collect_garbage(&self, s: &mut Store, owner: &Value) {
        let Some(uid) = owner["metadata"]["uid"].as_str() else {
            return;
        };
        let dependents: Vec<String> = s
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            let mut parts = k.splitn(3, '|');
            let (c, n, name) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let ns = if n.is_empty() {
                None
            } else {
                Some(n.to_string())
            };
            self.delete(s, c, ns.as_deref(), name);
        }
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }
}

async fn handle(
    State(emu): State<Emulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(t) = parse_path(uri.path()) else {
        return err(404, "NotFound", "unknown path");
    };
    let ns = t.namespace.as_deref();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    // Watch.
    if method == Method::GET
        && t.name.is_none()
        && q.get("watch").is_some_and(|w| w == "true" || w == "1")
    {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let selector = q.get("labelSelector").cloned().unwrap_or_default();
        let rx = emu.tx.subscribe();
        let backlog: Vec<WatchEvent> = emu
            .store
            .lock()
            .map(|s| s.log.iter().filter(|e| e.rv > from).cloned().collect())
            .unwrap_or_default();
        let (collection, nsf) = (t.collection.clone(), t.namespace.clone());
        let matches: Arc<dyn Fn(&WatchEvent) -> bool + Send + Sync> =
            Arc::new(move |e: &WatchEvent| {
                e.collection == collection
                    && (nsf.is_none() || e.namespace == nsf)
                    && labels_match(&e.object, &selector)
            });
        let stream = watch_stream(rx, backlog, from, matches);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default();
    }

    let Ok(mut s) = emu.store.lock() else {
        return err(500, "InternalError", "store poisoned");
    };
    if method != Method::GET {
        s.writes.push((method.to_string(), uri.path().to_string()));
    }
    match (method, t.name.as_deref(), t.sub.as_deref()) {
        (Method::GET, None, _) => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, o)| {
                    let mut p = k.splitn(3, '|');
                    p.next() == Some(t.collection.as_str())
                        && ns.is_none_or(|n| p.next() == Some(n))
                        && labels_match(o, &selector)
                })
                .map(|(_, o)| o.clone())
                .collect();
            reply(
                StatusCode::OK,
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name), _) => match s.objects.get(&key(&t.collection, ns, name)) {
            Some(o) => reply(StatusCode::OK, o),
            None => err(404, "NotFound", &format!("{} {name} not found", t.plural)),
        },
        (Method::POST, Some(sa), Some("token")) => {
            let minter = emu.minter.lock().ok().and_then(|m| m.clone());
            let token = match minter {
                Some(mint) => match mint(ns.unwrap_or_default(), sa, &body["spec"]) {
                    Ok(t) => t,
                    Err(e) => return err(422, "Invalid", &e),
                },
                None => "emulated-token".to_string(),
            };
            reply(
                StatusCode::CREATED,
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                    "spec": body["spec"], "status": {"token": token, "expirationTimestamp": "2999-01-01T00:00:00Z"}}),
            )
        }
        (Method::POST, None, _) => {
            let name = body["metadata"]["name"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| {
                    format!(
                        "{}{}",
                        body["metadata"]["generateName"].as_str().unwrap_or("obj-"),
                        s.rv + 1
                    )
                });
            if s.objects.contains_key(&key(&t.collection, ns, &name)) {
                return err(409, "AlreadyExists", &format!("{name} already exists"));
            }
            let o = emu.put(&mut s, &t.collection, ns, &name, body, None);
            reply(StatusCode::CREATED, &o)
        }
        (Method::PATCH, Some(name), sub) => {
            let k = key(&t.collection, ns, name);
            let old = s.objects.get(&k).cloned();
            let is_apply = ctype.starts_with("application/apply-patch");
            let Some(mut obj) = old
                .clone()
                .or_else(|| is_apply.then(|| json!({"metadata": {}})))
            else {
                return err(404, "NotFound", &format!("{name} not found"));
            };
            let status_sub = STATUS_SUBRESOURCE.contains(&t.plural.as_str());
            let saved_status = obj.get("status").cloned();
            if ctype.starts_with("application/json-patch") {
                if let Err(e) = json_patch(&mut obj, &body) {
                    return err(422, "Invalid", &e);
                }
            } else {
                if let (Some(want), Some(have)) = (
                    body["metadata"]["resourceVersion"].as_str(),
                    obj["metadata"]["resourceVersion"].as_str(),
                ) && want != have
                {
                    return err(409, "Conflict", "the object has been modified");
                }
                let mut patch = body.clone();
                if let Some(m) = patch["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                if sub == Some("status") {
                    obj["status"] = Value::Null;
                    merge(&mut obj, &json!({"status": patch["status"]}));
                } else {
                    merge(&mut obj, &patch);
                }
            }
            if status_sub && sub != Some("status") {
                match saved_status {
                    Some(st) => obj["status"] = st,
                    None => {
                        obj.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            let o = emu.put(&mut s, &t.collection, ns, name, obj, old.as_ref());
            reply(StatusCode::OK, &o)
        }
        (Method::DELETE, Some(name), _) => match emu.delete(&mut s, &t.collection, ns, name) {
            Some(o) => reply(StatusCode::OK, &o),
            None => err(404, "NotFound", &format!("{name} not found")),
        },
        _ => err(405, "MethodNotAllowed", "not emulated"),
    }
}

fn line(e: &WatchEvent) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        json!({"type": e.type_, "object": e.object})
    ))
}

/// A watch body: backlog events after the requested resourceVersion, then live events, as
/// JSON lines. The receiver is subscribed before the backlog is read, so nothing is lost.
fn watch_stream(
    rx: broadcast::Receiver<WatchEvent>,
    backlog: Vec<WatchEvent>,
    after: u64,
    matches: Arc<dyn Fn(&WatchEvent) -> bool + Send + Sync>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use futures::StreamExt;
    let last = backlog.last().map(|e| e.rv).unwrap_or(after);
    let initial: Vec<Result<Bytes, std::io::Error>> = backlog
        .iter()
        .filter(|e| matches(e))
        .map(|e| Ok(line(e)))
        .collect();
    let live = futures::stream::unfold((rx, matches), move |(mut rx, m)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.rv > last && m(&e) => return Some((Ok(line(&e)), (rx, m))),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    futures::stream::iter(initial).chain(live)
}
