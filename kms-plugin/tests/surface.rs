//! The gRPC surface in process, with a pool that cannot be reached: input the plugin must
//! refuse before any pool call (unknown key ids, missing annotations, empty or oversized
//! values, an oversized message, an unknown method) gets a clear error, Status fails with
//! `Unavailable` within its budget, and the server keeps serving. The same against a real
//! pool (tampering, failover, token rotation) is `e2e/tests/kms_grpc.rs`.

use keystead_kms_plugin::plugin::{ALG_ANNOTATION, Plugin};
use keystead_kms_plugin::pool::{PoolClient, PoolSettings};
use keystead_kms_plugin::proto::{DecryptRequest, EncryptRequest, KeyManagementServiceClient};
use keystead_kms_plugin::serve;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::Code;

struct Running {
    _dir: tempfile::TempDir,
    client: KeyManagementServiceClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The plugin serving on a socket, its pool a closed loopback port.
async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.path().join("token"), "not-a-real-token").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let pool = PoolClient::new(PoolSettings {
        endpoints: vec![endpoint],
        ca_file: dir.path().join("ca.pem"),
        token_file: dir.path().join("token"),
        attempt_timeout: Duration::from_millis(500),
    })
    .unwrap();
    let plugin = Plugin::new(pool, "kek".into(), Vec::new(), Duration::from_secs(1));
    let socket = dir.path().join("kms.sock");
    let listener = serve::bind(&socket).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = socket.clone();
    let task = tokio::spawn(async move {
        serve::serve(plugin, listener, &s, async {
            let _ = rx.await;
        })
        .await
    });
    let client = KeyManagementServiceClient::connect_unix(&socket)
        .await
        .unwrap();
    Running {
        _dir: dir,
        client,
        stop: Some(tx),
        task,
    }
}

fn decrypt(key_id: &str, ciphertext: Vec<u8>, alg: Option<&str>) -> DecryptRequest {
    DecryptRequest {
        ciphertext,
        uid: "u".into(),
        key_id: key_id.into(),
        annotations: alg
            .map(|a| HashMap::from([(ALG_ANNOTATION.to_string(), a.as_bytes().to_vec())]))
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_the_pool_and_the_server_keeps_serving() {
    let mut r = start().await;
    let c = &mut r.client;
    let cases = [
        (
            "another key",
            decrypt("other/v1", vec![1; 40], Some("A256KW")),
        ),
        ("no version", decrypt("kek", vec![1; 40], Some("A256KW"))),
        (
            "path in the version",
            decrypt("kek/../x", vec![1; 40], Some("A256KW")),
        ),
        ("no annotation", decrypt("kek/v1", vec![1; 40], None)),
        (
            "foreign algorithm",
            decrypt("kek/v1", vec![1; 40], Some("RSA1_5")),
        ),
        (
            "empty ciphertext",
            decrypt("kek/v1", vec![], Some("A256KW")),
        ),
        (
            "oversized ciphertext",
            decrypt("kek/v1", vec![1; 1025], Some("A256KW")),
        ),
    ];
    for (what, req) in cases {
        let e = c.decrypt(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    for len in [0, 513] {
        let e = c
            .encrypt(EncryptRequest {
                plaintext: vec![1; len],
                uid: "u".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{len} bytes: {e:?}");
    }
    let e = c
        .encrypt(EncryptRequest {
            plaintext: vec![1; 128 * 1024],
            uid: "u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // An unreachable pool: Status and a valid-looking Decrypt answer Unavailable, in time.
    let start = Instant::now();
    let e = c.status().await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(!e.message().contains("not-a-real-token"), "{}", e.message());
    let e = c
        .decrypt(decrypt("kek/v1", vec![1; 40], Some("A256KW")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Still serving, and it stops cleanly (the socket file removed).
    assert!(!r.task.is_finished());
    r.stop.take().unwrap().send(()).unwrap();
    r.task.await.unwrap().unwrap();
    assert!(!r._dir.path().join("kms.sock").exists());
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let r = start().await;
    let channel = tonic::transport::Endpoint::from_static("http://kms.invalid")
        .connect_with_connector(tower::service_fn({
            let s = r._dir.path().join("kms.sock");
            move |_: http::Uri| {
                let s = s.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(s).await?,
                    ))
                }
            }
        }))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        keystead_kms_plugin::proto::StatusRequest,
        keystead_kms_plugin::proto::StatusResponse,
    >::default();
    let e = grpc
        .unary(
            tonic::Request::new(keystead_kms_plugin::proto::StatusRequest {}),
            http::uri::PathAndQuery::from_static("/v2.KeyManagementService/Rewrap"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

#[test]
fn a_file_that_is_not_a_socket_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sock");
    std::fs::write(&path, "data").unwrap();
    let e = serve::bind(&path).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}
