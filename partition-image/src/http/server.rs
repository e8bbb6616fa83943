//! The HTTPS listener: rustls (aws-lc-rs) in front of the axum router.

use super as api;
use crate::config::{DEFAULT_MAX_CONNECTIONS, Limits};
use crate::service::app::App;
use crate::tls::{ClientAddr, PeerCertName, cert_common_name};
use axum::Router;
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
        .route("/metrics", get(super::metrics::metrics))
        .route("/internal/{*rest}", any(crate::peer::handle))
        .fallback(any(api::handle))
        .with_state(app)
}

/// Bind the partition's listening socket (`SO_REUSEADDR`, a listen backlog of
/// [`LISTEN_BACKLOG`]: connections over `limits.maxConnections` wait there).
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("listen address {addr:?} is not an IP:port: {e}"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

/// Connections the kernel queues for us while every slot is taken (capped by the kernel's
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Serve HTTPS on `listener` until `shutdown` resolves.
///
/// Bounds (`limits` of the configuration, docs/limits.md): at most `maxConnections`
/// connections at once — the accept loop takes a slot before it accepts, so further
/// connections wait in the listen backlog; a TLS handshake must finish within
/// `tlsHandshakeTimeoutSeconds`, an HTTP/1.1 request head within `headerReadTimeoutSeconds`;
/// a connection without a request in progress for `idleTimeoutSeconds` is closed. Failing
/// `accept` calls (out of descriptors) back off and are logged at most once per
/// [`ACCEPT_ERROR_LOG_INTERVAL`].
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
    let limits = Arc::new(app.cfg.limits.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(connection_cap(
        limits.max_connections,
        open_files_limit(),
    )));
    let router = router(app.clone());
    let mut errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        // A slot first: over the cap, connections are left in the listen backlog.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    errors.recovered();
                    a
                }
                Err(e) => {
                    let pause = errors.failed(&e);
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // The accepted regions' CAs as the state has them now (rebuilt only on a change).
        app.regions.trust.sync(&app.store.read().region.accepted);
        tokio::spawn(connection(
            tcp,
            peer,
            tls.acceptor(),
            router.clone(),
            limits.clone(),
            slot,
        ));
    }
    watcher.abort();
    Ok(())
}

/// Serve one accepted connection, holding its slot until it closes.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    (acceptor, pool_chain): (TlsAcceptor, crate::tls::PoolChain),
    router: Router,
    limits: Arc<Limits>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout(), acceptor.accept(tcp)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not finished in time; connection closed");
            return;
        }
    };
    // The handshake accepted any certificate whose key the client holds: a pool partition's
    // name only for a chain to the pool CA; a region (decided per request, peer::region)
    // only for a chain to its accepted CA.
    let chain = tls.get_ref().1.peer_certificates().unwrap_or(&[]);
    let cert_name = PeerCertName(if pool_chain.verifies(chain) {
        chain.first().and_then(|c| cert_common_name(c))
    } else {
        None
    });
    let identity = crate::region_trust::ClientChain(std::sync::Arc::new(
        chain.iter().map(|c| c.clone().into_owned()).collect(),
    ));
    let activity = Arc::new(Activity::new());
    let svc = {
        let activity = activity.clone();
        router
            .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(cert_name.clone());
                req.extensions_mut().insert(identity.clone());
                req
            })
            .map_future(move |fut| {
                // The connection is not idle while a request is being handled.
                let busy = activity.request_started();
                async move {
                    let r = fut.await;
                    drop(busy);
                    r
                }
            })
    };
    let svc = TowerToHyperService::new(svc);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = activity.idle_for(idle) => {
            tracing::debug!(%peer, "idle connection closed");
            // HTTP/2 says goodbye (GOAWAY); an idle HTTP/1.1 connection closes at once.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(idle, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// When a connection last had a request in progress, and how many it has now.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds since `start` when the last request started or ended.
    last: AtomicU64,
    requests: AtomicUsize,
}

