//! Real packets through the proxy rules: the real containerboot in kernel
//! mode with a real backend (iptables, nftables) and the simulator as
//! tailscaled, and TCP connections between network namespaces that only
//! reach their server if the rules containerboot installed work.
//!
//! Each test makes three network namespaces of its own (`ip netns add`,
//! names unique to the process and the test) and nothing else: every link,
//! address, route, sysctl and rule is made inside them, and a guard deletes
//! the links and the namespaces when the test ends, failed or not.
//!
//! ```text
//!  T, the tailnet                P, the proxy (containerboot)                S, the LAN
//!  peer0                         tailscale0                eth1               eth0
//!  100.64.0.2/32  <-- veth -->   100.64.0.1/32             192.0.2.1/24 <-- veth --> 192.0.2.10/24
//!  100.64.0.3/32                 100.64.0.0/10 dev tailscale0                 default via 192.0.2.1
//!  100.64.0.1 dev peer0          ip_forward=1
//!    src 100.64.0.3
//! ```
//!
//! P's end of the T link is named `tailscale0` and has the node's tailnet
//! address (the simulator's self node: 100.64.0.1/32, fd7a:115c:a1e0::1/128),
//! standing in for the tun device; containerboot's own writes (the tun
//! device, the forwarding sysctls) stay under `TS_TEST_ONLY_ROOT`, so the
//! test turns forwarding on in P itself. In T, 100.64.0.2 is the egress
//! target (a peer with a server) and 100.64.0.3 a tailnet client.
//! IPv6 is the same with fd7a:115c:a1e0::1, ::2, ::3 (/128, route
//! fd7a:115c:a1e0::/48 via tailscale0) and, for the LAN, a /64 inside the
//! tailnet's ULA prefix (fd7a:115c:a1e0:1::1 and ::10), every address
//! `nodad`, so no duplicate address detection delays it.
//!
//! **Routing assumption (ingress):** the ingress rule only DNATs; it does
//! not SNAT. Replies from the server reach P because the server's default
//! route is via P, as in a pod network whose gateway is the proxy, and the
//! server sees the tailnet client's own address. Upstream's containerboot
//! installs no SNAT for ingress either: in a real deployment tailscaled's
//! own rules (traffic from `tailscale0` marked in `ts-forward`, masqueraded
//! in `ts-postrouting`, `--snat-subnet-routes` being the default) bring the
//! replies back. The simulator installs no rules of its own, so the test
//! routes S via P instead.
//!
//! For each backend and family:
//! - **ingress** (`TS_DEST_IP`): from T, the node's address reaches the
//!   server in S;
//! - **egress** (`TS_TAILNET_TARGET_IP` = the peer): from S, P's LAN
//!   address reaches the peer's server in T, as the node's address;
//! - **tailnet not forwarded**: with that egress proxy, a tailnet client's
//!   connection to the node's address reaches the node itself, never the
//!   egress target (what the egress DNAT's `iifname` match is for);
//! - **control**: the same with upstream's `oifname` match put in by hand,
//!   where that connection does reach the target, so the previous test's
//!   assertion can fail.
//!
//! Readiness is polled (a connection retried while it gets no answer, for
//! [`PATIENCE`] at most); the assertions are on outcomes (answered, refused,
//! who the server saw), never on durations.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::harness::{self, Need};
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// The port every server listens on and every client connects to (DNAT
/// keeps the port).
const PORT: u16 = 8080;

/// How long one connection attempt waits to connect. A dropped SYN is sent
/// again after a second, so this covers one retransmission; an attempt
/// that does not connect in time is made again, not failed.
const TRY: Duration = Duration::from_secs(2);

/// How long a connected client or server waits for the other side's line
/// (a safety net; a connection that was made is never made again, so a
/// server sees each client once).
const ANSWER: Duration = Duration::from_secs(20);

/// The kernel backend under test.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Iptables,
    Nftables,
}

/// The address family of everything in a test.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

