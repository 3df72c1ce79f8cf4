//! The soak: containerboot Running for a long time under a steady stream
//! of netmap changes and trace dumps, its resources sampled from outside.
//! Run with `cargo bench --bench soak` (no root, nothing to install);
//! `SOAK_MINUTES` (default 30), `SOAK_EVERY_MS` (default 100). Method and
//! results: BENCHMARKS.md. A measurement, not a test.
//!
//! **The load.** containerboot in kernel mode as an ingress proxy
//! (`TS_DEST_IP`) with the in-memory netfilter backend
//! (`TS_TEST_FAKE_NETFILTER`, a test root with the forwarding sysctls and
//! the tun device as files), booted on the simulator, which once Running
//! sends two whole netmaps every `SOAK_EVERY_MS`: the node at 100.64.0.1,
//! then at 100.64.0.2 (`notify_file` of its script, a file of two lines).
//! So every netmap changes the node's address, and every one is decided,
//! traced and turned into a rule reconciliation (ingress DNAT and SNAT
//! replaced). A SIGUSR1 every minute writes the trace.
//!
//! **What is sampled**, every 10 s from `/proc/PID`: RSS (`VmRSS`), open
//! file descriptors (`fd/`), threads (`task/`), and the CPU time so far.
//! The report compares the first five minutes with the last five.

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use std::time::{Duration, Instant};

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: usize,
    cpu_ms: f64,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let rss_kib = support::status_kib(&pid.to_string(), "VmRSS:");
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name's closing parenthesis: utime is the
    // 12th, stime the 13th (clock ticks, 100 a second here).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let cpu_ms = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 * 10.0;
    Sample {
        at,
        rss_kib,
        fds: count("fd"),
        threads: count("task"),
        cpu_ms,
    }
}

fn netmap_line(last: u8) -> String {
    json!({"NetMap": {
        "SelfNode": {"ID": 1, "StableID": "nSOAK", "Name": "soak.tailnet.ts.net.",
                      "Addresses": [format!("100.64.0.{last}/32"), format!("fd7a:115c:a1e0::{last}/128")]},
        "Peers": [{"ID": 2, "StableID": "nPEER", "Name": "peer.tailnet.ts.net.",
                   "Addresses": ["100.64.0.9/32"]}],
        "DNS": {"CertDomains": ["soak.tailnet.ts.net"]}
    }})
    .to_string()
}

fn main() {
    let minutes: u64 = support::env_or("SOAK_MINUTES", 30);
    let every_ms: u64 = support::env_or("SOAK_EVERY_MS", 100);
    let dir = tempfile::tempdir().unwrap();
    let bin = support::sim_bin(dir.path());
    let root = dir.path().join("root");
    for (file, value) in [
        ("proc/sys/net/ipv4/ip_forward", "0"),
        ("proc/sys/net/ipv6/conf/all/forwarding", "0"),
        ("dev/net/tun", ""),
    ] {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, value).unwrap();
    }
    let notify = dir.path().join("netmaps.jsonl");
    std::fs::write(&notify, format!("{}\n{}\n", netmap_line(1), netmap_line(2))).unwrap();
    let sends = (minutes * 60_000 / every_ms) as u32 + 100;
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!({
            "legacy_netmap": true,
            "notify_file": notify,
            "notify_file_count": sends,
            "notify_file_every_ms": every_ms,
        })
        .to_string(),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("containerboot.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_containerboot"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("TS_SOCKET", dir.path().join("tailscaled.sock"))
        .env("TS_TEST_ONLY_ROOT", &root)
        .env("TS_AUTHKEY", "tskey-auth-soak")
        .env("TS_USERSPACE", "false")
        .env("TS_DEST_IP", "10.1.2.3")
        .env("TS_TEST_FAKE_NETFILTER", "true")
        .env("TS_TRACE_FILE", dir.path().join("trace.jsonl"))
        .env("SIM_SCRIPT", &script)
        .env("SIM_RECORD", dir.path().join("record.jsonl"))
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    println!(
        "soak: {minutes} min, two netmaps every {every_ms} ms, SIGUSR1 every minute; containerboot pid {pid}"
    );
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next_dump = Duration::from_secs(60);
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(10));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("containerboot exited during the soak: {status}");
        }
        let at = start.elapsed();
        if at >= next_dump {
            next_dump += Duration::from_secs(60);
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::USR1,
            );
        }
        let s = sample(pid, at);
        println!(
            "  {:>5.0} s: RSS {:.2} MiB, {} fds, {} threads, CPU {:.1} s",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            s.cpu_ms / 1000.0
        );
        samples.push(s);
    }
    let window = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .collect()
    };
    let total = Duration::from_secs(minutes * 60);
    let five = Duration::from_secs(300.min(minutes * 30));
    let first = window(Duration::ZERO, five);
    let last = window(total.saturating_sub(five), total + Duration::from_secs(60));
    let summary = |name: &str, w: &[&Sample]| {
        let max_rss = w.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let min_rss = w.iter().map(|s| s.rss_kib).min().unwrap_or(0);
        let fds: Vec<usize> = w.iter().map(|s| s.fds).collect();
        let threads: Vec<usize> = w.iter().map(|s| s.threads).collect();
        println!(
            "  {name}: RSS {:.2}–{:.2} MiB, fds {:?}–{:?}, threads {:?}–{:?}",
            min_rss as f64 / 1024.0,
            max_rss as f64 / 1024.0,
            fds.iter().min(),
            fds.iter().max(),
            threads.iter().min(),
            threads.iter().max()
        );
    };
    summary("first 5 min", &first);
    summary("last 5 min", &last);
    if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
        let secs = (b.at - a.at).as_secs_f64();
        println!(
            "  CPU {:.1} % of one core over the soak ({:.1} s in {:.0} s)",
            (b.cpu_ms - a.cpu_ms) / 10.0 / secs,
            (b.cpu_ms - a.cpu_ms) / 1000.0,
            secs
        );
    }
    // One more dump, read once written: the load really was decided.
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::USR1,
    );
    std::thread::sleep(Duration::from_secs(2));
    let trace = std::fs::read_to_string(dir.path().join("trace.jsonl")).unwrap_or_default();
    let reconciles = trace.matches("\"ReconcileRules\"").count();
    let last_seq = trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap_or(0);
    println!(
        "  last trace dump: {} steps kept, {} rule reconciliations among them, {last_seq} steps in all",
        trace.lines().count().saturating_sub(1),
        reconciles
    );
    assert!(
        reconciles > 0,
        "no netmap was turned into rules: the load did not arrive"
    );
    let sent = std::fs::read_to_string(dir.path().join("record.jsonl"))
        .unwrap_or_default()
        .matches("\"notify-file\"")
        .count();
    println!("  netmaps sent: {} (two per send)", sent * 2);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let status = child.wait().unwrap();
    println!("  exit after SIGTERM: {status}");
}
