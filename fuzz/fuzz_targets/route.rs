//! Route parsing of the Key Vault API (`api::route::parse`) and the path and name helpers
//! of RBAC and the backup stores. Input: a method byte, then the path.
#![no_main]

use http::Method;
use keystead_core::{rbac, store};
use keystead_partition::http::route::{self, Route};
use keystead_partition::fuzzing::{iso8601_duration_secs, validate_name};
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 6] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    if let Some(r) = route::parse(method, path) {
        // Whatever matched came from the path: a named key or job is a segment of it.
        match &r {
            Route::Rbac { scope, .. } => {
                assert!(
                    scope == "/" || scope == "/keys" || scope.starts_with("/keys/"),
                    "unexpected RBAC scope {scope:?}"
                );
            }
            Route::CreateKey { name } | Route::GetKey { name, .. } | Route::DeleteKey { name } => {
                assert!(!name.contains('/'), "a key name spans segments: {name:?}");
            }
            _ => {}
        }
    }
    // RBAC paths and scopes.
    if let Some((scope, _kind, _name)) = rbac::parse_rbac_path(path) {
        let _ = rbac::normalize_scope(&scope);
    }
    if let Some(n) = rbac::normalize_scope(path) {
        assert_eq!(
            rbac::normalize_scope(&n).as_deref(),
            Some(n.as_str()),
            "normalize_scope is not idempotent for {path:?}"
        );
        assert!(rbac::scope_covers(&n, &n), "a scope covers itself: {n:?}");
    }
    let _ = rbac::resolve_role_definition_guid(path);
    let _ = rbac::is_valid_key_name(path);
    let _ = path.parse::<rbac::DataAction>();
    // Backup destinations and folders, key names, rotation durations.
    let _ = store::claim_of(path);
    let _ = store::split_folder(path);
    let _ = store::validate_folder(path);
    let _ = validate_name(path);
    let _ = iso8601_duration_secs(path);
});
