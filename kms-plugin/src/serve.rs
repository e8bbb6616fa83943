//! Serving the plugin on a unix socket: the socket is created mode 0600 (only the API
//! server's user may talk to it), a stale socket file left by a crash is replaced, and the
//! file is removed on shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::plugin::{MAX_MESSAGE, Plugin};
use crate::proto::KeyManagementServiceServer;

/// Bind `socket` (replacing a stale socket file; refusing to replace anything else).
pub fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        );
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove the stale socket {}", socket.display()))?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve `plugin` on `listener` until `shutdown` completes; then remove `socket`.
pub async fn serve(
    plugin: Arc<Plugin>,
    listener: tokio::net::UnixListener,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let svc = KeyManagementServiceServer::new(plugin, MAX_MESSAGE);
    let result = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(svc, incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.context("the gRPC server failed")
}
