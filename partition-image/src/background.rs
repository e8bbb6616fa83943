//! Work that may take a core for a while without delaying requests: run on a thread of its
//! own at a lower CPU priority (nice 10).
//!
//! Serializing and writing the whole state (a Raft snapshot: ~60 MB of JSON at 100,000
//! keys) takes a core for a few hundred milliseconds. On a runtime worker it stalled every
//! request queued on that worker; on a blocking thread at normal priority it still took a
//! whole core from the partitions' request handling when cores are few (docs/benchmarks.md,
//! issue 15: p99 of creates at 500/s). At nice 10 the scheduler gives it about a tenth of
//! a busy core's share and all of an idle one: it finishes later under load, never starves.

/// Run `work` on a new thread named `name` at nice 10; its result, or `None` if it panicked
/// or the thread could not be started.
pub async fn run<T, F>(name: &str, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start a background thread");
        return None;
    }
    rx.await.ok()
}

/// Lower this thread's CPU priority to nice 10. Linux applies `setpriority(PRIO_PROCESS)`
/// with a thread id to that thread alone. Raising one's own niceness needs no privilege;
/// a failure leaves the thread at normal priority.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 10) {
        tracing::debug!(error = %e, "cannot lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn background_work_runs_at_nice_10_and_returns_its_result() {
        let priority = || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("getpriority")
        };
        let before = priority();
        let (nice, value) = super::run("test-background", || {
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("getpriority");
            (nice, 42)
        })
        .await
        .expect("the background thread answered");
        assert_eq!(value, 42);
        assert!(
            nice >= 10,
            "the thread runs at nice 10 (or lower priority), not {nice}"
        );
        assert_eq!(priority(), before, "the caller's thread keeps its priority");
    }
}
