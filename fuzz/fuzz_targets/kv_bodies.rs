//! Every Key Vault JSON request body of keystead-core (keys, RBAC, security domain,
//! membership, backup storage). Input: a selector byte, then the body. Each type must
//! round-trip (parse, serialize, parse: the same), and the checks the API runs on a parsed
//! body must not panic.
#![no_main]

use keystead_core::keys::{self, CurveName, KeyType, SignatureAlgorithm};
use keystead_core::{members, rbac, sd, store};
use keystead_fuzz::json_round_trip as rt;
use keystead_partition::fuzzing::iso8601_duration_secs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 16 {
        0 => {
            if let Some(p) = rt::<keys::KeyCreateParameters>(body) {
                if let Ok(t) = KeyType::parse(&p.kty) {
                    let _ = t.family();
                    let _ = t.to_hsm();
                }
                if let Some(c) = p.crv.as_deref().and_then(|c| CurveName::parse(c).ok()) {
                    assert!(c.field_len() > 0 && c.bits() > 0);
                }
            }
        }
        1 => {
            if let Some(p) = rt::<keys::KeyImportParameters>(body) {
                let _ = p.key.has_private_material();
            }
        }
        2 => {
            let _ = rt::<keys::KeyUpdateParameters>(body);
        }
        3 => {
            let _ = rt::<keys::KeyOperationsParameters>(body);
        }
        4 => {
            if let Some(p) = rt::<keys::KeySignParameters>(body)
                && let Ok(alg) = SignatureAlgorithm::parse(&p.alg)
            {
                let _ = alg.digest_len();
            }
        }
        5 => {
            let _ = rt::<keys::KeyVerifyParameters>(body);
        }
        6 => {
            let _ = rt::<keys::KeyRestoreParameters>(body);
        }
        7 => {
            let _ = rt::<keys::KeyReleaseParameters>(body);
        }
        8 => {
            let _ = rt::<keys::GetRandomBytesRequest>(body);
        }
        9 => {
            if let Some(p) = rt::<keys::KeyRotationPolicy>(body) {
                for a in p.lifetime_actions.iter().flatten() {
                    if let Some(t) = &a.trigger {
                        for d in [&t.time_after_create, &t.time_before_expiry]
                            .into_iter()
                            .flatten()
                        {
                            if let Some(secs) = iso8601_duration_secs(d) {
                                assert!(secs >= 0, "negative duration {secs} from {d:?}");
                            }
                        }
                    }
                    if let Some(t) = a.action.as_ref().and_then(|a| a.r#type.as_deref()) {
                        let _ = keys::is_lifetime_action_type(t);
                    }
                }
                if let Some(e) = p.attributes.as_ref().and_then(|a| a.expiry_time.as_deref()) {
                    let _ = iso8601_duration_secs(e);
                }
            }
        }
        10 => {
            if let Some(p) = rt::<rbac::RoleAssignmentCreateParameters>(body) {
                let _ = rbac::resolve_role_definition_guid(&p.properties.role_definition_id);
                let mut state = rbac::RbacState::new();
                let _ = state.put_assignment("/", "00000000-0000-4000-8000-000000000000", &p);
            }
        }
        11 => {
            if let Some(p) = rt::<rbac::RoleDefinitionCreateParameters>(body) {
                let mut state = rbac::RbacState::new();
                let before = state.clone();
                if state
                    .put_definition("/", "00000000-0000-4000-8000-000000000001", &p)
                    .is_err()
                {
                    assert_eq!(state, before, "a refused definition changed the RBAC state");
                }
            }
        }
        12 => {
            if let Some(p) = rt::<sd::wire::CertificateInfo>(body) {
                let _ = sd::custodians_from_download_request(&p);
            }
        }
        13 => {
            let _ = rt::<sd::wire::SecurityDomainObject>(body);
        }
        14 => {
            if let Some(m) = rt::<members::MemberSpec>(body)
                && m.validate().is_ok()
            {
                let _ = m.normalized_url();
            }
        }
        _ => {
            if let Some(p) = rt::<store::StorageParameters>(body) {
                let _ = format!("{p:?}");
            }
        }
    }
});
