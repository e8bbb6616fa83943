//! The log filter every Keystead binary reads: `KEYSTEAD_LOG` (a `tracing` env-filter
//! directive such as `info,keystead_operator=debug`), else `RUST_LOG` when only that is set
//! (older deployments and tools that set it), else the binary's default.

/// The variable that holds the log filter of every Keystead binary.
pub const LOG_FILTER_VAR: &str = "KEYSTEAD_LOG";
/// Read when [`LOG_FILTER_VAR`] is not set.
pub const FALLBACK_LOG_FILTER_VAR: &str = "RUST_LOG";

/// The log filter directive: [`LOG_FILTER_VAR`], else [`FALLBACK_LOG_FILTER_VAR`], else
/// `default`.
pub fn log_filter(default: &str) -> String {
    filter_from(|v| std::env::var(v).ok(), default)
}

fn filter_from(var: impl Fn(&str) -> Option<String>, default: &str) -> String {
    var(LOG_FILTER_VAR)
        .or_else(|| var(FALLBACK_LOG_FILTER_VAR))
        .unwrap_or_else(|| default.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystead_log_wins_then_rust_log_then_the_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |v: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, x)| x.to_string())
            }
        };
        let both = env(&[("KEYSTEAD_LOG", "debug"), ("RUST_LOG", "warn")]);
        assert_eq!(filter_from(both, "info"), "debug");
        assert_eq!(filter_from(env(&[("RUST_LOG", "warn")]), "info"), "warn");
        assert_eq!(filter_from(env(&[]), "info"), "info");
    }
}
