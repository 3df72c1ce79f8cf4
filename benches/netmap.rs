//! One 10,000-peer netmap through containerboot: the CPU and the memory it
//! costs to take a Notify off the IPN bus, decide, and trace it. Run with
//! `cargo bench --bench netmap` (no root, nothing installed);
//! `NETMAP_BENCH_PEERS` (default 10000) and `NETMAP_BENCH_REPS` (default 30)
//! change the sizes. Method and results: BENCHMARKS.md.
//!
//! **The Notify.** One bus line as tailscaled v1.102 writes it for a
//! tailnet of N peers: a `NetMap` whose peers carry every field a real
//! netmap's `tailcfg.Node` carries (keys, endpoints, `Hostinfo` with its
//! `NetInfo` and services, `CapMap`, times), beside the self node, the DNS
//! config, the packet filter, the DERP map and the user profiles. Generated
//! here, deterministically: about 1.5 KiB a peer, 15 MiB for 10,000.
//!
//! **What is timed**, as the process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`)
//! around the shell's path for one message: the bytes pushed into the
//! bus's line splitter in 4 KiB frames (what hyper hands over), the line
//! decoded, the core's step (`Machine::handle` in Running), the step pushed
//! into the trace. Two configurations: no FQDN egress target (the netmap's
//! peers are not needed at all) and `TS_TAILNET_TARGET_FQDN` (only the one
//! matching peer is). The decode alone is also timed.
//!
//! **Memory.** The bench re-runs itself as a child (`--child`) that reads
//! the Notify from a file in 4 KiB reads (as from a socket), runs the same
//! path three times, and reports its peak RSS (`VmHWM`) and its RSS before
//! and after: what one Notify costs in memory, beside the Notify's size.
//!
//! **Whole processes, side by side.** Then containerboot itself, and
//! upstream's Go containerboot when `NETMAP_BENCH_UPSTREAM` names its
//! binary (`go build ./cmd/containerboot` in the tailscale.com v1.58.2
//! module), each booted on the simulator (`tailscaled-sim`, the same for
//! both) which, once Running, sends the same Notify line
//! `NETMAP_BENCH_SENDS` times (default 10), one every 1.5 s
//! (`notify_file` in its script). The subject's CPU is the sum of its
//! threads' run time (`/proc/PID/task/*/schedstat`), read at each send:
//! the difference between two sends is what one Notify cost it, all
//! included (HTTP framing, decoding, deciding, logging, its runtime's
//! garbage collection). Memory: `VmHWM` and `VmRSS` after the last.

#[path = "support/mod.rs"]
mod support;

use containerboot::ipn::IpnState;
use containerboot::machine::{BusMessage, Event, Machine};
use containerboot::settings::Settings;
use containerboot::sources::localapi::Lines;
use containerboot::trace::Trace;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

const FRAME: usize = 4096;
/// The FQDN egress target: the first peer, so that it exists whatever
/// `NETMAP_BENCH_PEERS` is (the decoder walks every peer either way).
const TARGET: &str = "host-00001.tail1234.ts.net";

/// A deterministic pseudo-random sequence (an LCG), for varied bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
    fn b64(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..n)
            .map(|_| A[(self.next() % 64) as usize] as char)
            .collect()
    }
}

