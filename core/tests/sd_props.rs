//! Property tests: every m-subset of custodian keys recovers the domain, every (m-1)-subset
//! fails — both by count and when an attacker lowers the quorum written in the file.

mod sd_common;

use keystead_core::sd::{DomainSecret, SdError, create_domain_file, recover_domain};
use proptest::prelude::*;
use sd_common::{privates, publics, subsets};

/// Pick at most `max` subsets deterministically from `seed` (all when there are few).
fn sample(mut all: Vec<Vec<usize>>, max: usize, seed: u64) -> Vec<Vec<usize>> {
    if all.len() <= max {
        return all;
    }
    let mut out = Vec::with_capacity(max);
    let mut state = seed | 1;
    for _ in 0..max {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let i = (state % all.len() as u64) as usize;
        out.push(all.swap_remove(i));
    }
    out
}

fn with_quorum(file: &str, quorum: u32) -> String {
    let mut v: serde_json::Value = serde_json::from_str(file).unwrap();
    v["quorum"] = quorum.into();
    v.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn m_subsets_recover_and_smaller_subsets_fail(
        (n, m) in (3usize..=10).prop_flat_map(|n| (Just(n), 2usize..=n)),
        seed in any::<u64>(),
    ) {
        let secret = DomainSecret::generate("prop-pool");
        let idx: Vec<usize> = (0..n).collect();
        let file = create_domain_file(&secret, &publics(&idx), m as u32).unwrap();
        for subset in sample(subsets(n, m), 12, seed) {
            let got = recover_domain(&file, &privates(&subset)).unwrap();
            prop_assert_eq!(got.fingerprint(), secret.fingerprint());
            prop_assert!(got == secret);
        }
        let lowered = with_quorum(&file, (m - 1) as u32);
        for subset in sample(subsets(n, m - 1), 6, seed.rotate_left(17)) {
            let err = recover_domain(&file, &privates(&subset)).unwrap_err();
            prop_assert_eq!(err, SdError::NotEnoughKeys { given: m - 1, needed: m });
            if m > 2 {
                // Lowering the quorum in the file does not help: m-1 shares do not give the
                // key, and the header edit is detected.
                let err = recover_domain(&lowered, &privates(&subset)).unwrap_err();
                prop_assert!(matches!(err, SdError::Integrity(_)), "{:?}", err);
            }
        }
    }
}

/// Exhaustive for small pools: every m-subset recovers, every (m-1)-subset fails.
#[test]
fn exhaustive_subsets_for_small_pools() {
    for n in 3..=5usize {
        for m in 2..=n {
            let secret = DomainSecret::generate("exhaustive");
            let idx: Vec<usize> = (0..n).collect();
            let file = create_domain_file(&secret, &publics(&idx), m as u32).unwrap();
            for subset in subsets(n, m) {
                assert_eq!(
                    recover_domain(&file, &privates(&subset)).unwrap(),
                    secret,
                    "n={n} m={m} {subset:?}"
                );
            }
            let lowered = with_quorum(&file, (m - 1) as u32);
            for subset in subsets(n, m - 1) {
                assert_eq!(
                    recover_domain(&file, &privates(&subset)).unwrap_err(),
                    SdError::NotEnoughKeys {
                        given: m - 1,
                        needed: m
                    }
                );
                if m > 2 {
                    assert!(matches!(
                        recover_domain(&lowered, &privates(&subset)),
                        Err(SdError::Integrity(_))
                    ));
                }
            }
        }
    }
}
