//! Bearer-token extraction (`auth::bearer_token`) and JWT validation
//! (`TokenValidator::validate_uncached`) against a fixed local issuer. Input: the value of
//! the `Authorization` header. A token that validates must be one the seeds signed.
#![no_main]

use std::sync::OnceLock;

use keystead_fuzz::{AUDIENCE, ISSUER, SEED_NAME_PREFIX, fixture_path};
use keystead_partition::auth::{self, AuthConfig, LocalIssuer, TokenValidator};
use libfuzzer_sys::fuzz_target;

fn validator() -> &'static TokenValidator {
    static V: OnceLock<TokenValidator> = OnceLock::new();
    V.get_or_init(|| {
        // The issuer key is a committed test fixture; load it from a private copy so that
        // the fixture's file mode is never touched.
        let dir = keystead_fuzz::scratch_dir("issuer");
        std::fs::copy(fixture_path("issuer-key.p8"), dir.join("issuer-key.p8"))
            .expect("issuer fixture");
        let issuer = LocalIssuer::load_or_create(&dir, ISSUER).expect("issuer fixture loads");
        TokenValidator::new(AuthConfig {
            audience: AUDIENCE.into(),
            issuers: vec![issuer.issuer_config()],
            leeway_secs: 60,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let Some(token) = auth::bearer_token(&headers) else {
        return;
    };
    match futures::executor::block_on(validator().validate_uncached(token)) {
        Ok(p) => {
            assert_eq!(p.issuer, ISSUER);
            assert!(
                p.subject.starts_with(SEED_NAME_PREFIX),
                "a token the seeds did not sign validated: {p:?}"
            );
        }
        Err(e) => {
            // Errors are clean: a status and a message that never holds the token.
            assert!(matches!(e.status(), 401 | 503));
            if token.len() > 16 {
                assert!(!e.to_string().contains(token), "the error echoes the token");
            }
        }
    }
});