fn node(rng: &mut Rng, i: u32, domain: &str) -> Value {
    let host = format!("host-{i:05}");
    let v4 = format!("100.{}.{}.{}/32", 64 + (i >> 16), (i >> 8) & 255, i & 255);
    let v6 = format!("fd7a:115c:a1e0::{:x}/128", i + 1);
    let mut derp = serde_json::Map::new();
    for r in 1..=6 {
        derp.insert(
            format!("{r}-v4"),
            json!((rng.next() % 200_000) as f64 / 1e6),
        );
    }
    json!({
        "ID": 1_000_000_000_000u64 + u64::from(i),
        "StableID": format!("n{}CNTRL", rng.b64(10).replace(['+', '/'], "x")),
        "Name": format!("{host}.{domain}."),
        "User": 4_000_000 + u64::from(i % 200),
        "Key": format!("nodekey:{}", rng.hex(64)),
        "KeyExpiry": "2027-05-30T12:00:00Z",
        "KeySignature": if i.is_multiple_of(4) { Value::String(rng.b64(176)) } else { Value::Null },
        "Machine": format!("mkey:{}", rng.hex(64)),
        "DiscoKey": format!("discokey:{}", rng.hex(64)),
        "Addresses": [v4, v6],
        "AllowedIPs": [v4, v6],
        "Endpoints": [
            format!("203.0.{}.{}:41641", (i >> 8) & 255, i & 255),
            format!("[2001:db8::{:x}]:41641", i + 1),
            format!("10.{}.{}.5:41641", (i >> 8) & 255, i & 255),
            "172.17.0.1:41641",
        ],
        "HomeDERP": 1 + i % 12,
        "Hostinfo": {
            "IPNVersion": "1.102.5-t3a9c2b1e0-g8f0e6d4c2",
            "FrontendLogID": "",
            "BackendLogID": rng.hex(64),
            "OS": "linux",
            "OSVersion": "Debian 12.8 (bookworm); kernel=6.1.0-28-amd64",
            "Distro": "debian",
            "DistroVersion": "12.8",
            "DistroCodeName": "bookworm",
            "Package": "tarball",
            "Hostname": host,
            "Machine": "x86_64",
            "GoArch": "amd64",
            "GoArchVar": "v1",
            "GoVersion": "go1.25.5",
            "Services": [
                {"Proto": "peerapi4", "Port": 40000 + i % 20000},
                {"Proto": "peerapi6", "Port": 40000 + i % 20000},
                {"Proto": "peerapi-dns-proxy", "Port": 1}
            ],
            "NetInfo": {
                "MappingVariesByDestIP": false,
                "WorkingIPv6": true,
                "OSHasIPv6": true,
                "WorkingUDP": true,
                "WorkingICMPv4": true,
                "UPnP": false,
                "PMP": false,
                "PCP": false,
                "PreferredDERP": 1 + i % 12,
                "DERPLatency": derp,
                "FirewallMode": "ipt-default"
            }
        },
        "Created": "2026-01-02T03:04:05.123456789Z",
        "Cap": 130,
        "Tags": if i.is_multiple_of(3) { json!(["tag:server", "tag:prod"]) } else { Value::Null },
        "PrimaryRoutes": if i.is_multiple_of(50) { json!(["10.0.0.0/24"]) } else { Value::Null },
        "LastSeen": "2026-11-30T23:59:59Z",
        "Online": !i.is_multiple_of(5),
        "MachineAuthorized": true,
        "CapMap": {
            "https://tailscale.com/cap/file-sharing-target": null,
            "https://tailscale.com/cap/ssh": null
        },
        "ComputedName": host,
        "ComputedNameWithHost": host
    })
}

