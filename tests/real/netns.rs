//! Network namespaces for the kernel-mode real-program tests
//! (`tests/real_kernel.rs`): a namespace is an open `nsfs` file, code runs
//! in it on a thread that joined it with `setns`, and every process and
//! socket made on that thread belongs to it.
//!
//! Nothing here can touch the host's namespace: [`hub`] moves the test's
//! own thread out of it first (and proves it), and every other namespace is
//! new. A namespace ends once its handle is dropped and the last process
//! and socket in it are gone, taking its ends of the veth pairs with it.
#![allow(dead_code)]

use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// A network namespace of the test's own.
pub struct Netns {
    fd: OwnedFd,
    pub name: &'static str,
}

/// The namespace the calling thread is in, as an open file.
fn this_threads() -> OwnedFd {
    std::fs::File::open("/proc/thread-self/ns/net")
        .expect("open /proc/thread-self/ns/net")
        .into()
}

fn unshare_net() {
    // SAFETY: NEWNET only changes this thread's network namespace; no file
    // descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .expect("unshare(CLONE_NEWNET)");
}

/// The host's `net.ipv4.ip_forward`, opened before the test leaves the
/// host's namespace: a sysctl file under `/proc/sys/net` belongs to the
/// namespace of the thread that opened it, so this one keeps reading the
/// host's value wherever the test's thread goes afterwards.
pub struct HostForwarding {
    file: std::fs::File,
    before: String,
}

impl HostForwarding {
    pub fn value(&mut self) -> String {
        let mut s = String::new();
        self.file.rewind().expect("rewind ip_forward");
        self.file
            .read_to_string(&mut s)
            .expect("read the host's ip_forward");
        s.trim().to_string()
    }

    /// Panics unless the host's value is what it was before the test.
    pub fn assert_unchanged(&mut self) {
        let now = self.value();
        assert_eq!(
            now, self.before,
            "the host's net.ipv4.ip_forward changed during the test"
        );
    }
}

/// Moves the calling (test) thread into a new namespace, `hub`, with `lo`
/// up, and proves it left the host's. Returns the hub and a handle on the
/// host's `ip_forward` (see [`HostForwarding`]).
pub fn hub() -> (Netns, HostForwarding) {
    let host = std::fs::read_link("/proc/thread-self/ns/net").expect("our network namespace");
    let mut file =
        std::fs::File::open("/proc/sys/net/ipv4/ip_forward").expect("the host's ip_forward");
    let mut before = String::new();
    file.read_to_string(&mut before).unwrap();
    let forwarding = HostForwarding {
        file,
        before: before.trim().to_string(),
    };
    unshare_net();
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("the new namespace");
    assert_ne!(
        host, ours,
        "not in a network namespace of our own: refusing to go on"
    );
    let hub = Netns {
        fd: this_threads(),
        name: "hub",
    };
    hub.ip("link set lo up");
    (hub, forwarding)
}

impl Netns {
    /// A new namespace with `lo` up (made on a thread of its own, so the
    /// caller stays where it is).
    pub fn new(name: &'static str) -> Netns {
        let fd = std::thread::spawn(|| {
            unshare_net();
            this_threads()
        })
        .join()
        .expect("a thread to unshare");
        let ns = Netns { fd, name };
        ns.ip("link set lo up");
        ns
    }

    /// A path another process can open to reach this namespace (for
    /// `ip link … netns PATH`).
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Runs `f` on a thread inside this namespace; its result (a panic in
    /// `f` is passed on). Processes spawned and sockets made in `f` stay in
    /// the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    self.fd.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip ARGS` (split at spaces) in this namespace; its stdout. Panics on
    /// failure.
    pub fn ip(&self, args: &str) -> String {
        self.cmd("ip", &args.split(' ').collect::<Vec<_>>())
    }

    /// `program ARGS` in this namespace; its stdout. Panics on failure.
    pub fn cmd(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(|| {
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
        });
        assert!(
            out.status.success(),
            "{program} {} in {}: {}\n{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A veth pair from this namespace (`here`, with `here_addr`) to
    /// `there` (`there_end`, with `there_addr`), both up. Addresses are
    /// `A.B.C.D/LEN`.
    pub fn link(
        &self,
        here: &str,
        here_addr: &str,
        there: &Netns,
        there_end: &str,
        there_addr: &str,
    ) {
        self.ip(&format!(
            "link add {here} type veth peer name {there_end} netns {}",
            there.path()
        ));
        self.ip(&format!("addr add {here_addr} dev {here}"));
        self.ip(&format!("link set {here} up"));
        there.ip(&format!("addr add {there_addr} dev {there_end}"));
        there.ip(&format!("link set {there_end} up"));
    }

    /// A sysctl file's value in this namespace (`net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str) -> String {
        self.run(|| {
            std::fs::read_to_string(format!("/proc/sys/{key}"))
                .unwrap_or_else(|e| panic!("read /proc/sys/{key}: {e}"))
                .trim()
                .to_string()
        })
    }
}
