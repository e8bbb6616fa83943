//! The HTTPS listener: rustls (aws-lc-rs) in front of the axum router.

use crate::api::{self, ClientAddr};
use crate::app::App;
use axum::Router;
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The router of one partition.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(crate::replica::metrics::metrics))
        .route("/internal/{*rest}", any(crate::replica::peer::handle))
        .fallback(any(api::handle))
        .with_state(app)
}

/// Serve HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cfg = &app.cfg;
    let cert = std::fs::read_to_string(&cfg.tls.cert_file)?;
    let key = zeroize::Zeroizing::new(std::fs::read_to_string(&cfg.tls.key_file)?);
    let ca = std::fs::read_to_string(&cfg.tls.ca_file)?;
    let tls = crate::tls::server_config(&cert, &key, Some(&ca))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let router = router(app.clone());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert_name = crate::replica::peer::PeerCertName(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::replica::peer::cert_common_name(c)),
            );
            let svc = router.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(cert_name.clone());
                req
            });
            let svc = TowerToHyperService::new(svc);
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    Ok(())
}
