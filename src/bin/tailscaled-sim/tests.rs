//! The simulator against real unix sockets in temp dirs, watched with the
//! project's own `LocalClient` and told `up` with the simulated CLI's client.

use super::daemon::{DaemonOpts, persist_path, run_daemon};
use super::script::{Script, SimNode};
use super::*;
use bytes::Bytes;
use containerboot::ipn::{IpnState, Notify, mask};
use containerboot::sources::localapi::{BusStream, LocalApiError, LocalClient};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use smol::future::FutureExt as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A daemon running on its own thread.
struct Sim {
    socket: PathBuf,
    stop: smol::channel::Sender<()>,
    thread: std::thread::JoinHandle<i32>,
}

impl Sim {
    fn start(script: Script, dir: &Path, persist: Option<PathBuf>) -> Sim {
        Sim::start_with(script, dir, persist, None)
    }

    /// With `--config=config`.
    fn start_with(
        script: Script,
        dir: &Path,
        persist: Option<PathBuf>,
        config: Option<String>,
    ) -> Sim {
        let socket = dir.join("run").join("tailscaled.sock");
        let (ready_tx, ready_rx) = smol::channel::bounded(1);
        let (stop, stop_rx) = smol::channel::bounded::<()>(1);
        let opts = DaemonOpts {
            socket: socket.clone(),
            persist,
            kube: None,
            plan: script.plan().expect("test script is valid"),
            signals: false,
            ready: Some(ready_tx),
            config_login: false,
            config,
        };
        let thread = std::thread::spawn(move || {
            smol::block_on(run_daemon(opts, async move {
                let _ = stop_rx.recv().await;
            }))
        });
        smol::block_on(bounded(ready_rx.recv())).expect("daemon did not start");
        Sim {
            socket,
            stop,
            thread,
        }
    }

    fn client(&self) -> Client {
        Client {
            socket: self.socket.clone(),
        }
    }

    /// Stops the daemon as SIGTERM would; returns its exit code.
    fn stop(self) -> i32 {
        let _ = self.stop.try_send(());
        self.thread.join().expect("daemon thread panicked")
    }
}

/// Fails the test instead of hanging.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    f.or(async {
        smol::Timer::after(Duration::from_secs(10)).await;
        panic!("test timed out");
    })
    .await
}

/// Reads messages until one carries `State` = `until`.
async fn read_until(bus: &mut BusStream, until: IpnState) -> Vec<Notify> {
    let mut out = Vec::new();
    loop {
        let n = bus.next().await.expect("bus error").expect("bus ended");
        let done = n.state == Some(until);
        out.push(n);
        if done {
            return out;
        }
    }
}

fn states(msgs: &[Notify]) -> Vec<IpnState> {
    msgs.iter().filter_map(|n| n.state).collect()
}

/// The daemon's socket, for both clients.
struct Client {
    socket: PathBuf,
}

impl Client {
    /// A bus watch through containerboot's client.
    async fn watch_ipn_bus(&self, mask: u32) -> Result<BusStream, LocalApiError> {
        LocalClient::new(&self.socket).watch_ipn_bus(mask).await
    }
}

async fn up(c: &Client, flags: &str) -> Result<Bytes, LocalApiError> {
    super::client::call(
        &c.socket,
        Method::POST,
        "/localapi/v0/sim/up",
        flags.as_bytes().to_vec(),
    )
    .await
}

fn scripted() -> Script {
    Script {
        self_node: Some(SimNode {
            stable_id: Some("nTEST42CNTRL".into()),
            name: Some("box.example.ts.net.".into()),
            addresses: Some(vec![
                "100.100.1.2/32".into(),
                "fd7a:115c:a1e0::42/128".into(),
            ]),
        }),
        ..Script::default()
    }
}