/// The addresses of a test's topology.
struct Plan {
    /// The node's tailnet address, on P's `tailscale0`.
    node: IpAddr,
    /// The tailnet's prefix, routed via `tailscale0` in P.
    tailnet: &'static str,
    /// The egress target: a tailnet peer in T with a server.
    peer: IpAddr,
    /// Another tailnet peer in T: the client of the tailnet-side tests.
    client: IpAddr,
    /// P's address on the LAN.
    lan_proxy: IpAddr,
    /// S's address on the LAN: the ingress destination.
    lan_server: IpAddr,
    /// The LAN's prefix length.
    lan_len: u8,
    /// A host's prefix length.
    host_len: u8,
}

impl Family {
    fn plan(self) -> Plan {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        match self {
            Family::V4 => Plan {
                node: ip("100.64.0.1"),
                tailnet: "100.64.0.0/10",
                peer: ip("100.64.0.2"),
                client: ip("100.64.0.3"),
                lan_proxy: ip("192.0.2.1"),
                lan_server: ip("192.0.2.10"),
                lan_len: 24,
                host_len: 32,
            },
            Family::V6 => Plan {
                node: ip("fd7a:115c:a1e0::1"),
                tailnet: "fd7a:115c:a1e0::/48",
                peer: ip("fd7a:115c:a1e0::2"),
                client: ip("fd7a:115c:a1e0::3"),
                lan_proxy: ip("fd7a:115c:a1e0:1::1"),
                lan_server: ip("fd7a:115c:a1e0:1::10"),
                lan_len: 64,
                host_len: 128,
            },
        }
    }