/// The bus line for a tailnet of `peers` peers (with its newline).
fn notify_line(peers: u32) -> Vec<u8> {
    let domain = "tail1234.ts.net";
    let mut rng = Rng(42);
    let self_node = node(&mut rng, 0, domain);
    let peers: Vec<Value> = (1..=peers).map(|i| node(&mut rng, i, domain)).collect();
    let mut regions = serde_json::Map::new();
    for r in 1..=25u32 {
        regions.insert(
            r.to_string(),
            json!({
                "RegionID": r, "RegionCode": format!("r{r}"), "RegionName": format!("Region {r}"),
                "Latitude": 40.0 + f64::from(r), "Longitude": -70.0 - f64::from(r),
                "Nodes": [{"Name": format!("{r}a"), "RegionID": r,
                           "HostName": format!("derp{r}.tailscale.com"),
                           "IPv4": format!("198.51.100.{r}"), "IPv6": format!("2001:db8:1::{r:x}"),
                           "CanPort80": true}]
            }),
        );
    }
    let mut profiles = serde_json::Map::new();
    for u in 0..200u64 {
        profiles.insert(
            (4_000_000 + u).to_string(),
            json!({"ID": 4_000_000 + u, "LoginName": format!("user{u}@example.com"),
                   "DisplayName": format!("User {u}"), "ProfilePicURL": ""}),
        );
    }
    let notify = json!({
        "Version": "1.102.5-t3a9c2b1e0-g8f0e6d4c2",
        "NetMap": {
            "SelfNode": self_node,
            "NodeKey": format!("nodekey:{}", rng.hex(64)),
            "MachineKey": format!("mkey:{}", rng.hex(64)),
            "Peers": peers,
            "DNS": {
                "Resolvers": [{"Addr": "100.100.100.100"}],
                "Domains": [domain],
                "Proxied": true,
                "CertDomains": [format!("host-00000.{domain}")],
                "ExtraRecords": null
            },
            "PacketFilter": [
                {"IPProto": [6, 17, 1, 58], "Srcs": ["0.0.0.0/0", "::/0"], "Caps": [],
                 "Dsts": [{"Net": "0.0.0.0/0", "Ports": {"First": 0, "Last": 65535}},
                          {"Net": "::/0", "Ports": {"First": 0, "Last": 65535}}]}
            ],
            "SSHPolicy": {"rules": []},
            "CollectServices": true,
            "DERPMap": {"Regions": regions},
            "ControlHealth": null,
            "TKAEnabled": false,
            "UserProfiles": profiles,
            "Domain": domain,
            "DomainAuditLogID": rng.hex(64)
        }
    });
    let mut line = serde_json::to_vec(&notify).unwrap();
    line.push(b'\n');
    line
}

fn settings(fqdn: bool) -> Settings {
    let mut vars: BTreeMap<&str, &str> = BTreeMap::new();
    vars.insert("TS_AUTHKEY", "tskey-auth-bench");
    if fqdn {
        // Egress needs kernel mode; the fake netfilter keeps it in-process.
        vars.insert("TS_USERSPACE", "false");
        vars.insert("TS_TEST_FAKE_NETFILTER", "true");
        vars.insert("TS_TAILNET_TARGET_FQDN", TARGET);
    }
    Settings::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
        .unwrap_or_else(|e| panic!("settings: {e:?}"))
}

/// A machine in Running, having seen `line` once, with its trace and the
/// watch the bus messages belong to.
fn running(fqdn: bool, line: &[u8]) -> (Machine, Trace, u64) {
    use containerboot::machine::{CliOutcome, Command, ProcessExit};
    let settings = settings(fqdn);
    let mut trace = Trace::new(settings.clone(), settings.trace_steps);
    let (mut machine, init) = Machine::new(settings);
    trace.push(init);
    let mut now = 0;
    let mut watch = 0;
    // Feeds one event, answering the commands a real shell would: a bus
    // watch is opened at once, a CLI run succeeds, kernel prep succeeds.
    let mut pending = vec![Event::Start];
    let mut states = vec![IpnState::NeedsLogin, IpnState::Running].into_iter();
    for _ in 0..50 {
        let Some(event) = pending.pop() else {
            let Some(s) = states.next() else { break };
            pending.push(Event::Bus {
                watch,
                message: BusMessage {
                    state: Some(s),
                    ..Default::default()
                },
            });
            continue;
        };
        now += 1;
        let step = machine.handle(now, event);
        for c in &step.commands {
            match c {
                Command::WatchBus { watch: w, .. } => {
                    watch = *w;
                    pending.push(Event::BusOpened { watch: *w });
                }
                Command::WaitSocket { .. } => pending.push(Event::SocketReady),
                Command::PrepareKernel { .. } => pending.push(Event::KernelPrepared),
                Command::RunCli { cli, .. } => pending.push(Event::CliFinished {
                    cli: *cli,
                    outcome: CliOutcome::Exited {
                        status: ProcessExit::Code(0),
                        stderr: String::new(),
                    },
                }),
                _ => {}
            }
        }
        trace.push(step);
    }
    pipeline(&mut machine, &mut trace, fqdn, line, watch, now + 1);
    assert!(
        format!("{:?}", machine.state()).contains("Running"),
        "the machine is not Running: {:?}",
        machine.state()
    );
    (machine, trace, watch)
}