#[test]
fn first_watch_then_up_reaches_running_with_scripted_netmap() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script {
        legacy_netmap: true,
        ..scripted()
    };
    let sim = Sim::start(script, dir.path(), None);
    let c = sim.client();
    smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::FIRST_WATCH).await.unwrap();
        let first = bus.next().await.unwrap().unwrap();
        assert_eq!(first.version.as_deref(), Some(daemon::VERSION));
        assert_eq!(first.state, Some(IpnState::NeedsLogin));
        assert!(first.net_map.is_none());

        up(&c, r#"{"accept-dns":"false"}"#).await.unwrap();
        let msgs = read_until(&mut bus, IpnState::Running).await;
        assert_eq!(states(&msgs), vec![IpnState::Starting, IpnState::Running]);
        let nm = msgs
            .iter()
            .find_map(|n| n.net_map.clone())
            .expect("a netmap");
        assert_eq!(nm.self_node.stable_id, "nTEST42CNTRL");
        assert_eq!(nm.self_node.name, "box.example.ts.net.");
        let addrs: Vec<String> = nm
            .self_node
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addrs, ["100.100.1.2/32", "fd7a:115c:a1e0::42/128"]);
        assert_eq!(nm.dns.cert_domains, ["box.example.ts.net"]);
        assert!(nm.peers.is_empty());

        // A second watch replays the current state and netmap at once.
        let mut again = c.watch_ipn_bus(mask::REWATCH).await.unwrap();
        let first = again.next().await.unwrap().unwrap();
        assert_eq!(first.state, Some(IpnState::Running));
        assert_eq!(first.net_map.as_ref(), Some(&nm));

        // `up` when already Running answers at once, changing nothing.
        up(&c, "{}").await.unwrap();
    }));
    assert_eq!(sim.stop(), 0);
}

