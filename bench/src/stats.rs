//! Results of one measured operation: throughput, latency percentiles, errors, and the CPU
//! split between the load generator and the server when both share the machine.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One row of the results: an operation measured on one source with one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpResult {
    /// Free text naming the setup of a run (e.g. `server pinned to CPU 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `keystead` (over HTTPS), `aws-lc-rs` (raw, in process) or `softhsm2` (PKCS#11).
    pub source: String,
    /// `rs256-sign`, `es256-sign`, `rsa-oaep-256-wrap`, `rsa-oaep-256-encrypt`.
    pub op: String,
    /// Worker threads of the measuring process.
    pub threads: usize,
    /// Concurrent HTTPS clients (load generator only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<usize>,
    /// Operations that succeeded inside the measured window.
    pub ops: u64,
    /// Operations that failed (must be 0 for a valid run).
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU used during the window (load generator only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSplit>,
    /// The first error seen, if any (never contains key material: only statuses and the
    /// pool's error message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl OpResult {
    /// Build a row from the latencies (nanoseconds) of the successful operations.
    pub fn new(
        source: &str,
        op: &str,
        threads: usize,
        mut latencies_ns: Vec<u64>,
        errors: u64,
        window: Duration,
    ) -> OpResult {
        latencies_ns.sort_unstable();
        let seconds = window.as_secs_f64();
        let ops = latencies_ns.len() as u64;
        OpResult {
            label: None,
            source: source.to_string(),
            op: op.to_string(),
            threads,
            clients: None,
            ops,
            errors,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: percentile(&latencies_ns, 50.0) / 1e6,
            p99_ms: percentile(&latencies_ns, 99.0) / 1e6,
            cpu: None,
            first_error: None,
        }
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<9} {:<21} threads={:<2} {}{:>10.1} ops/s  p50={:>8.3} ms  p99={:>8.3} ms  n={} errors={}",
            self.source,
            self.op,
            self.threads,
            self.clients
                .map(|c| format!("clients={c:<3} "))
                .unwrap_or_default(),
            self.ops_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.ops,
            self.errors
        );
        if let Some(c) = &self.cpu {
            s.push_str(&format!(
                "  cpu(cores): busy={:.2} server={:.2} generator={:.2}",
                c.busy_cores, c.server_cores, c.generator_cores
            ));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!("  first error: {e}"));
        }
        s
    }
}

/// Nearest-rank percentile `q` (0-100] of sorted values; 0 for an empty slice.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx] as f64
}

/// Where the CPU went during a measured window, in cores (1.0 = one core fully busy).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuSplit {
    /// Cores of the machine.
    pub cores: usize,
    /// All busy CPU (user + system + irq), whoever used it.
    pub busy_cores: f64,
    /// The `keystead-partition serve` processes.
    pub server_cores: f64,
    /// This load generator.
    pub generator_cores: f64,
}

/// A snapshot of CPU counters, in clock ticks (USER_HZ; the same unit in every file read).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    /// Sum of all fields of the aggregate `cpu` line of /proc/stat.
    pub total: u64,
    /// `idle` + `iowait` of that line.
    pub idle: u64,
    /// utime + stime of the server processes.
    pub server: u64,
    /// utime + stime of this process.
    pub generator: u64,
}

impl CpuSample {
    /// Read the counters now; `server_pids` are the processes counted as the server.
    /// Missing files (not Linux, a process that exited) count as zero.
    pub fn now(server_pids: &[u32]) -> CpuSample {
        let (total, idle) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_proc_stat(&s))
            .unwrap_or((0, 0));
        let server = server_pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .filter_map(|s| parse_pid_stat(&s))
            .sum();
        let generator = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_pid_stat(&s))
            .unwrap_or(0);
        CpuSample {
            total,
            idle,
            server,
            generator,
        }
    }

    /// The split between `self` (start) and `end`.
    pub fn split(&self, end: &CpuSample, cores: usize) -> Option<CpuSplit> {
        let total = end.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let idle = end.idle.saturating_sub(self.idle);
        let per_core = total as f64 / cores as f64;
        Some(CpuSplit {
            cores,
            busy_cores: total.saturating_sub(idle) as f64 / per_core,
            server_cores: end.server.saturating_sub(self.server) as f64 / per_core,
            generator_cores: end.generator.saturating_sub(self.generator) as f64 / per_core,
        })
    }
}

