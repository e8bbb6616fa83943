#!/usr/bin/env python3
"""Per-request inclusive instruction counts of the request path's stages, from one callgrind
dump of a partition (scripts/profile-request.sh writes them): profile-stages.py FILE N.

A stage is the inclusive cost of the functions named below (release symbols: what the
compiler inlined is counted in its caller). Kernel time is not in a callgrind count."""
import re
import subprocess
import sys

STAGES = [
    ("partition total (all threads)", [r"PROGRAM TOTALS"]),
    ("TLS handshakes (new connections: peers reconnecting under valgrind)",
     [r"tokio_rustls::common::Stream<IO,C>::handshake$"]),
    ("TLS records: decrypt", [r"rustls::record_layer::RecordLayer::decrypt_incoming$"]),
    ("TLS records: encrypt", [r"rustls::common_state::CommonState::send_appdata_encrypt$"]),
    ("HTTP/1.1: parse the request head", [r"hyper::proto::h1::io::Buffered<T,B>::parse$"]),
    ("HTTP/1.1: encode the response head",
     [r"<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode$"]),
    ("request span (tracing): create", [r"tracing::span::Span::new$"]),
    ("request span (tracing): enter/exit",
     [r"tracing_core::dispatcher::Dispatch::enter$", r"tracing_core::dispatcher::Dispatch::exit$"]),
    ("tracing-instrumented futures: the request chain (below) and peer calls",
     [r"<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll$"]),
    ("  token validation", [r"keystead_partition::auth::validator::TokenValidator::validate::\{\{closure\}\}$"]),
    ("  read barrier: the request's wait",
     [r"keystead_partition::consensus::raft::Replica::read_barrier::\{\{closure\}\}$"]),
    ("  handler (RBAC, key lookup, JSON, crypto)", [r"keystead_partition::http::dispatch::\{\{closure\}\}$"]),
    ("    RBAC", [r"keystead_partition::http::Ctx::authorize$"]),
    ("    JSON: parse the body", [r"keystead_partition::http::Ctx::json$"]),
    ("    crypto (aws-lc-rs)",
     [r"keystead_partition::crypto::KeyMaterial::(sign|encrypt|wrap_key|decrypt|unwrap_key|verify)$"]),
    ("  audit record", [r"keystead_partition::http::chain::record_(outcome|intent)$"]),
    ("read barrier: leadership rounds (spawned)",
     [r"keystead_partition::consensus::raft::read_index::Batcher::read_index::\{\{closure\}\}::\{\{closure\}\}$"]),
    ("Raft core task (heartbeats, read-index; within the instrumented futures)",
     [r"openraft::core::raft_core::RaftCore<C,N,LS,SM>::do_main::\{\{closure\}\}::\{\{closure\}\}$"]),
]

pat = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$")


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    costs = {}
    total = 0
    for line in out.splitlines():
        m = pat.match(line)
        if not m:
            continue
        count, name = int(m.group(1).replace(",", "")), m.group(2)
        if name.startswith("PROGRAM TOTALS"):
            total = count
            continue
        name = re.sub(r"^\?\?\?:", "", name)
        costs[name] = costs.get(name, 0) + count
    print(f"| stage | instructions per request |\n|---|---:|")
    for label, pats in STAGES:
        if pats == [r"PROGRAM TOTALS"]:
            v = total
        else:
            # A recursive function's own entry counts once: keep the largest of its names.
            v = sum(max([c for k, c in costs.items() if re.search(p, k)] or [0]) for p in pats)
        print(f"| {label} | {v // n:,} |")


main()
