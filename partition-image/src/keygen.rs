//! RSA key generation (keys and one-time exchange keys) off the request workers.
//!
//! Generating an RSA-4096 key takes from a fraction of a second to seconds of CPU. Run on
//! the async workers, a handful of concurrent creates starved every other request (health
//! probes included). Here each generation runs on tokio's blocking pool, and at most
//! `limits.keyGenerationConcurrency` (default: the number of CPUs) run at once; the others
//! wait for a slot without occupying a worker. `/metrics` reports both counts. EC and AES
//! keys take microseconds and are generated in place.

use crate::crypto::{CryptoError, KeyMaterial, KeySpec};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Counters {
    waiting: AtomicUsize,
    running: AtomicUsize,
}

/// Adds one to a counter for as long as it lives.
struct Counted(Arc<Counters>, fn(&Counters) -> &AtomicUsize);

impl Counted {
    fn new(c: &Arc<Counters>, which: fn(&Counters) -> &AtomicUsize) -> Counted {
        which(c).fetch_add(1, Ordering::Relaxed);
        Counted(c.clone(), which)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct KeyGenerator {
    counters: Arc<Counters>,
    slots: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
}

impl std::fmt::Debug for KeyGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGenerator")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl KeyGenerator {
    pub fn new(concurrency: usize) -> KeyGenerator {
        let concurrency = concurrency.max(1);
        KeyGenerator {
            counters: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            concurrency,
        }
    }

    /// RSA generations waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.counters.waiting.load(Ordering::Relaxed)
    }

    /// RSA generations running.
    pub fn running(&self) -> usize {
        self.counters.running.load(Ordering::Relaxed)
    }

    /// Run `work` (an RSA key generation) on the blocking pool once a slot is free. A
    /// generation whose request was abandoned still finishes and holds its slot until then.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let slot = {
            let _waiting = Counted::new(&self.counters, |c| &c.waiting);
            self.slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| "the key generator is shut down".to_string())?
        };
        let running = Counted::new(&self.counters, |c| &c.running);
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop((running, slot));
            out
        })
        .await
        .map_err(|e| format!("key generation did not complete: {e}"))
    }

    /// Generate key material for `spec`.
    pub async fn key(&self, spec: KeySpec) -> Result<KeyMaterial, CryptoError> {
        if !matches!(spec, KeySpec::Rsa { .. }) {
            return KeyMaterial::generate(&spec);
        }
        self.run(move || KeyMaterial::generate(&spec))
            .await
            .map_err(CryptoError::Internal)?
    }

    /// A new one-time exchange key (RSA-3072) of the pool `pool_id`.
    pub async fn exchange_key(
        &self,
        pool_id: &str,
    ) -> Result<keystead_core::sd::ExchangeKey, keystead_core::sd::SdError> {
        let pool_id = pool_id.to_string();
        self.run(move || keystead_core::sd::ExchangeKey::generate(&pool_id))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "exchange key generation failed");
                keystead_core::sd::SdError::Crypto("exchange key generation")
            })?
    }
}
