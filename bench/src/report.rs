//! `keystead-bench report`: Markdown tables from the JSON lines of `load`, `raw` and
//! `softhsm`, with the HTTPS throughput as a ratio of the in-process baselines.

use crate::stats::OpResult;
use anyhow::Context;
use std::fmt::Write;
use std::path::Path;

/// Read a results file (one JSON object per line; blank lines ignored).
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<OpResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {} is not a benchmark result",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// The baseline operation an HTTPS operation is compared with: wrap is RSA-OAEP-256
/// encryption of the key bytes, so both compare with raw OAEP encryption.
pub fn baseline_op(op: &str) -> &str {
    match op {
        "rsa-oaep-256-wrap" => "rsa-oaep-256-encrypt",
        other => other,
    }
}

fn find<'a>(rows: &'a [OpResult], source: &str, op: &str, threads: usize) -> Option<&'a OpResult> {
    rows.iter()
        .find(|r| r.source == source && r.op == op && r.threads == threads)
}

fn ratio(x: f64, base: Option<&OpResult>) -> String {
    match base {
        Some(b) if b.ops_per_sec > 0.0 => format!("{:.2}×", x / b.ops_per_sec),
        _ => "–".to_string(),
    }
}

fn ops(r: Option<&OpResult>) -> String {
    r.map(|r| format!("{:.0}", r.ops_per_sec))
        .unwrap_or_else(|| "–".to_string())
}

/// All rows, then the ratios of each HTTPS row to the baselines at 1 and 2 threads.
pub fn markdown(rows: &[OpResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| source | setup | operation | threads | clients | ops/s | p50 ms | p99 ms | errors | CPU cores: server / generator / busy |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
            r.source,
            r.label.as_deref().unwrap_or(""),
            r.op,
            r.threads,
            r.clients.map(|c| c.to_string()).unwrap_or_default(),
            r.ops_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu
                .map(|c| format!(
                    "{:.2} / {:.2} / {:.2}",
                    c.server_cores, c.generator_cores, c.busy_cores
                ))
                .unwrap_or_default()
        );
    }
    let https: Vec<&OpResult> = rows.iter().filter(|r| r.source == "keystead").collect();
    if https.is_empty() {
        return s;
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| setup | operation | HTTPS ops/s | aws-lc-rs 1T | ratio | aws-lc-rs 2T | ratio | SoftHSM2 1T | ratio | SoftHSM2 2T | ratio |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in https {
        let b = baseline_op(&r.op);
        let (a1, a2) = (find(rows, "aws-lc-rs", b, 1), find(rows, "aws-lc-rs", b, 2));
        let (h1, h2) = (find(rows, "softhsm2", b, 1), find(rows, "softhsm2", b, 2));
        let x = r.ops_per_sec;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label.as_deref().unwrap_or(""),
            r.op,
            x,
            ops(a1),
            ratio(x, a1),
            ops(a2),
            ratio(x, a2),
            ops(h1),
            ratio(x, h1),
            ops(h2),
            ratio(x, h2)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(source: &str, op: &str, threads: usize, n: usize) -> OpResult {
        OpResult::new(
            source,
            op,
            threads,
            vec![1_000_000; n],
            0,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn ratios_use_the_matching_baseline() {
        let rows = vec![
            row("aws-lc-rs", "rsa-oaep-256-encrypt", 1, 1000),
            row("aws-lc-rs", "rsa-oaep-256-encrypt", 2, 2000),
            row("softhsm2", "rsa-oaep-256-encrypt", 1, 500),
            row("keystead", "rsa-oaep-256-wrap", 1, 900),
        ];
        let md = markdown(&rows);
        let line = md
            .lines()
            .find(|l| l.contains("rsa-oaep-256-wrap") && l.contains("0.90×"))
            .unwrap_or_else(|| panic!("no ratio line in\n{md}"));
        assert!(line.contains("0.45×"), "{line}");
        assert!(line.contains("1.80×"), "{line}");
        assert!(
            line.contains('–'),
            "missing SoftHSM2 2T shows a dash: {line}"
        );
    }

    #[test]
    fn rows_round_trip_through_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        let mut r = row("keystead", "es256-sign", 1, 3);
        r.clients = Some(64);
        r.label = Some("shared".into());
        std::fs::write(&p, format!("{}\n\n", serde_json::to_string(&r).unwrap())).unwrap();
        let back = read_rows(&p).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].clients, Some(64));
        assert_eq!(back[0].label.as_deref(), Some("shared"));
        std::fs::write(&p, "not json\n").unwrap();
        let e = format!("{:#}", read_rows(&p).unwrap_err());
        assert!(e.contains("line 1"), "{e}");
    }
}