#[test]
fn wire_format_looks_like_go() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Script::default(), dir.path(), None);
    let c = sim.client();
    smol::block_on(bounded(async {
        up(&c, "{}").await.unwrap();
        let (status, headers, body) = raw(
            &sim.socket,
            Method::GET,
            "/localapi/v0/watch-ipn-bus?mask=14",
            None,
            "",
            true,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert_eq!(headers.get("transfer-encoding").unwrap(), "chunked");
        let line = String::from_utf8(body).unwrap();
        assert!(line.ends_with('\n'), "{line}");
        assert!(line.contains(r#""Peers":null"#), "{line}");
        assert!(line.contains(r#""Endpoints":null"#), "{line}");
        assert!(line.contains(r#""Prefs":{"#), "{line}");
        // Go encodes Notify's pointer fields without omitempty: null.
        assert!(line.contains(r#""ErrMessage":null"#), "{line}");
        assert!(line.contains(r#""Engine":null"#), "{line}");
        assert!(
            line.contains(r#""Name":"sim-host.tailnet.ts.net.""#),
            "{line}"
        );

        let (status, _, body) = raw(
            &sim.socket,
            Method::GET,
            "/localapi/v0/nope",
            None,
            "",
            false,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string());
    }));
    sim.stop();
}

#[test]
fn every_notify_carries_version_and_nulls() {
    // As the real tailscaled (1.102) sends a state change: every message
    // has Version, and the fields it does not carry are null, not absent.
    let v = super::daemon::notify(&serde_json::json!({ "State": 6 }));
    assert_eq!(v["Version"], super::daemon::VERSION);
    assert_eq!(v["State"], 6);
    for k in [
        "ErrMessage",
        "LoginFinished",
        "Prefs",
        "NetMap",
        "Engine",
        "BrowseToURL",
    ] {
        assert!(v.get(k).is_some_and(|x| x.is_null()), "{k} in {v}");
    }
}

/// Every Notify of a whole login, as seen by one watch.
fn login_transcript(script: Script) -> Vec<Notify> {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(script, dir.path(), None);
    let c = sim.client();
    let msgs = smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::FIRST_WATCH).await.unwrap();
        let mut msgs = vec![bus.next().await.unwrap().unwrap()];
        up(&c, r#"{"hostname":"split"}"#).await.unwrap();
        msgs.extend(read_until(&mut bus, IpnState::Running).await);
        msgs
    }));
    sim.stop();
    msgs
}

#[test]
fn split_chunks_yield_the_same_messages() {
    let peers = vec![SimNode::default(), SimNode::default()];
    let plain = login_transcript(Script {
        peers: peers.clone(),
        legacy_netmap: true,
        ..Script::default()
    });
    let split = login_transcript(Script {
        peers,
        split_chunks: true,
        legacy_netmap: true,
        ..Script::default()
    });
    assert_eq!(plain, split);
    let nm = split.iter().find_map(|n| n.net_map.clone()).unwrap();
    assert_eq!(nm.peers.len(), 2);
    assert_eq!(nm.self_node.name, "split.tailnet.ts.net.");
}

#[test]
fn split_chunks_cross_line_boundaries() {
    let batch = Bytes::from_static(b"{\"State\":5}\n{\"State\":6}\n");
    let parts = daemon::split_chunks(batch.clone());
    assert!(parts.len() >= 4, "{parts:?}");
    assert_eq!(parts.concat(), batch.to_vec());
    // Some chunk holds the end of one line and the start of the next.
    assert!(parts.iter().any(|p| {
        let nl = p.iter().position(|&b| b == b'\n');
        nl.is_some_and(|i| i + 1 < p.len())
    }));
    assert!(parts.last().unwrap().ends_with(b"\n"));
}

#[test]
fn serve_config_etag_guards_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Script::default(), dir.path(), None);
    smol::block_on(bounded(async {
        let path = "/localapi/v0/serve-config";
        let (status, headers, body) = raw(&sim.socket, Method::GET, path, None, "", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"null", "no config set yet, as tailscaled answers");
        let etag = headers.get("etag").unwrap().to_str().unwrap().to_string();

        let cfg = r#"{"TCP":{"443":{"HTTPS":true}}}"#;
        let (status, _, _) = raw(&sim.socket, Method::POST, path, Some("bogus"), cfg, false).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _, _) = raw(&sim.socket, Method::POST, path, Some(&etag), cfg, false).await;
        assert_eq!(status, StatusCode::OK);
        // The old etag is stale now.
        let (status, _, _) = raw(&sim.socket, Method::POST, path, Some(&etag), "{}", false).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);

        let (_, headers, body) = raw(&sim.socket, Method::GET, path, None, "", false).await;
        assert_eq!(body, cfg.as_bytes());
        assert_ne!(headers.get("etag").unwrap().to_str().unwrap(), etag);
        // An empty If-Match always writes.
        let (status, _, _) = raw(&sim.socket, Method::POST, path, Some(""), "{}", false).await;
        assert_eq!(status, StatusCode::OK);
    }));
    sim.stop();
}

#[test]
fn serve_config_refuses_to_change_a_ports_kind_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Script::default(), dir.path(), None);
    smol::block_on(bounded(async {
        let path = "/localapi/v0/serve-config";
        let tcp =
            r#"{"TCP":{"80":{"TCPForward":"127.0.0.1:8080"},"22":{"TCPForward":"127.0.0.1:22"}}}"#;
        let (status, _, _) = raw(&sim.socket, Method::POST, path, None, tcp, false).await;
        assert_eq!(status, StatusCode::OK);
        // Another target, or another port, is fine; HTTP on port 80 is not.
        let http = r#"{"TCP":{"80":{"HTTP":true}}}"#;
        let (status, _, body) = raw(&sim.socket, Method::POST, path, None, http, false).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["error"],
            r#"updating config: want to serve "http", but port 80 is already serving "tcp""#
        );
        let (_, _, body) = raw(&sim.socket, Method::GET, path, None, "", false).await;
        let kept: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            kept,
            serde_json::from_str::<serde_json::Value>(tcp).unwrap(),
            "the config is kept"
        );
        // Without the port first, then with its new kind: accepted.
        let other = r#"{"TCP":{"22":{"TCPForward":"127.0.0.1:2222"}}}"#;
        let (status, _, _) = raw(&sim.socket, Method::POST, path, None, other, false).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = raw(&sim.socket, Method::POST, path, None, http, false).await;
        assert_eq!(status, StatusCode::OK);
    }));
    sim.stop();
}