/// The shell's path for one bus line; returns the number of matching
/// peers the core saw.
fn pipeline(
    machine: &mut Machine,
    trace: &mut Trace,
    fqdn: bool,
    line: &[u8],
    watch: u64,
    now: u64,
) -> u64 {
    let mut lines = Lines::default();
    let mut got = None;
    for frame in line.chunks(FRAME) {
        lines.push(frame);
        if let Some(l) = lines.next_line() {
            got = Some(l);
        }
    }
    let message = decode(&got.expect("a whole line"), fqdn);
    let matching = message
        .net_map
        .as_ref()
        .map_or(0, |nm| nm.matching_peers.len() as u64);
    let step = machine.handle(now, Event::Bus { watch, message });
    trace.push(step);
    matching
}

fn decode(line: &[u8], fqdn: bool) -> BusMessage {
    let fqdn = fqdn.then_some(TARGET);
    BusMessage::decode(line, fqdn).expect("a valid Notify")
}

fn cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:.2}, p95 {:.2}, max {:.2}",
        p(0.5),
        p(0.95),
        v[v.len() - 1]
    )
}

/// `--child FILE FQDN`: the memory of the path, from a file read in frames.
fn child(path: &str, fqdn: bool) {
    let read_line = || {
        let mut f = std::fs::File::open(path).unwrap();
        let mut lines = Lines::default();
        let mut frame = [0u8; FRAME];
        loop {
            let n = f.read(&mut frame).unwrap();
            assert!(n > 0, "no newline in {path}");
            lines.push(&frame[..n]);
            if let Some(l) = lines.next_line() {
                return l;
            }
        }
    };
    // Boot to Running on a small netmap: the memory before is the steady
    // state of a running containerboot's core and trace.
    let (mut machine, mut trace, watch) = running(fqdn, &notify_line(2));
    let before = support::status_kib("self", "VmRSS:");
    for r in 0..3 {
        let line = read_line();
        let message = decode(&line, fqdn);
        drop(line);
        let step = machine.handle(1000 + r, Event::Bus { watch, message });
        trace.push(step);
    }
    let after = support::status_kib("self", "VmRSS:");
    let peak = support::status_kib("self", "VmHWM:");
    println!("{before} {after} {peak}");
}

/// The sum of the run times of `pid`'s threads, in milliseconds.
fn run_time_ms(pid: u32) -> f64 {
    let mut ns: u64 = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e6
}

