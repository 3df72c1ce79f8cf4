//! The command lines of tailscaled and the CLI (docs/protocols.md §1–2): one
//! pure function each, the only place they are built.

use super::command::Arg;
use crate::secret::Secret;
use crate::settings::{DEFAULT_STATE_DIR, Settings, StateStore};

/// `tailscaled` and its arguments.
pub fn tailscaled(s: &Settings) -> Vec<String> {
    let mut a = vec![
        "tailscaled".to_string(),
        format!("--socket={}", s.socket.display()),
    ];
    match &s.state {
        StateStore::KubeSecret { secret, dir } => {
            a.push(format!("--state=kube:{secret}"));
            let dir = dir.as_deref().unwrap_or(DEFAULT_STATE_DIR);
            a.push(format!("--statedir={dir}"));
        }
        StateStore::Dir(dir) => a.push(format!("--statedir={dir}")),
        StateStore::Memory => {
            a.push("--state=mem:".into());
            a.push(format!("--statedir={DEFAULT_STATE_DIR}"));
        }
    }
    if s.userspace {
        a.push("--tun=userspace-networking".into());
    }
    if let Some(v) = &s.socks5_server {
        a.push(format!("--socks5-server={v}"));
    }
    if let Some(v) = &s.http_proxy_listen {
        a.push(format!("--outbound-http-proxy-listen={v}"));
    }
    if let Some(v) = &s.config_file {
        a.push(format!("--config={}", v.display()));
    }
    a.extend(s.tailscaled_extra_args.iter().cloned());
    a
}

fn common(s: &Settings, sub: &str) -> Vec<Arg> {
    let accept = s.accept_dns == Some(true);
    vec![
        Arg::Plain("tailscale".into()),
        Arg::Plain(format!("--socket={}", s.socket.display())),
        Arg::Plain(sub.into()),
        Arg::Plain(format!("--accept-dns={accept}")),
    ]
}

fn routes_and_hostname(s: &Settings, a: &mut Vec<Arg>) {
    if let Some(routes) = &s.routes {
        let r: Vec<String> = routes.iter().map(ToString::to_string).collect();
        a.push(Arg::Plain(format!("--advertise-routes={}", r.join(","))));
    }
    if let Some(h) = &s.hostname {
        a.push(Arg::Plain(format!("--hostname={h}")));
    }
}

/// `tailscale up` and its arguments, with `auth_key` (`TS_AUTHKEY`, or the
/// key found in the Kubernetes secret).
pub fn up(s: &Settings, auth_key: Option<&Secret>) -> Vec<Arg> {
    let mut a = common(s, "up");
    if let Some(k) = auth_key {
        a.push(Arg::Secret("--authkey=".into(), k.clone()));
    }
    routes_and_hostname(s, &mut a);
    a.extend(s.extra_args.iter().cloned());
    a
}

/// `tailscale set` and its arguments: no auth key, no extra args.
pub fn set(s: &Settings) -> Vec<Arg> {
    let mut a = common(s, "set");
    routes_and_hostname(s, &mut a);
    a
}