#[test]
fn reload_config_speaks_tailscaleds_wire_format() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf.hujson");
    std::fs::write(&conf, "{\"Version\": \"alpha0\", // ok\n}").unwrap();
    let sim = Sim::start_with(
        Script::default(),
        dir.path(),
        None,
        Some(conf.display().to_string()),
    );
    let path = "/localapi/v0/reload-config";
    smol::block_on(bounded(async {
        let (status, headers, body) = raw(&sim.socket, Method::POST, path, None, "", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert_eq!(body, b"{\"Reloaded\":true,\"Err\":\"\"}\n");
        let (status, _, body) = raw(&sim.socket, Method::GET, path, None, "", false).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body, b"use POST\n");
        // A file that fails to load: 200 and nothing written, as the real
        // handler returns before encoding its answer.
        std::fs::write(&conf, "{\"Version\": ").unwrap();
        let (status, headers, body) = raw(&sim.socket, Method::POST, path, None, "", false).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty(), "{body:?}");
        assert!(headers.get("content-type").is_none());
    }));
    sim.stop();

    // Without --config: not reloaded, no error.
    let sim = Sim::start(Script::default(), dir.path(), None);
    smol::block_on(bounded(async {
        let (status, _, body) = raw(&sim.socket, Method::POST, path, None, "", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"{\"Reloaded\":false,\"Err\":\"\"}\n");
    }));
    sim.stop();

    // An older tailscaled: 404.
    let script = Script {
        reload_config_missing: true,
        ..Script::default()
    };
    let sim = Sim::start(script, dir.path(), None);
    smol::block_on(bounded(async {
        let (status, _, body) = raw(&sim.socket, Method::POST, path, None, "", false).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, b"404 page not found\n");
    }));
    sim.stop();
}

#[test]
fn bad_flags_exit_2_like_go() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(daemon::main(s(&["--socket=/nonexistent/x", "--bogus"])), 2);
    assert_eq!(
        cli::run(s(&["--socket=/nonexistent/x", "up", "--bogus=1"])),
        2
    );
    assert_eq!(
        cli::run(s(&["--socket=/nonexistent/x", "up", "--accept-dns=maybe"])),
        2
    );
    assert_eq!(
        cli::run(s(&["--socket=/nonexistent/x", "set", "--authkey=k"])),
        2
    );
    assert_eq!(cli::run(s(&["--nope", "up"])), 2);
    assert_eq!(cli::run(s(&["--socket=/nonexistent/x", "status"])), 1);
    assert_eq!(
        cli::run(s(&[
            "--socket=/nonexistent/x",
            "up",
            "--advertise-routes=1.2.3.4/24"
        ])),
        1
    );
    assert_eq!(dispatch("/usr/bin/containerboot", vec![]), None);
}

#[test]
fn cli_talks_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("tailscaled.sock");
    let sock_flag = format!("--socket={}", socket.display());
    // Nobody listening yet.
    assert_eq!(cli::run(vec![sock_flag.clone(), "up".into()]), 1);

    let script = Script {
        legacy_netmap: true,
        ..Script::default()
    };
    let sim = Sim::start(script, dir.path(), None);
    let c = sim.client();
    let mut bus = smol::block_on(c.watch_ipn_bus(mask::REWATCH)).unwrap();
    let code = cli::run(vec![
        sock_flag.clone(),
        "up".into(),
        "--accept-dns=false".into(),
        "--hostname=Web".into(),
        "--advertise-routes=10.0.0.0/8".into(),
    ]);
    assert_eq!(code, 0);
    smol::block_on(bounded(async {
        let msgs = read_until(&mut bus, IpnState::Running).await;
        let nm = msgs.iter().find_map(|n| n.net_map.clone()).unwrap();
        assert_eq!(nm.self_node.name, "web.tailnet.ts.net.");
    }));
    // `set` with a new hostname sends a new netmap.
    let code = cli::run(vec![sock_flag, "set".into(), "--hostname=renamed".into()]);
    assert_eq!(code, 0);
    smol::block_on(bounded(async {
        let n = bus.next().await.unwrap().unwrap();
        assert_eq!(n.net_map.unwrap().self_node.name, "renamed.tailnet.ts.net.");
    }));
    sim.stop();
}

