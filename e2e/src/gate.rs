//! A TCP gate between the partitions and an object store, to keep a backup job running for
//! as long as a test needs.
//!
//! Open, it forwards every connection. Holding, it accepts connections and parks them without
//! reading: the partition's store requests wait (and, after object_store's 30 s request
//! timeout, are retried for up to 3 minutes), so the job stays `InProgress`. On release,
//! parked connections are closed (the client retries them on a new connection) rather than
//! forwarded: a request a dead partition left behind never reaches the store late.

use anyhow::Context;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A gate on a loopback port in front of `upstream` (`http://<ip>:<port>`), open.
    pub async fn start(upstream: &str) -> anyhow::Result<Gate> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the store endpoint {upstream} is http://<ip>:<port>"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                let held = !*rx.borrow();
                conns.spawn(async move {
                    if held {
                        // Parked until the gate opens, then dropped.
                        let _ = rx.wait_for(|open| *open).await;
                        return;
                    }
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Gate { addr, open, task })
    }

    /// The endpoint to give the partitions instead of the store's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}
