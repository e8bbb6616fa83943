//! The fault tests' own hosts: one network namespace per partition, joined by a bridge, so
//! that network faults are real packet loss in the kernel instead of closed proxy
//! connections. Needs root and iproute2 (`ip netns`); where either is missing the tests fall
//! back to loopback proxies and say so.
//!
//! Layout of set `n` (0–199, allocated atomically by creating its hub namespace):
//! namespace `ksf<n>-hub` holds bridge `br0`; partition `i` runs in `ksf<n>-p<i>` with
//! address `10.231.<n>.<10+i>/24` on its `eth0`, whose peer is a port of the bridge; the
//! test process (root namespace) reaches the bridge through `ksf<n>r` with `10.231.<n>.1/24`.
//! A cut from partition `a` to partition `b` is a blackhole route to `b` in `a`'s namespace
//! (packets dropped, both TCP ends see silence — not a closed connection); a cut both ways is
//! one in each. A slow link is a token-bucket filter (`tc qdisc tbf`) on a partition's
//! `eth0`. `tc netem` (delay, random loss) is not in this kernel (probed: "Specified qdisc
//! kind is unknown"), nor are tc actions: delay is approximated by the slow link's queue.
//!
//! Two sets can be joined (two regions, each pool on its own hosts): a veth pair `j<m>` /
//! `j<n>` between the hubs' bridges is the link between the two sites; every partition
//! reaches `10.231.0.0/16` on its `eth0`, so once the bridges are joined it reaches the
//! other set's partitions directly. Setting that veth pair down cuts the region link:
//! packets are dropped, both ends see silence, and the test process (root namespace, a
//! leg into each set) still reaches both regions, as each region's own clients would.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

/// Where the owner of set `n` is recorded (its pid), to reclaim sets whose test died.
fn owner_file(n: u8) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keystead-netns-{n}.owner"))
}

pub struct Namespaces {
    n: u8,
    partitions: usize,
}

/// Run `ip` with `args`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Namespaces {
    /// Create a set for `partitions` partitions, or say why not (the caller falls back to
    /// loopback proxies and prints the reason).
    pub fn create(partitions: usize) -> Result<Namespaces, String> {
        if std::env::var_os("KEYSTEAD_FAULTS_LOOPBACK").is_some() {
            return Err("KEYSTEAD_FAULTS_LOOPBACK is set".into());
        }
        // Start at a point that depends on the process, so parallel tests rarely collide.
        let start = (std::process::id() % 200) as u8;
        for k in 0..200u16 {
            let n = ((start as u16 + k) % 200) as u8;
            let hub = format!("ksf{n}-hub");
            match ip(&["netns", "add", &hub]) {
                Ok(()) => {}
                Err(e) if e.contains("exists") => {
                    // Reclaim a set whose owner died without cleaning up.
                    let owner = std::fs::read_to_string(owner_file(n))
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    if owner.is_some_and(|p| !alive(p)) {
                        Namespaces { n, partitions: 8 }.remove();
                        if ip(&["netns", "add", &hub]).is_err() {
                            continue;
                        }
                    } else {
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            let _ = std::fs::write(owner_file(n), std::process::id().to_string());
            let set = Namespaces { n, partitions };
            // On failure the set is dropped, which removes what was made of it.
            return set.build().map(|()| set);
        }
        Err("no free namespace set (200 in use)".into())
    }

    fn hub(&self) -> String {
        format!("ksf{}-hub", self.n)
    }

    /// The namespace partition `i` runs in.
    pub fn ns(&self, i: usize) -> String {
        format!("ksf{}-p{i}", self.n)
    }

    /// Partition `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.n, 10 + i as u8)
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        // The test process's side.
        let root = format!("ksf{}r", self.n);
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", "r", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "r", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.231.{}.1/24", self.n),
            "dev",
            &root,
        ])?;
        ip(&["link", "set", &root, "up"])?;
        for i in 0..self.partitions {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("h{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // The other sets' partitions are on the same wire once the hubs are joined.
            ip(&["-n", &ns, "route", "add", "10.231.0.0/16", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Join this set's bridge to `other`'s (the link between two sites), up.
    pub fn join(&self, other: &Namespaces) -> Result<(), String> {
        let (here, there) = (format!("j{}", other.n), format!("j{}", self.n));
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "add",
            &here,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.hub(),
        ])?;
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &here,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &other.hub(),
            "link",
            "set",
            &there,
            "master",
            "br0",
            "up",
        ])?;
        Ok(())
    }

    /// Cut (or restore) the link made by [`Namespaces::join`] with `other`: both ends of
    /// the veth pair down (or up).
    pub fn set_joined(&self, other: &Namespaces, up: bool) {
        let state = if up { "up" } else { "down" };
        for (hub, dev) in [
            (self.hub(), format!("j{}", other.n)),
            (other.hub(), format!("j{}", self.n)),
        ] {
            ip(&["-n", &hub, "link", "set", &dev, state])
                .unwrap_or_else(|e| panic!("region link on {hub}: {e}"));
        }
    }

    /// The command that runs `program` in partition `i`'s namespace (`ip netns exec` execs
    /// it: the child's pid is the program's, so signals reach it directly).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(self.ns(i)).arg(program);
        c
    }

    /// Drop (or pass again) every packet partition `from` sends to partition `to`.
    pub fn set_cut(&self, from: usize, to: usize, cut: bool) {
        let dst = format!("{}/32", self.addr(to));
        let ns = self.ns(from);
        let r = if cut {
            ip(&["-n", &ns, "route", "replace", "blackhole", &dst])
        } else {
            match ip(&["-n", &ns, "route", "del", "blackhole", &dst]) {
                Err(e) if e.contains("No such process") => Ok(()),
                r => r,
            }
        };
        r.unwrap_or_else(|e| panic!("network fault on {ns}: {e}"));
    }

    /// Limit what partition `i` sends to a trickle (a token bucket of `kbit` kbit/s with a
    /// deep queue: its messages arrive late, none is dropped until the queue fills), or
    /// lift it.
    pub fn set_slow(&self, i: usize, kbit: Option<u32>) {
        let ns = self.ns(i);
        let r = match kbit {
            Some(k) => run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    &format!("{k}kbit"),
                    "burst",
                    "16kb",
                    "latency",
                    "3s",
                ],
            ),
            None => match run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            ) {
                Err(e) if e.contains("No such file") || e.contains("Cannot delete") => Ok(()),
                r => r,
            },
        };
        r.unwrap_or_else(|e| panic!("slow link on {ns}: {e}"));
    }

    fn remove(&self) {
        for i in 0..self.partitions {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        // Deleting the hub deletes the bridge and the peers of every veth, the root side
        // included.
        let _ = ip(&["netns", "del", &self.hub()]);
        let _ = std::fs::remove_file(owner_file(self.n));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}