/// A request in progress on a connection (until its response head is produced).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in progress for `limit`. Traffic
    /// alone (HTTP/2 pings, a request head that never completes) does not keep it open.
    async fn idle_for(&self, limit: std::time::Duration) {
        loop {
            let last =
                self.start + std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
            let busy = self.requests.load(Ordering::Relaxed) > 0;
            if !busy && last.elapsed() >= limit {
                return;
            }
            let wake = if busy {
                tokio::time::Instant::now() + limit
            } else {
                last + limit
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// At most one log line per this interval about failing `accept` calls.
pub const ACCEPT_ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// The first pause after a failed `accept`; doubled on every further failure.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest pause between `accept` attempts while they fail.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Back-off and rate-limited logging of failing `accept` calls (e.g. `EMFILE`: out of file
/// descriptors, where the pending connection stays queued and every retry fails at once).
#[derive(Default)]
struct AcceptErrors {
    /// Consecutive failures.
    failures: u64,
    /// Failures since the last log line.
    unlogged: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptErrors {
    /// Record a failure; returns how long to pause before the next `accept`.
    fn failed(&mut self, e: &std::io::Error) -> std::time::Duration {
        self.failures += 1;
        self.unlogged += 1;
        let pause = ACCEPT_BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(ACCEPT_BACKOFF_MAX);
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL);
        if due {
            tracing::warn!(
                error = %e,
                failures = self.unlogged,
                retry_in_ms = pause.as_millis() as u64,
                "accepting connections fails; backing off (logged at most every {}s)",
                ACCEPT_ERROR_LOG_INTERVAL.as_secs()
            );
            self.unlogged = 0;
            self.last_log = Some(std::time::Instant::now());
        }
        pause
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failures = self.failures,
                "accepting connections again after failures"
            );
        }
        self.failures = 0;
        self.unlogged = 0;
    }
}

/// The connection cap: `limits.maxConnections` as configured (with a warning when the
/// open-files limit `nofile` is too low for it), or by default
/// [`DEFAULT_MAX_CONNECTIONS`] lowered to fit `nofile`.
fn connection_cap(configured: Option<usize>, nofile: Option<usize>) -> usize {
    let fits = |n: usize| nofile.is_none_or(|f| n.saturating_add(DESCRIPTOR_RESERVE) <= f);
    match configured {
        Some(n) => {
            if !fits(n) {
                tracing::warn!(
                    open_files_limit = nofile,
                    max_connections = n,
                    "the open-files limit is below limits.maxConnections plus {DESCRIPTOR_RESERVE} for the partition's own files: raise it (ulimit -n) or lower maxConnections"
                );
            }
            n
        }
        None if fits(DEFAULT_MAX_CONNECTIONS) => DEFAULT_MAX_CONNECTIONS,
        None => {
            let n = nofile
                .unwrap_or_default()
                .saturating_sub(DESCRIPTOR_RESERVE)
                .max(MIN_AUTO_CONNECTIONS);
            tracing::info!(
                open_files_limit = nofile,
                max_connections = n,
                "serving at most {n} connections at once to fit the open-files limit (raise ulimit -n, or set limits.maxConnections)"
            );
            n
        }
    }
}

/// The soft open-files limit of this process (Linux: `/proc/self/limits`).
fn open_files_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The smallest cap chosen to fit a low open-files limit.
const MIN_AUTO_CONNECTIONS: usize = 16;

/// Descriptors a partition needs besides its connections (data, audit, peers, backups).
const DESCRIPTOR_RESERVE: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_to_a_cap_and_reset() {
        let mut errors = AcceptErrors::default();
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<_> = (0..10).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        // Only the first failure was logged; the rest wait for the interval.
        assert_eq!(errors.unlogged, 9);
        errors.recovered();
        assert_eq!(errors.failed(&e), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn the_default_connection_cap_fits_the_open_files_limit() {
        let reserve = DESCRIPTOR_RESERVE;
        assert_eq!(connection_cap(None, None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_cap(None, Some(1 << 20)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_cap(None, Some(1024)), 1024 - reserve);
        assert_eq!(connection_cap(None, Some(64)), MIN_AUTO_CONNECTIONS);
        // A configured cap is honoured (with a warning) even above the limit.
        assert_eq!(connection_cap(Some(5000), Some(1024)), 5000);
        assert_eq!(connection_cap(Some(3), Some(1024)), 3);
    }
}