/// CPUs of the machine, counted from the `cpuN` lines of /proc/stat — not
/// `available_parallelism`, which shrinks to the affinity mask when this process is pinned
/// with `taskset` while the aggregate counters still cover every CPU.
pub fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .map(|s| count_cpu_lines(&s))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Number of per-CPU (`cpuN`) lines in /proc/stat text.
pub fn count_cpu_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit())
        })
        .count()
}

/// `(total, idle + iowait)` from the first (`cpu `) line of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user, so leave the last two out of the total.
    let total: u64 = fields.iter().take(8).sum();
    Some((total, fields[3] + fields[4]))
}

/// utime + stime from /proc/PID/stat (fields 14 and 15; the command name may hold spaces
/// and parentheses, so count from the last `)`).
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15) => indexes 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// PIDs of running `keystead-partition serve` processes whose command line mentions
/// `needle` (the pool directory: their `--config DIR/pN/config.json`), read from /proc.
/// Other pools on the same machine are not counted.
pub fn server_pids(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mentions = cmdline
            .split(|b| *b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(needle));
        if is_partition_serve(&cmdline) && mentions {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Whether a NUL-separated command line is `.../keystead-partition serve ...`.
pub fn is_partition_serve(cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or(argv0);
    name == b"keystead-partition" && args.iter().skip(1).any(|a| *a == b"serve")
}

/// Parse durations like `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 10s, 500ms or 2m"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn result_rates_and_units() {
        let r = OpResult::new(
            "aws-lc-rs",
            "es256-sign",
            1,
            vec![3_000_000, 1_000_000, 2_000_000, 4_000_000],
            0,
            Duration::from_secs(2),
        );
        assert_eq!(r.ops, 4);
        assert_eq!(r.ops_per_sec, 2.0);
        assert_eq!(r.p50_ms, 2.0);
        assert_eq!(r.p99_ms, 4.0);
        assert!(r.line().contains("es256-sign"));
    }

    #[test]
    fn proc_stat_parsing() {
        let text = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 50 2 25 400 10 0 1 1 0 0\n";
        assert_eq!(parse_proc_stat(text), Some((981, 820)));
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(count_cpu_lines(text), 1);
        assert_eq!(
            count_cpu_lines("cpu  1 2 3 4 5\ncpu0 1\ncpu1 2\nintr 3\n"),
            2
        );
        let pid = "1234 (tokio (worker) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 170 30 0 0 20 0 4 0 100 0 0\n";
        assert_eq!(parse_pid_stat(pid), Some(200));
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn cpu_split_in_cores() {
        let a = CpuSample {
            total: 1000,
            idle: 600,
            server: 100,
            generator: 50,
        };
        let b = CpuSample {
            total: 1200,
            idle: 620,
            server: 200,
            generator: 100,
        };
        let s = a.split(&b, 2).unwrap();
        assert!((s.busy_cores - 1.8).abs() < 1e-9);
        assert!((s.server_cores - 1.0).abs() < 1e-9);
        assert!((s.generator_cores - 0.5).abs() < 1e-9);
        assert_eq!(a.split(&a, 2), None);
    }

    #[test]
    fn serve_processes_are_recognised() {
        assert!(is_partition_serve(
            b"/w/target/release/keystead-partition\0serve\0--config\0c.json\0"
        ));
        assert!(!is_partition_serve(
            b"/w/target/release/keystead-partition\0local\0--dir\0d\0"
        ));
        assert!(!is_partition_serve(b"bash\0serve\0"));
        assert!(!is_partition_serve(b""));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
