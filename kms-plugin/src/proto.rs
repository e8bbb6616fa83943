//! The KMS v2 gRPC interface (`k8s.io/kms/apis/v2/api.proto`, package `v2`, service
//! `KeyManagementService`), written by hand: the prost messages with their field numbers and
//! the tonic server and client that generated code would contain. No `protoc` is needed to
//! build it (docs/kms-plugin.md, "Why the gRPC code is written by hand").

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// The fully qualified service name (`package.Service`).
pub const SERVICE: &str = "v2.KeyManagementService";

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    /// `v2` (or the equivalent `v2beta1`).
    #[prost(string, tag = "1")]
    pub version: String,
    /// `ok`, or why not (the API server shows it in its KMS health check).
    #[prost(string, tag = "2")]
    pub healthz: String,
    /// The current write key; a change makes the API server generate a new DEK seed.
    #[prost(string, tag = "3")]
    pub key_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub ciphertext: Vec<u8>,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub key_id: String,
    #[prost(map = "string, bytes", tag = "4")]
    pub annotations: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub plaintext: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub plaintext: Vec<u8>,
    #[prost(string, tag = "2")]
    pub uid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub ciphertext: Vec<u8>,
    #[prost(string, tag = "2")]
    pub key_id: String,
    #[prost(map = "string, bytes", tag = "3")]
    pub annotations: HashMap<String, Vec<u8>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a KMS v2 plugin implements.
pub trait KeyManagementService: Send + Sync + 'static {
    fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> impl Future<Output = Result<Response<StatusResponse>, Status>> + Send;
    fn decrypt(
        &self,
        req: Request<DecryptRequest>,
    ) -> impl Future<Output = Result<Response<DecryptResponse>, Status>> + Send;
    fn encrypt(
        &self,
        req: Request<EncryptRequest>,
    ) -> impl Future<Output = Result<Response<EncryptResponse>, Status>> + Send;
}

/// The tower service that routes `/v2.KeyManagementService/<Method>` to `T`.
#[derive(Debug)]
pub struct KeyManagementServiceServer<T> {
    inner: Arc<T>,
    max_decoding_message_size: usize,
}

impl<T> Clone for KeyManagementServiceServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<T: KeyManagementService> KeyManagementServiceServer<T> {
    /// `max_decoding_message_size`: requests larger than this are refused by the codec with
    /// `ResourceExhausted` before the plugin sees them.
    pub fn new(inner: Arc<T>, max_decoding_message_size: usize) -> Self {
        Self {
            inner,
            max_decoding_message_size,
        }
    }
}

impl<T> NamedService for KeyManagementServiceServer<T> {
    const NAME: &'static str = SERVICE;
}

/// One unary method of `T` as tonic's `Grpc::unary` wants it (what generated code writes).
macro_rules! unary_method {
    ($svc:ident, $method:ident, $req:ty, $resp:ty) => {
        struct $svc<T>(Arc<T>);
        impl<T: KeyManagementService> UnaryService<$req> for $svc<T> {
            type Response = $resp;
            type Future = BoxFuture<Result<Response<$resp>, Status>>;
            fn call(&mut self, request: Request<$req>) -> Self::Future {
                let inner = self.0.clone();
                Box::pin(async move { inner.$method(request).await })
            }
        }
    };
}
unary_method!(StatusSvc, status, StatusRequest, StatusResponse);
unary_method!(DecryptSvc, decrypt, DecryptRequest, DecryptResponse);
unary_method!(EncryptSvc, encrypt, EncryptRequest, EncryptResponse);

impl<T, B> tower::Service<http::Request<B>> for KeyManagementServiceServer<T>
where
    T: KeyManagementService,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let limit = self.max_decoding_message_size;
        fn grpc<E, D>(limit: usize) -> tonic::server::Grpc<tonic_prost::ProstCodec<E, D>>
        where
            E: prost::Message + Send + 'static,
            D: prost::Message + Default + Send + 'static,
        {
            tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(limit), None)
        }
        match req.uri().path() {
            "/v2.KeyManagementService/Status" => {
                Box::pin(async move { Ok(grpc(limit).unary(StatusSvc(inner), req).await) })
            }
            "/v2.KeyManagementService/Decrypt" => {
                Box::pin(async move { Ok(grpc(limit).unary(DecryptSvc(inner), req).await) })
            }
            "/v2.KeyManagementService/Encrypt" => {
                Box::pin(async move { Ok(grpc(limit).unary(EncryptSvc(inner), req).await) })
            }
            _ => Box::pin(async move {
                Ok(Status::unimplemented("unknown method of v2.KeyManagementService").into_http())
            }),
        }
    }
}

/// A client of a KMS v2 plugin (what the API server does; for tests, probes and benchmarks).
#[derive(Debug, Clone)]
pub struct KeyManagementServiceClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl KeyManagementServiceClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// A client of the plugin listening on the unix socket `path`.
    pub async fn connect_unix(path: &std::path::Path) -> Result<Self, tonic::transport::Error> {
        let path = path.to_path_buf();
        // The URI is not used: every connection goes to the socket.
        let channel = tonic::transport::Endpoint::from_static("http://kms.invalid")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        Ok(Self::new(channel))
    }

    async fn call<M1, M2>(&mut self, req: M1, path: &'static str) -> Result<M2, Status>
    where
        M1: prost::Message + Send + Sync + 'static,
        M2: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("plugin not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static(path);
        Ok(self
            .inner
            .unary(Request::new(req), path, codec)
            .await?
            .into_inner())
    }

    pub async fn status(&mut self) -> Result<StatusResponse, Status> {
        self.call(StatusRequest {}, "/v2.KeyManagementService/Status")
            .await
    }

    pub async fn encrypt(&mut self, req: EncryptRequest) -> Result<EncryptResponse, Status> {
        self.call(req, "/v2.KeyManagementService/Encrypt").await
    }

    pub async fn decrypt(&mut self, req: DecryptRequest) -> Result<DecryptResponse, Status> {
        self.call(req, "/v2.KeyManagementService/Decrypt").await
    }
}
