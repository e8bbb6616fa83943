//! Requests that share one round trip: callers queue what they need and a *round* serves
//! everything queued when it starts (the read-index barrier, forwarded writes).
//!
//! A caller joins the *next* round, never one already in flight (which may have started
//! before it arrived). One round runs at a time and takes what is waiting when it starts
//! (up to a batch size); only when the round in flight is slow (older than `slow`) may
//! another start beside it, up to `max_rounds`. Under load this is one round trip per
//! round instead of one per request; alone, a request waits for exactly one round.
//!
//! Overlapping rounds freely (a new round for every request that found all running rounds
//! busy, as the read-index barrier did from 37eec2f) split the waiting requests into more,
//! smaller rounds — twice the rounds per request: ES256 sign on a pinned pool cost ~95 µs of
//! pool CPU per request instead of ~74 µs (docs/benchmarks.md, issue 15).

use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How rounds are started and filled.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Rounds in flight at once.
    pub max_rounds: usize,
    /// A round in flight for longer than this is slow: a request arriving meanwhile may
    /// start another beside it.
    pub slow: Duration,
    /// Requests one round takes at most (the rest wait for the next).
    pub max_batch: usize,
}

/// One round: what each of its requests gets, in their order.
pub type RoundFn<In, Out> = Arc<dyn Fn(Vec<In>) -> BoxFuture<'static, Vec<Out>> + Send + Sync>;

struct Queue<In, Out> {
    running: usize,
    /// When the latest round started.
    last_start: Option<Instant>,
    next: Vec<(In, oneshot::Sender<Out>)>,
}

/// Shares round trips between concurrent requests.
pub struct Rounds<In, Out> {
    policy: Policy,
    round: RoundFn<In, Out>,
    queue: Arc<Mutex<Queue<In, Out>>>,
}

impl<In: Send + 'static, Out: Send + 'static> Rounds<In, Out> {
    pub fn new(policy: Policy, round: RoundFn<In, Out>) -> Self {
        Rounds {
            policy,
            round,
            queue: Arc::new(Mutex::new(Queue {
                running: 0,
                last_start: None,
                next: Vec::new(),
            })),
        }
    }

    /// What a round that started after this call answered for `input` (`None`: the round
    /// was dropped, or answered fewer items than it took).
    pub async fn join(&self, input: In) -> Option<Out> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.next.push((input, tx));
            let start = q.running == 0
                || (q.running < self.policy.max_rounds
                    && q.last_start.is_none_or(|t| t.elapsed() >= self.policy.slow));
            if start {
                q.running += 1;
                q.last_start = Some(Instant::now());
            }
            start
        };
        if start {
            let (round, queue, max_batch) = (
                self.round.clone(),
                self.queue.clone(),
                self.policy.max_batch,
            );
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.next.is_empty() {
                            q.running -= 1;
                            return;
                        }
                        q.last_start = Some(Instant::now());
                        let take = q.next.len().min(max_batch);
                        let rest = q.next.split_off(take);
                        std::mem::replace(&mut q.next, rest)
                    };
                    // Every request taken here arrived before this round starts.
                    let (inputs, senders): (Vec<In>, Vec<_>) = batch.into_iter().unzip();
                    let outputs = round(inputs).await;
                    for (tx, out) in senders.into_iter().zip(outputs) {
                        let _ = tx.send(out);
                    }
                }
            });
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_rounds_each_gets_its_own_answer_and_batches_are_bounded() {
        let rounds_run = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let (r, l) = (rounds_run.clone(), largest.clone());
        let round: RoundFn<u32, u32> = Arc::new(move |inputs: Vec<u32>| {
            r.fetch_add(1, Ordering::SeqCst);
            l.fetch_max(inputs.len(), Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                inputs.into_iter().map(|i| i * 2).collect()
            })
        });
        let rounds = Arc::new(Rounds::new(
            Policy {
                max_rounds: 1,
                slow: Duration::from_secs(60),
                max_batch: 16,
            },
            round,
        ));
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let rounds = rounds.clone();
                tokio::spawn(async move { (i, rounds.join(i).await) })
            })
            .collect();
        for c in calls {
            let (i, out) = c.await.unwrap();
            assert_eq!(out, Some(i * 2), "request {i} got another's answer");
        }
        let n = rounds_run.load(Ordering::SeqCst);
        assert!(
            n < 100,
            "100 concurrent requests ran {n} rounds: none shared"
        );
        assert!(
            largest.load(Ordering::SeqCst) <= 16,
            "a round took more than its batch"
        );
    }

    #[tokio::test]
    async fn a_round_answering_too_few_items_leaves_the_rest_without_an_answer() {
        let round: RoundFn<u32, u32> = Arc::new(|_inputs: Vec<u32>| Box::pin(async { vec![] }));
        let rounds = Rounds::new(
            Policy {
                max_rounds: 1,
                slow: Duration::from_millis(10),
                max_batch: 8,
            },
            round,
        );
        assert_eq!(rounds.join(1).await, None);
    }
}
