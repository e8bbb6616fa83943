//! Transfer blobs and the upload body (`POST /securitydomain/upload`, `{"value": blob}`):
//! `inspect_transfer_blob` and `ExchangeKey::open_transfer_blob` with an exchange key made
//! at start-up. Inputs starting with 0xff are edit scripts over a valid blob for that key
//! (see `keystead_fuzz::apply_edits`): whatever opens must be the original domain.
#![no_main]

use std::sync::OnceLock;

use keystead_core::sd::{self, DomainSecret, ExchangeKey};
use keystead_fuzz::{EDIT_MODE, POOL_ID, apply_edits};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    exchange: ExchangeKey,
    secret: DomainSecret,
    blob: String,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let exchange = ExchangeKey::generate(POOL_ID).expect("exchange key");
        let secret = DomainSecret::generate("fuzz-origin");
        let blob = sd::seal_to_exchange_key(&secret, &exchange.certificate()).expect("seal");
        Fixture {
            exchange,
            secret,
            blob,
        }
    })
}

fn check(text: &str, f: &Fixture) {
    // The partition accepts the upload body and, from the custodian tools, the bare blob.
    let blob = match serde_json::from_str::<sd::wire::SecurityDomainObject>(text) {
        Ok(o) => o.value,
        Err(_) => text.to_owned(),
    };
    let summary = sd::inspect_transfer_blob(&blob);
    match f.exchange.open_transfer_blob(&blob, POOL_ID) {
        Ok(s) => {
            assert!(s == f.secret, "a forged transfer blob opened");
            let summary = summary.expect("a blob that opens has a readable header");
            assert_eq!(summary.fingerprint, f.secret.fingerprint());
            assert_eq!(summary.pool_id, POOL_ID);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // Another pool never opens it.
    assert!(
        f.exchange
            .open_transfer_blob(&blob, "another-pool")
            .is_err()
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fx();
    if data.first() == Some(&EDIT_MODE) {
        let edited = apply_edits(f.blob.as_bytes(), &data[1..]);
        if let Ok(text) = std::str::from_utf8(&edited) {
            check(text, f);
        }
    } else if let Ok(text) = std::str::from_utf8(data) {
        check(text, f);
    }
});