/// Boots `program` on the simulator, which sends the Notify in `file`
/// `sends` times; returns (CPU ms per Notify, peak RSS, RSS at startup
/// complete, RSS after; KiB).
fn whole_process(program: &str, file: &std::path::Path, sends: u32) -> (Vec<f64>, u64, u64, u64) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let bin = support::sim_bin(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let record = dir.path().join("record.jsonl");
    let every_ms = 1500u64;
    let script = json!({
        "legacy_netmap": true,
        "notify_file": file,
        "notify_file_count": sends,
        "notify_file_every_ms": every_ms,
    });
    let script_file = dir.path().join("script.json");
    std::fs::write(&script_file, script.to_string()).unwrap();
    let mut child = std::process::Command::new(program)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("TS_SOCKET", dir.path().join("tailscaled.sock"))
        .env("TS_TEST_ONLY_ROOT", &root)
        .env("TS_AUTHKEY", "tskey-auth-bench")
        .env("TS_TRACE_FILE", dir.path().join("trace.jsonl"))
        .env("SIM_SCRIPT", &script_file)
        .env("SIM_RECORD", &record)
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Startup complete") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{program}: no 'Startup complete' within 30 s"));
    let sent = || {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"notify-file\""))
            .count() as u32
    };
    let before = support::status_kib(&pid.to_string(), "VmRSS:");
    let mut at_send = Vec::new();
    let deadline =
        std::time::Instant::now() + Duration::from_millis(every_ms * u64::from(sends + 4));
    while at_send.len() < sends as usize && std::time::Instant::now() < deadline {
        if sent() as usize > at_send.len() {
            at_send.push(run_time_ms(pid));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        at_send.len(),
        sends as usize,
        "{program}: the simulator sent {} of {sends}",
        at_send.len()
    );
    std::thread::sleep(Duration::from_millis(every_ms));
    at_send.push(run_time_ms(pid));
    let per: Vec<f64> = at_send.windows(2).map(|w| w[1] - w[0]).collect();
    let peak = support::status_kib(&pid.to_string(), "VmHWM:");
    let after = support::status_kib(&pid.to_string(), "VmRSS:");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = child.wait();
    (per, peak, before, after)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], args[i + 2] == "fqdn");
        return;
    }
    let peers: u32 = support::env_or("NETMAP_BENCH_PEERS", 10_000);
    let reps: usize = support::env_or("NETMAP_BENCH_REPS", 30);
    let line = notify_line(peers);
    let mib = line.len() as f64 / f64::from(1 << 20);
    println!("netmap bench: one Notify of {peers} peers, {mib:.1} MiB, {reps} repetitions");
    let file = std::env::temp_dir().join(format!("netmap-bench-{}.json", std::process::id()));
    std::fs::write(&file, &line).unwrap();

    for fqdn in [false, true] {
        let what = if fqdn {
            "with TS_TAILNET_TARGET_FQDN"
        } else {
            "no FQDN target"
        };
        let (mut machine, mut trace, watch) = running(fqdn, &line);
        let (mut whole, mut dec) = (Vec::new(), Vec::new());
        for r in 0..reps {
            let t = cpu();
            let matching = pipeline(
                &mut machine,
                &mut trace,
                fqdn,
                &line,
                watch,
                10_000 + r as u64,
            );
            assert_eq!(matching, u64::from(fqdn), "matching peers, {what}");
            whole.push((cpu() - t).as_secs_f64() * 1e3);
            let t = cpu();
            let m = decode(&line[..line.len() - 1], fqdn);
            dec.push((cpu() - t).as_secs_f64() * 1e3);
            drop(m);
        }
        println!(
            "  {what}: frames → line → decode → core → trace, CPU ms: {}",
            stats(whole)
        );
        println!("  {what}: decode alone, CPU ms: {}", stats(dec));
        let out = std::process::Command::new(&args[0])
            .args([
                "--child",
                file.to_str().unwrap(),
                if fqdn { "fqdn" } else { "none" },
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "child: {out:?}");
        let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        println!(
            "  {what}: RSS running before {:.1} MiB, after 3 Notifies {:.1} MiB, peak {:.1} MiB ({:.2} × the Notify)",
            v[0] as f64 / 1024.0,
            v[1] as f64 / 1024.0,
            v[2] as f64 / 1024.0,
            v[2] as f64 / 1024.0 / mib
        );
    }
    let sends: u32 = support::env_or("NETMAP_BENCH_SENDS", 10);
    let mut subjects = vec![(
        "containerboot".to_string(),
        env!("CARGO_BIN_EXE_containerboot").to_string(),
    )];
    match std::env::var("NETMAP_BENCH_UPSTREAM") {
        Ok(up) if !up.is_empty() => subjects.push(("upstream v1.58.2".to_string(), up)),
        _ => println!("  (upstream not measured: set NETMAP_BENCH_UPSTREAM to its binary)"),
    }
    for (name, program) in subjects {
        let (per, peak, before, after) = whole_process(&program, &file, sends);
        println!(
            "  whole process, {name}: CPU ms per Notify: {}; RSS at startup complete {:.1} MiB, peak {:.1} MiB ({:.2} × the Notify), after {:.1} MiB",
            stats(per),
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak as f64 / 1024.0 / mib,
            after as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_file(&file);
}