#[test]
fn scripted_failures_reach_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        Script {
            up_exit_code: Some(3),
            up_stderr: Some("backend error: invalid key".into()),
            set_exit_code: Some(4),
            ..Script::default()
        },
        dir.path(),
        None,
    );
    let sock_flag = format!("--socket={}", sim.socket.display());
    assert_eq!(cli::run(vec![sock_flag.clone(), "up".into()]), 3);
    assert_eq!(cli::run(vec![sock_flag, "set".into()]), 4);
    let err = smol::block_on(up(&sim.client(), "{}")).unwrap_err();
    match err {
        LocalApiError::Status { code, body } => {
            assert_eq!(code, 500);
            assert!(body.contains("invalid key"), "{body}");
        }
        other => panic!("unexpected {other}"),
    }
    sim.stop();
}

#[test]
fn machine_auth_and_leaving_running() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        Script {
            states_after_up: Some(vec!["Starting".into(), "NeedsMachineAuth".into()]),
            ..Script::default()
        },
        dir.path(),
        None,
    );
    let c = sim.client();
    smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::FIRST_WATCH).await.unwrap();
        bus.next().await.unwrap().unwrap();
        // `up` answers once the sequence ends, even short of Running.
        up(&c, "{}").await.unwrap();
        let msgs = read_until(&mut bus, IpnState::NeedsMachineAuth).await;
        assert_eq!(
            states(&msgs),
            [IpnState::Starting, IpnState::NeedsMachineAuth]
        );
        assert!(msgs.iter().all(|n| n.net_map.is_none()));
    }));
    sim.stop();

    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        Script {
            leave_running_after_ms: Some(20),
            ..Script::default()
        },
        dir.path(),
        None,
    );
    let c = sim.client();
    smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::REWATCH).await.unwrap();
        up(&c, "{}").await.unwrap();
        read_until(&mut bus, IpnState::Running).await;
        let after = read_until(&mut bus, IpnState::NeedsLogin).await;
        assert_eq!(states(&after), [IpnState::NeedsLogin]);
    }));
    sim.stop();
}

#[test]
fn scripted_crash_ends_streams_and_returns_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        Script {
            exit_after_running_ms: Some(10),
            exit_code: Some(7),
            ..Script::default()
        },
        dir.path(),
        None,
    );
    let c = sim.client();
    smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::REWATCH).await.unwrap();
        up(&c, "{}").await.unwrap();
        read_until(&mut bus, IpnState::Running).await;
        // The stream ends (cleanly or not) when the daemon dies.
        while let Ok(Some(_)) = bus.next().await {}
    }));
    assert_eq!(sim.thread.join().unwrap(), 7);
}

#[test]
fn shutdown_closes_streams_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Script::default(), dir.path(), None);
    let socket = sim.socket.clone();
    let mut bus = smol::block_on(sim.client().watch_ipn_bus(mask::FIRST_WATCH)).unwrap();
    smol::block_on(bus.next()).unwrap().unwrap();
    let stopper = std::thread::spawn(move || sim.stop());
    let end = smol::block_on(bounded(bus.next())).unwrap();
    assert!(end.is_none(), "expected a clean end, got {end:?}");
    assert_eq!(stopper.join().unwrap(), 0);
    assert!(!socket.exists());
}

