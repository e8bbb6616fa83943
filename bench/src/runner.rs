//! A closed-loop runner on OS threads for the in-process baselines (aws-lc-rs, SoftHSM2):
//! each thread repeats one operation as fast as it can; a warm-up period is run and
//! discarded, then every operation that completes inside the measured window is timed.

use crate::stats::OpResult;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Timing of one run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one thread measured.
struct ThreadResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Run `op` on `threads` threads. `setup(i)` builds thread `i`'s state (a PKCS#11 session,
/// for example) before the clock starts; an error there aborts the run.
pub fn run_threads<S, Setup, Op>(
    source: &str,
    name: &str,
    threads: usize,
    window: Window,
    setup: Setup,
    op: Op,
) -> anyhow::Result<OpResult>
where
    Setup: Fn(usize) -> anyhow::Result<S> + Sync,
    Op: Fn(&mut S) -> anyhow::Result<()> + Sync,
{
    anyhow::ensure!(threads > 0, "the thread count must be at least 1");
    let barrier = Barrier::new(threads);
    let per_thread: Vec<anyhow::Result<ThreadResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let barrier = &barrier;
                let setup = &setup;
                let op = &op;
                scope.spawn(move || {
                    let state = setup(i);
                    // Every thread reaches the barrier, even after a failed setup, so
                    // the others are not left waiting.
                    barrier.wait();
                    let mut state = state?;
                    let start = Instant::now();
                    let measure_from = start + window.warmup;
                    let end = measure_from + window.measure;
                    let mut lat = Vec::with_capacity(1 << 16);
                    let mut errors = 0u64;
                    let mut first_error = None;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let r = op(&mut state);
                        let t1 = Instant::now();
                        if t0 < measure_from || t1 > end {
                            continue;
                        }
                        match r {
                            Ok(()) => {
                                lat.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX))
                            }
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    Ok(ThreadResult {
                        latencies_ns: lat,
                        errors,
                        first_error,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in per_thread {
        let r = r?;
        all.extend(r.latencies_ns);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let mut res = OpResult::new(source, name, threads, all, errors, window.measure);
    res.first_error = first_error;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn counts_operations_and_errors_per_thread() {
        let calls = AtomicU64::new(0);
        let w = Window {
            warmup: Duration::from_millis(10),
            measure: Duration::from_millis(50),
        };
        let r = run_threads("test", "noop", 2, w, Ok, |i| {
            calls.fetch_add(1, Ordering::Relaxed);
            if *i == 1 {
                anyhow::bail!("thread one always fails")
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(r.threads, 2);
        assert!(r.ops > 0, "{r:?}");
        assert!(r.errors > 0, "{r:?}");
        assert_eq!(r.first_error.as_deref(), Some("thread one always fails"));
        assert!(calls.load(Ordering::Relaxed) >= r.ops + r.errors);
    }

    #[test]
    fn a_failed_setup_aborts_without_deadlock() {
        let w = Window {
            warmup: Duration::from_millis(1),
            measure: Duration::from_millis(5),
        };
        let r = run_threads(
            "test",
            "noop",
            3,
            w,
            |i| {
                if i == 2 {
                    anyhow::bail!("no session for thread {i}")
                }
                Ok(())
            },
            |_| Ok(()),
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no session"), "{e}");
    }
}
