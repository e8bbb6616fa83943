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

/// How often the TLS files are checked for a rotation.
const TLS_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

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
    let tls = Arc::new(crate::tls::ReloadingAcceptor::load(&app.cfg.tls)?);
    // Rotated certificates (a renewed Secret) are picked up without a restart.
    let watcher = {
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TLS_RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match tls.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!("TLS certificate files changed; new connections use them")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "TLS files not reloaded"),
                }
            }
        })
    };
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
        let acceptor: TlsAcceptor = tls.acceptor();
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
    watcher.abort();
    Ok(())
}