    /// `ip`'s family flag.
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// Runs `ip` with `args`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a program in this thread's namespace; its stdout. Panics on failure.
fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace of this test's, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with `lo` up and no duplicate address detection on
    /// its interfaces.
    fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "cb-packets-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns.run(|| {
            for (file, value) in [
                ("/proc/sys/net/ipv6/conf/all/accept_dad", "0"),
                ("/proc/sys/net/ipv6/conf/default/accept_dad", "0"),
            ] {
                std::fs::write(file, value).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        });
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`, the arguments split at spaces.
    fn ip(&self, args: &str) {
        let mut argv = vec!["-n", &self.name];
        argv.extend(args.split_whitespace());
        ip(&argv);
    }

    /// Moves the calling thread into this namespace, and proves it did: the
    /// thread is in the namespace of this name, not in the process's main
    /// thread's (the host's, the harness's main thread never moves).
    fn enter(&self) {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(self.path()).expect("the namespace's file");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns(CLONE_NEWNET)");
        let id = |p: &str| {
            let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            (m.dev(), m.ino())
        };
        let (now, wanted, host) = (
            id("/proc/thread-self/ns/net"),
            id(&self.path()),
            id("/proc/self/ns/net"),
        );
        assert!(
            now == wanted && now != host,
            "not in namespace {}: refusing to go on",
            self.name
        );
    }

    /// Runs `f` on a thread of its own inside this namespace (sockets made
    /// there stay in it).
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The three namespaces and their two veth pairs; the calling thread is
/// in P (so containerboot and the rule programs the test runs are too).
/// Dropping it deletes the veths, then the namespaces.
struct Topology {
    plan: Plan,
    p: Netns,
    t: Netns,
    s: Netns,
}

impl Topology {
    fn new(family: Family) -> Topology {
        let plan = family.plan();
        let topo = Topology {
            plan,
            p: Netns::new("p"),
            t: Netns::new("t"),
            s: Netns::new("s"),
        };
        let (p, t, s, plan) = (&topo.p, &topo.t, &topo.s, &topo.plan);
        let f = family.flag();
        let (node, peer, client) = (plan.node, plan.peer, plan.client);
        let (lan_proxy, lan_server) = (plan.lan_proxy, plan.lan_server);
        let (host, lan, tailnet) = (plan.host_len, plan.lan_len, plan.tailnet);
        let (t_name, s_name) = (&t.name, &s.name);
        // Both pairs are made inside P, their other ends put straight into
        // T and S: no link ever exists in the host's namespace.
        p.ip(&format!(
            "link add tailscale0 type veth peer name peer0 netns {t_name}"
        ));
        p.ip(&format!(
            "link add eth1 type veth peer name eth0 netns {s_name}"
        ));
        // P: the node's address on tailscale0, the tailnet routed there.
        p.ip(&format!("{f} addr add {node}/{host} dev tailscale0 nodad"));
        p.ip(&format!("{f} addr add {lan_proxy}/{lan} dev eth1 nodad"));
        p.ip("link set tailscale0 up");
        p.ip("link set eth1 up");
        p.ip(&format!("{f} route add {tailnet} dev tailscale0"));
        // T: the peer and the client; the node reached from the client's
        // address.
        t.ip(&format!("{f} addr add {peer}/{host} dev peer0 nodad"));
        t.ip(&format!("{f} addr add {client}/{host} dev peer0 nodad"));
        t.ip("link set peer0 up");
        t.ip(&format!(
            "{f} route add {node}/{host} dev peer0 src {client}"
        ));
        // S: the LAN, everything else via P.
        s.ip(&format!("{f} addr add {lan_server}/{lan} dev eth0 nodad"));
        s.ip("link set eth0 up");
        s.ip(&format!("{f} route add default via {lan_proxy}"));
        // P forwards (its own namespace's sysctls).
        p.run(|| {
            for file in [
                "/proc/sys/net/ipv4/ip_forward",
                "/proc/sys/net/ipv6/conf/all/forwarding",
            ] {
                std::fs::write(file, "1").unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        });
        p.enter();
        topo
    }

    /// The namespaces' names, for checking they are gone.
    fn names(&self) -> Vec<String> {
        [&self.p, &self.t, &self.s]
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// Drops the topology and checks that it is gone.
    fn remove(self) {
        let names = self.names();
        drop(self);
        let list = String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for name in names {
            assert!(
                !list
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(&name)),
                "namespace {name} left behind:\n{list}"
            );
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes the pair, whatever still holds
        // the namespaces (a socket, a process).
        for dev in ["tailscale0", "eth1"] {
            let _ = Command::new("ip")
                .args(["-n", &self.p.name, "link", "del", dev])
                .status();
        }
    }
}

/// What a TCP server saw: the peer's address and the line it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    from: IpAddr,
    said: String,
}

/// A TCP server on a socket made in a namespace: for each connection it
/// records who connected and what they said, then answers
/// `<line> -> <its address>`.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, ip: IpAddr) -> Server {
        let addr = SocketAddr::new(ip, PORT);
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", ns.name));
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, from)) => serve(conn, from, &seen2),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        Server {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One connection: read a line, record it, answer.
fn serve(conn: TcpStream, from: SocketAddr, seen: &Mutex<Vec<Seen>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(ANSWER));
    let _ = conn.set_write_timeout(Some(ANSWER));
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let said = line.trim_end().to_string();
    let local = conn.local_addr().unwrap();
    seen.lock().unwrap().push(Seen {
        from: from.ip(),
        said: said.clone(),
    });
    let _ = (&conn).write_all(format!("{said} -> {local}\n").as_bytes());
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a connection attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Connected, and the server answered this line.
    Answered(String),
    /// Connected, but no line came back: the `io::Error`'s text.
    Unanswered(String),
    /// Actively refused (a RST: the packet reached a host with no listener
    /// on the port).
    Refused,
    /// Not connected (timed out, unreachable): the `io::Error`'s text.
    NotConnected(String),
}

/// One TCP connection from namespace `ns` to `to`, saying `line`.
fn attempt(ns: &Netns, to: SocketAddr, line: &str) -> Outcome {
    ns.run(|| {
        let conn = match TcpStream::connect_timeout(&to, TRY) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
            Err(e) => return Outcome::NotConnected(e.to_string()),
        };
        conn.set_read_timeout(Some(ANSWER)).unwrap();
        conn.set_write_timeout(Some(ANSWER)).unwrap();
        if let Err(e) = (&conn).write_all(format!("{line}\n").as_bytes()) {
            return Outcome::Unanswered(format!("write: {e}"));
        }
        let mut answer = String::new();
        match BufReader::new(&conn).read_line(&mut answer) {
            Ok(n) if n > 0 => Outcome::Answered(answer.trim_end().to_string()),
            Ok(_) => Outcome::Unanswered("closed without an answer".into()),
            Err(e) => Outcome::Unanswered(format!("read: {e}")),
        }
    })
}

/// [`attempt`], made again while it does not connect (the links and
/// neighbours getting ready), for [`PATIENCE`] at most; the first other
/// outcome.
fn connect(ns: &Netns, to: SocketAddr, line: &str) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match attempt(ns, to, line) {
            Outcome::NotConnected(why) if Instant::now() < deadline => {
                eprintln!("{line}: {to} not connected yet ({why}); again");
            }
            outcome => return outcome,
        }
    }
}

/// A kernel-mode world with `backend` (as tests/boot.rs's `kernel_world`:
/// the forwarding sysctls and the tun device exist under
/// `TS_TEST_ONLY_ROOT`).
fn world(backend: Backend) -> World {
    let mut w = World::new();
    for (file, value) in [
        ("proc/sys/net/ipv4/ip_forward", "0"),
        ("proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ] {
        let p = w.root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, value).unwrap();
    }
    std::fs::create_dir_all(w.root.join("dev/net")).unwrap();
    std::fs::write(w.root.join("dev/net/tun"), "").unwrap();
    let mode = match backend {
        Backend::Iptables => "iptables",
        Backend::Nftables => "nftables",
    };
    w.var("TS_USERSPACE", "false")
        .var("TS_DEBUG_FIREWALL_MODE", mode);
    w
}

/// A running containerboot, terminated on drop (a failed test leaves no
/// process holding its namespace).
struct Proxy(Option<Running>);

impl Proxy {
    /// Starts containerboot (in this thread's namespace, P) and waits for
    /// startup complete: the rules are in place by then.
    fn boot(w: &World) -> Proxy {
        let mut p = Proxy(Some(w.start()));
        p.0.as_mut().unwrap().wait_for(STARTUP);
        p
    }

    /// Stops containerboot (the rules stay); it must exit 0.
    fn stop(mut self) {
        let f = self.0.take().unwrap().terminate();
        assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let _ = r.terminate();
        }
    }
}

/// Ingress (`TS_DEST_IP` = S's address): a tailnet client's connection to
/// the node's address reaches the server in S, which sees the client's
/// own address (no SNAT on ingress), and the answer comes back.
fn ingress(backend: Backend, family: Family) {
    let topo = Topology::new(family);
    let plan = &topo.plan;
    let server = Server::start(&topo.s, plan.lan_server);
    let mut w = world(backend);
    w.var("TS_DEST_IP", &plan.lan_server.to_string());
    let proxy = Proxy::boot(&w);
    let outcome = connect(
        &topo.t,
        SocketAddr::new(plan.node, PORT),
        "from the tailnet",
    );
    assert_eq!(
        outcome,
        Outcome::Answered(format!("from the tailnet -> {}", server.addr)),
        "{}",
        rules(backend, family)
    );
    assert_eq!(
        server.seen(),
        [Seen {
            from: plan.client,
            said: "from the tailnet".into()
        }]
    );
    proxy.stop();
    drop(server);
    topo.remove();
}

/// Egress (`TS_TAILNET_TARGET_IP` = the peer in T): a LAN client's
/// connection to P's LAN address reaches the peer's server, which sees the
/// node's tailnet address (SNAT), and the answer comes back.
fn egress(backend: Backend, family: Family) {
    let topo = Topology::new(family);
    let plan = &topo.plan;
    let server = Server::start(&topo.t, plan.peer);
    let mut w = world(backend);
    w.var("TS_TAILNET_TARGET_IP", &plan.peer.to_string());
    let proxy = Proxy::boot(&w);
    let outcome = connect(
        &topo.s,
        SocketAddr::new(plan.lan_proxy, PORT),
        "from the LAN",
    );
    assert_eq!(
        outcome,
        Outcome::Answered(format!("from the LAN -> {}", server.addr)),
        "{}",
        rules(backend, family)
    );
    assert_eq!(
        server.seen(),
        [Seen {
            from: plan.node,
            said: "from the LAN".into()
        }]
    );
    proxy.stop();
    drop(server);
    topo.remove();
}

/// What became of a tailnet client's connection to the node's own
/// address while the egress proxy is configured.
struct FromTailnet {
    /// The client's outcome.
    outcome: Outcome,
    /// What the egress target's server (in T) saw.
    target: Vec<Seen>,
    /// What the node's own server (in P, on the node's address) saw.
    node: Vec<Seen>,
    /// The installed rules, for failure messages.
    rules: String,
}

/// The egress proxy and its target's server, proven to forward from the
/// LAN (readiness), and a server of the node's own on its tailnet address
/// and the same port; then a tailnet client connects to the node's address
/// on that port. With `upstream_match`, containerboot is stopped first (its
/// rules stay) and the egress DNAT's interface match is replaced by
/// upstream's (see [`break_egress_dnat`]).
fn tailnet_to_node_with_egress(
    backend: Backend,
    family: Family,
    upstream_match: bool,
) -> FromTailnet {
    let topo = Topology::new(family);
    let plan = &topo.plan;
    let target = Server::start(&topo.t, plan.peer);
    let node = Server::start(&topo.p, plan.node);
    let mut w = world(backend);
    w.var("TS_TAILNET_TARGET_IP", &plan.peer.to_string());
    let proxy = Proxy::boot(&w);
    // Readiness: the proxy forwards the LAN's connections to the target.
    let from_lan = connect(
        &topo.s,
        SocketAddr::new(plan.lan_proxy, PORT),
        "from the LAN",
    );
    assert_eq!(
        from_lan,
        Outcome::Answered(format!("from the LAN -> {}", target.addr)),
        "{}",
        rules(backend, family)
    );
    proxy.stop();
    if upstream_match {
        break_egress_dnat(backend, family, plan.peer);
    }
    let outcome = connect(
        &topo.t,
        SocketAddr::new(plan.node, PORT),
        "from the tailnet",
    );
    let seen = FromTailnet {
        outcome,
        target: target.seen(),
        node: node.seen(),
        rules: rules(backend, family),
    };
    drop((target, node));
    topo.remove();
    seen
}

/// The point of the `iifname` fix: with the egress proxy configured, a
/// connection from the tailnet to the node's address is not forwarded to
/// the egress target: it reaches the node itself (its own server on that
/// address answers), and the target's server saw only the LAN's
/// connection.
fn tailnet_not_forwarded(backend: Backend, family: Family) {
    let plan = family.plan();
    let got = tailnet_to_node_with_egress(backend, family, false);
    let rules = &got.rules;
    assert_eq!(
        got.outcome,
        Outcome::Answered(format!(
            "from the tailnet -> {}",
            SocketAddr::new(plan.node, PORT)
        )),
        "{rules}"
    );
    assert_eq!(
        got.node,
        [Seen {
            from: plan.client,
            said: "from the tailnet".into()
        }],
        "{rules}"
    );
    assert_eq!(
        got.target,
        [Seen {
            from: plan.node,
            said: "from the LAN".into()
        }],
        "{rules}"
    );
}

/// The negative control of [`tailnet_not_forwarded`]: the same setup with
/// upstream's interface match in the egress DNAT. The same tailnet
/// connection now reaches the target's server (DNATed to it, SNATed to the
/// node's address) and never the node's own: the test does detect
/// forwarding, so its assertion is not vacuous.
fn control_upstream_match_forwards(backend: Backend, family: Family) {
    let plan = family.plan();
    let got = tailnet_to_node_with_egress(backend, family, true);
    let rules = &got.rules;
    assert_eq!(
        got.outcome,
        Outcome::Answered(format!(
            "from the tailnet -> {}",
            SocketAddr::new(plan.peer, PORT)
        )),
        "{rules}"
    );
    assert_eq!(got.node, [], "{rules}");
    assert_eq!(
        got.target,
        [
            Seen {
                from: plan.node,
                said: "from the LAN".into()
            },
            Seen {
                from: plan.node,
                said: "from the tailnet".into()
            }
        ],
        "{rules}"
    );
    eprintln!("control: the tailnet's connection was forwarded to the target under\n{rules}");
}

/// Replaces the egress DNAT containerboot installed (in this thread's
/// namespace, P) by upstream's: `oifname != "tailscale0"` for nftables;
/// for iptables, which refuses an output interface in PREROUTING, no
/// interface match at all, which is the same (no packet has an output
/// interface in prerouting, so upstream's match held for every one).
fn break_egress_dnat(backend: Backend, family: Family, target: IpAddr) {
    match backend {
        Backend::Iptables => {
            let program = match family {
                Family::V4 => "iptables",
                Family::V6 => "ip6tables",
            };
            let rule = sh(&[program, "-t", "nat", "-S", "TS-CB-PREROUTING"]);
            assert!(rule.contains("! -i tailscale0 -j DNAT"), "{rule}");
            sh(&[
                program,
                "-t",
                "nat",
                "-R",
                "TS-CB-PREROUTING",
                "1",
                "-j",
                "DNAT",
                "--to-destination",
                &target.to_string(),
            ]);
        }
        Backend::Nftables => {
            let table = match family {
                Family::V4 => "ip",
                Family::V6 => "ip6",
            };
            let listed: Value = serde_json::from_str(&sh(&[
                "nft",
                "-j",
                "list",
                "chain",
                table,
                "containerboot",
                "prerouting",
            ]))
            .unwrap();
            let rules: Vec<&Value> = listed["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o.get("rule"))
                .collect();
            assert_eq!(rules.len(), 1, "{listed}");
            let handle = rules[0]["handle"].to_string();
            sh(&[
                "nft",
                "replace",
                "rule",
                table,
                "containerboot",
                "prerouting",
                "handle",
                &handle,
                "oifname",
                "!=",
                "tailscale0",
                "dnat",
                "to",
                &target.to_string(),
            ]);
        }
    }
}

/// The rules of the backend's family in this thread's namespace (P), for
/// failure messages.
fn rules(backend: Backend, family: Family) -> String {
    match (backend, family) {
        (Backend::Iptables, Family::V4) => sh(&["iptables-save", "-t", "nat"]),
        (Backend::Iptables, Family::V6) => sh(&["ip6tables-save", "-t", "nat"]),
        (Backend::Nftables, _) => sh(&["nft", "list", "ruleset"]),
    }
}

/// One function per backend, family and case, for the harness's list.
macro_rules! cases {
    ($($name:ident: $body:ident($backend:ident, $family:ident);)*) => {
        $(fn $name() { $body(Backend::$backend, Family::$family) })*
    };
}

cases! {
    iptables_v4_ingress: ingress(Iptables, V4);
    iptables_v4_egress: egress(Iptables, V4);
    iptables_v4_tailnet_not_forwarded: tailnet_not_forwarded(Iptables, V4);
    iptables_v4_control_upstream_match_forwards: control_upstream_match_forwards(Iptables, V4);
    iptables_v6_ingress: ingress(Iptables, V6);
    iptables_v6_egress: egress(Iptables, V6);
    iptables_v6_tailnet_not_forwarded: tailnet_not_forwarded(Iptables, V6);
    iptables_v6_control_upstream_match_forwards: control_upstream_match_forwards(Iptables, V6);
    nftables_v4_ingress: ingress(Nftables, V4);
    nftables_v4_egress: egress(Nftables, V4);
    nftables_v4_tailnet_not_forwarded: tailnet_not_forwarded(Nftables, V4);
    nftables_v4_control_upstream_match_forwards: control_upstream_match_forwards(Nftables, V4);
    nftables_v6_ingress: ingress(Nftables, V6);
    nftables_v6_egress: egress(Nftables, V6);
    nftables_v6_tailnet_not_forwarded: tailnet_not_forwarded(Nftables, V6);
    nftables_v6_control_upstream_match_forwards: control_upstream_match_forwards(Nftables, V6);
}

const IPTABLES: Need = Need::Program("iptables-restore");
const IP6TABLES: Need = Need::Program("ip6tables-restore");
const NFT: Need = Need::Program("nft");

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [Need::Root, Need::Program("ip")],
        tests: [
            iptables_v4_ingress [IPTABLES],
            iptables_v4_egress [IPTABLES],
            iptables_v4_tailnet_not_forwarded [IPTABLES],
            iptables_v4_control_upstream_match_forwards [IPTABLES],
            iptables_v6_ingress [IP6TABLES],
            iptables_v6_egress [IP6TABLES],
            iptables_v6_tailnet_not_forwarded [IP6TABLES],
            iptables_v6_control_upstream_match_forwards [IP6TABLES],
            nftables_v4_ingress [NFT],
            nftables_v4_egress [NFT],
            nftables_v4_tailnet_not_forwarded [NFT],
            nftables_v4_control_upstream_match_forwards [NFT],
            nftables_v6_ingress [NFT],
            nftables_v6_egress [NFT],
            nftables_v6_tailnet_not_forwarded [NFT],
            nftables_v6_control_upstream_match_forwards [NFT],
        ],
    })
}