#[test]
fn statedir_login_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let statedir = dir.path().join("state");
    std::fs::create_dir_all(&statedir).unwrap();
    let persist = persist_path(None, statedir.to_str());
    assert_eq!(persist, Some(statedir.join("sim-state.json")));

    let sim = Sim::start(Script::default(), dir.path(), persist.clone());
    smol::block_on(bounded(up(&sim.client(), r#"{"hostname":"keeper"}"#))).unwrap();
    assert_eq!(sim.stop(), 0);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(statedir.join("sim-state.json")).unwrap()).unwrap();
    assert_eq!(saved["logged_in"], true);

    // Restarted: logs in on its own, no `up`.
    let sim = Sim::start(Script::default(), dir.path(), persist);
    smol::block_on(bounded(async {
        let mut bus = sim.client().watch_ipn_bus(mask::REWATCH).await.unwrap();
        let msgs = read_until(&mut bus, IpnState::Running).await;
        assert!(!states(&msgs).contains(&IpnState::NeedsLogin));
        let nm = msgs.iter().find_map(|n| n.net_map.clone()).unwrap();
        assert_eq!(nm.self_node.name, "keeper.tailnet.ts.net.");
    }));
    sim.stop();
}

#[test]
fn memory_state_forgets() {
    assert_eq!(persist_path(Some("mem:"), Some("/tmp")), None);
    assert_eq!(persist_path(Some("kube:ts"), Some("/tmp")), None);
    assert_eq!(persist_path(None, None), None);
    assert!(persist_path(Some("/var/lib/ts.state"), Some("/d")).is_some());

    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Script::default(), dir.path(), None);
    smol::block_on(bounded(up(&sim.client(), "{}"))).unwrap();
    sim.stop();
    let sim = Sim::start(Script::default(), dir.path(), None);
    let first = smol::block_on(bounded(async {
        let mut bus = sim.client().watch_ipn_bus(mask::REWATCH).await.unwrap();
        bus.next().await.unwrap().unwrap()
    }));
    assert_eq!(first.state, Some(IpnState::NeedsLogin));
    assert!(first.net_map.is_none());
    sim.stop();
}

#[test]
fn records_one_json_line_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("record.jsonl");
    append_record(
        &file,
        "tailscaled",
        &["--socket=/s".into(), "--state=mem:".into()],
    )
    .unwrap();
    append_record(&file, "tailscale", &["up".into()]).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prog"], "tailscaled");
    assert_eq!(
        lines[0]["args"],
        serde_json::json!(["--socket=/s", "--state=mem:"])
    );
    assert_eq!(lines[1]["args"], serde_json::json!(["up"]));
}

/// One raw request, for headers LocalClient does not send. With `first_line`,
/// reads only up to the first newline of a streamed body.
async fn raw(
    socket: &Path,
    method: Method,
    path: &str,
    if_match: Option<&str>,
    body: &str,
    first_line: bool,
) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
    let stream = smol::net::unix::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(stream))
            .await
            .unwrap();
    let _conn = smol::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "local-tailscaled.sock");
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
        if first_line && out.contains(&b'\n') {
            break;
        }
    }
    (status, headers, out)
}

#[test]
fn like_tailscaled_1_102_changes_come_as_self_change_and_the_netmap_only_first() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(scripted(), dir.path(), None);
    let c = sim.client();
    smol::block_on(bounded(async {
        let mut bus = c.watch_ipn_bus(mask::FIRST_WATCH).await.unwrap();
        up(&c, r#"{"accept-dns":"false"}"#).await.unwrap();
        let msgs = read_until(&mut bus, IpnState::Running).await;
        assert!(msgs.iter().all(|n| n.net_map.is_none()), "{msgs:#?}");
        let me = msgs
            .iter()
            .find_map(|n| n.self_change.clone())
            .expect("a SelfChange");
        assert_eq!(me.name, "box.example.ts.net.");
        // A watch asking for the netmap gets it, whole, first.
        let mut again = c.watch_ipn_bus(mask::REWATCH).await.unwrap();
        let first = again.next().await.unwrap().unwrap();
        let nm = first.net_map.expect("the initial netmap");
        assert_eq!(nm.self_node, me);
    }));
}
