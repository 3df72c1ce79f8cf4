//! Reading the variables: the one table of every variable containerboot
//! reads, and the reader that asks only for names in it.

use super::validate::{Seen, validate};
use super::*;
use std::str::FromStr;

/// What a boolean variable accepts (Go's `strconv.ParseBool` set).
pub(super) const BOOL_ACCEPTED: &str =
    "use true or false (also accepted: 1, t, T, TRUE, True, 0, f, F, FALSE, False)";
/// What an IP variable accepts.
pub(super) const IP_ACCEPTED: &str = "an IPv4 or IPv6 address such as 10.0.0.5";
/// What a `TS_ROUTES` entry accepts.
pub(super) const ROUTE_ACCEPTED: &str =
    "a CIDR such as 10.0.0.0/24 or fd00::/64; separate several with commas";

/// Every variable containerboot reads, with what it is for. The reader
/// asks only for names in this table (a test holds it to that), so a
/// variable cannot be read without being listed here.
pub const VARIABLES: &[(&str, &str)] = &[
    ("TS_AUTHKEY", "auth key for `tailscale up` (secret)"),
    ("TS_AUTH_KEY", "the same, when TS_AUTHKEY is unset or empty"),
    ("TS_HOSTNAME", "hostname to request"),
    (
        "TS_ROUTES",
        "subnet routes to advertise; set empty to stop advertising",
    ),
    (
        "TS_SERVE_CONFIG",
        "serve config file, applied and watched once Running",
    ),
    (
        "TS_DEST_IP",
        "ingress proxy: tailnet traffic goes to this address",
    ),
    (
        "TS_TAILNET_TARGET_IP",
        "egress proxy: traffic goes to this tailnet address",
    ),
    (
        "TS_TAILNET_TARGET_FQDN",
        "egress proxy: traffic goes to this tailnet node",
    ),
    ("TS_TAILSCALED_EXTRA_ARGS", "extra tailscaled arguments"),
    ("TS_EXTRA_ARGS", "extra `tailscale up` arguments"),
    (
        "KUBERNETES_SERVICE_HOST",
        "the Kubernetes API server (set by Kubernetes)",
    ),
    (
        "KUBERNETES_SERVICE_PORT_HTTPS",
        "its port (set by Kubernetes)",
    ),
    (
        "KUBERNETES_SERVICE_PORT",
        "its port, when the HTTPS one is unset",
    ),
    (
        "TS_KUBE_TIMEOUT",
        "how long one Kubernetes API request may take",
    ),
    ("TS_USERSPACE", "userspace networking (default true)"),
    ("TS_STATE_DIR", "where tailscaled keeps its state"),
    ("TS_ACCEPT_DNS", "accept the tailnet's DNS settings"),
    (
        "TS_KUBE_SECRET",
        "the secret tailscaled keeps its state in; empty for none",
    ),
    ("TS_SOCKS5_SERVER", "tailscaled's SOCKS5 listen address"),
    (
        "TS_OUTBOUND_HTTP_PROXY_LISTEN",
        "tailscaled's HTTP proxy listen address",
    ),
    ("TS_SOCKET", "tailscaled's LocalAPI socket"),
    ("TS_AUTH_ONCE", "log in only when not logged in yet"),
    ("TS_TEST_ONLY_ROOT", "test hook: the filesystem root"),
    ("EXPERIMENTAL_TS_CONFIGFILE_PATH", "tailscaled config file"),
    (
        "TS_TEST_FAKE_NETFILTER",
        "test hook: log netfilter rules, install none",
    ),
    ("TS_TRACE_FILE", "where SIGUSR1 writes the state trace"),
    ("TS_TRACE_STEPS", "how many steps the trace keeps"),
    ("TS_BOOT_TIMEOUT", "start to Running, at most"),
    ("TS_SHUTDOWN_GRACE", "SIGTERM to SIGKILL for tailscaled"),
    (
        "TS_DEBUG_FIREWALL_MODE",
        "netfilter backend: iptables (default), nftables or auto",
    ),
    (
        "TS_FIREWALL_RECHECK",
        "how often proxy rules are read back and repaired; 0 for never",
    ),
];

/// The source, asked only for listed variables.
pub(super) struct Vars<'a, S: Source>(&'a S);

impl<'a, S: Source> Vars<'a, S> {
    /// Variables of `source`.
    pub(super) fn new(source: &'a S) -> Self {
        Vars(source)
    }
    /// The value of listed variable `name`; panics for an unlisted one.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        assert!(
            VARIABLES.iter().any(|(n, _)| *n == name),
            "{name} is read but not listed in VARIABLES"
        );
        self.0.var(name)
    }
    /// Set to something other than the empty string.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// Reads a duration such as `90s`, `3m`, `1m30s` or `500ms` (jiff's
/// friendly format, or ISO 8601) into milliseconds.
pub(super) fn parse_duration(
    name: &'static str,
    value: Option<String>,
    default_ms: u64,
    min_ms: u64,
    errs: &mut Vec<ConfigError>,
) -> u64 {
    let Some(v) = value else {
        return default_ms;
    };
    // A bare 0 means zero (where zero is allowed), as a unit adds nothing.
    if v.trim() == "0" && min_ms == 0 {
        return 0;
    }
    let parsed = v
        .trim()
        .parse::<jiff::SignedDuration>()
        .ok()
        .filter(|d| !d.is_negative())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .filter(|ms| (min_ms..=MAX_DURATION_MS).contains(ms));
    match parsed {
        Some(ms) => ms,
        None => {
            let least = if min_ms == 0 { "0s" } else { "1ms" };
            errs.push(ConfigError::new(
                name,
                format!(
                    "{name}={v:?} is not a duration: use a number with a unit, such as 90s, 3m or 1m30s (from {least} to 24h; default {}s)",
                    default_ms / 1000
                ),
            ));
            default_ms
        }
    }
}

/// Reads every variable through `source`, then applies the cross-variable
/// rules; `errors` holds problems found before (e.g. non-UTF-8 values).
pub(crate) fn read(
    source: &impl Source,
    mut errors: Vec<ConfigError>,
) -> Result<Settings, ConfigErrors> {
    let vars = Vars::new(source);
    let non_empty = |name: &str| vars.non_empty(name);
    let lookup = |name: &str| vars.get(name);
    let errs = &mut errors;

    let (auth_key_var, auth_key) = match non_empty("TS_AUTHKEY") {
        Some(k) => (Some("TS_AUTHKEY"), Some(Secret::new(k))),
        None => match non_empty("TS_AUTH_KEY") {
            Some(k) => (Some("TS_AUTH_KEY"), Some(Secret::new(k))),
            None => (None, None),
        },
    };
    let hostname = non_empty("TS_HOSTNAME");
    let routes = lookup("TS_ROUTES").and_then(|v| parse_routes(&v, errs));
    let serve_config = non_empty("TS_SERVE_CONFIG").map(PathBuf::from);
    let dest_ip = parse_ip("TS_DEST_IP", non_empty("TS_DEST_IP"), errs);
    let tailnet_target_ip = parse_ip(
        "TS_TAILNET_TARGET_IP",
        non_empty("TS_TAILNET_TARGET_IP"),
        errs,
    );
    let tailnet_target_fqdn = non_empty("TS_TAILNET_TARGET_FQDN");
    let tailscaled_extra_args = split_args(lookup("TS_TAILSCALED_EXTRA_ARGS"));
    let extra_args = crate::secret::args_with_secrets(split_args(lookup("TS_EXTRA_ARGS")));
    let kube_host = non_empty("KUBERNETES_SERVICE_HOST");
    if let Some(h) = &kube_host
        && !super::kube::is_api_host(h)
    {
        errs.push(ConfigError::new(
            "KUBERNETES_SERVICE_HOST",
            format!("KUBERNETES_SERVICE_HOST={h:?} is not a host name or IP address: Kubernetes sets it to the API server's address (nothing else: no scheme, port or path); outside Kubernetes, unset it"),
        ));
    }
    let in_kubernetes = kube_host.is_some();
    let kube_port = {
        let (name, value) = match non_empty("KUBERNETES_SERVICE_PORT_HTTPS") {
            Some(v) => ("KUBERNETES_SERVICE_PORT_HTTPS", Some(v)),
            None => (
                "KUBERNETES_SERVICE_PORT",
                non_empty("KUBERNETES_SERVICE_PORT"),
            ),
        };
        match value {
            None => 443,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    if in_kubernetes {
                        errs.push(ConfigError::new(
                            name,
                            format!("{name}={v:?} is not a port: use a number from 1 to 65535 (Kubernetes sets it for every pod; unset it for 443)"),
                        ));
                    }
                    443
                }
            },
        }
    };
    let kube_timeout_ms = parse_duration(
        "TS_KUBE_TIMEOUT",
        non_empty("TS_KUBE_TIMEOUT"),
        DEFAULT_KUBE_TIMEOUT_MS,
        1,
        errs,
    );
    let userspace = parse_bool("TS_USERSPACE", lookup("TS_USERSPACE"), errs).unwrap_or(true);
    let state_dir = non_empty("TS_STATE_DIR");
    let accept_dns = parse_bool("TS_ACCEPT_DNS", lookup("TS_ACCEPT_DNS"), errs);
    let kube_secret = lookup("TS_KUBE_SECRET").unwrap_or_else(|| DEFAULT_KUBE_SECRET.to_string());
    let socks5_server = non_empty("TS_SOCKS5_SERVER");
    let http_proxy_listen = non_empty("TS_OUTBOUND_HTTP_PROXY_LISTEN");
    let socket = match lookup("TS_SOCKET") {
        None => PathBuf::from(DEFAULT_TS_SOCKET),
        Some(s) if s.is_empty() => {
            errs.push(ConfigError::new(
                "TS_SOCKET",
                format!("TS_SOCKET is set but empty: unset it for the default {DEFAULT_TS_SOCKET} or give a path"),
            ));
            PathBuf::from(DEFAULT_TS_SOCKET)
        }
        Some(s) => PathBuf::from(s),
    };
    let auth_once = parse_bool("TS_AUTH_ONCE", lookup("TS_AUTH_ONCE"), errs).unwrap_or(false);
    let root = PathBuf::from(non_empty("TS_TEST_ONLY_ROOT").unwrap_or_else(|| "/".to_string()));
    let config_file = non_empty("EXPERIMENTAL_TS_CONFIGFILE_PATH").map(PathBuf::from);
    let fake_netfilter = parse_bool(
        "TS_TEST_FAKE_NETFILTER",
        lookup("TS_TEST_FAKE_NETFILTER"),
        errs,
    )
    .unwrap_or(false);
    let trace_file =
        PathBuf::from(non_empty("TS_TRACE_FILE").unwrap_or_else(|| DEFAULT_TRACE_FILE.to_string()));
    let trace_steps = match non_empty("TS_TRACE_STEPS") {
        None => DEFAULT_TRACE_STEPS,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TRACE_STEPS).contains(&n) => n,
            _ => {
                errs.push(ConfigError::new(
                    "TS_TRACE_STEPS",
                    format!(
                        "TS_TRACE_STEPS={v:?} is not a step count: use a whole number from 1 to {MAX_TRACE_STEPS} (default {DEFAULT_TRACE_STEPS})"
                    ),
                ));
                DEFAULT_TRACE_STEPS
            }
        },
    };
    let boot_timeout_ms = parse_duration(
        "TS_BOOT_TIMEOUT",
        non_empty("TS_BOOT_TIMEOUT"),
        DEFAULT_BOOT_TIMEOUT_MS,
        1,
        errs,
    );
    let shutdown_grace_ms = parse_duration(
        "TS_SHUTDOWN_GRACE",
        non_empty("TS_SHUTDOWN_GRACE"),
        DEFAULT_SHUTDOWN_GRACE_MS,
        0,
        errs,
    );

    let firewall = match non_empty("TS_DEBUG_FIREWALL_MODE").as_deref() {
        None | Some("iptables") => FirewallMode::Iptables,
        Some("nftables") => FirewallMode::Nftables,
        Some("auto") => FirewallMode::Auto,
        Some(other) => {
            errs.push(ConfigError::new(
                "TS_DEBUG_FIREWALL_MODE",
                format!("TS_DEBUG_FIREWALL_MODE={other:?} is not a firewall mode: use iptables (the default), nftables, or auto (whichever the host already uses)"),
            ));
            FirewallMode::Iptables
        }
    };
    let mut firewall_recheck_ms = parse_duration(
        "TS_FIREWALL_RECHECK",
        non_empty("TS_FIREWALL_RECHECK"),
        DEFAULT_FIREWALL_RECHECK_MS,
        0,
        errs,
    );
    if (1..1000).contains(&firewall_recheck_ms) {
        errs.push(ConfigError::new(
            "TS_FIREWALL_RECHECK",
            format!("TS_FIREWALL_RECHECK={firewall_recheck_ms}ms is too often: every check runs the netfilter programs; use 1s or more, or 0 to check only on netmap changes"),
        ));
        firewall_recheck_ms = DEFAULT_FIREWALL_RECHECK_MS;
    }

    let kube = kube_host.map(|host| KubeEnv {
        host,
        port: kube_port,
        timeout_ms: kube_timeout_ms,
    });
    // In Kubernetes with a secret, tailscaled keeps its state there;
    // TS_KUBE_SECRET="" keeps it per TS_STATE_DIR instead.
    let state = match (&kube, state_dir) {
        (Some(_), dir) if !kube_secret.is_empty() => StateStore::KubeSecret {
            secret: kube_secret,
            dir,
        },
        (_, Some(dir)) => StateStore::Dir(dir),
        (_, None) => StateStore::Memory,
    };
    let seen = Seen {
        auth_key_var,
        proxy_vars: [
            ("TS_DEST_IP", dest_ip.is_some()),
            ("TS_TAILNET_TARGET_IP", tailnet_target_ip.is_some()),
            ("TS_TAILNET_TARGET_FQDN", tailnet_target_fqdn.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect(),
        config_text: config_file.as_deref().map(|p| source.file(p)),
    };
    let egress = match (tailnet_target_ip, tailnet_target_fqdn) {
        (Some(ip), _) => Some(EgressTarget::Ip(ip)),
        (None, Some(fqdn)) => Some(EgressTarget::Fqdn(fqdn)),
        (None, None) => None,
    };
    let settings = Settings {
        auth_key,
        hostname,
        routes,
        proxy: Proxy {
            ingress: dest_ip,
            egress,
        },
        tailscaled_extra_args,
        extra_args,
        kube,
        state,
        userspace,
        accept_dns,
        socks5_server,
        http_proxy_listen,
        socket,
        auth_once,
        config_file,
        serve_config,
        trace_file,
        trace_steps,
        boot_timeout_ms,
        shutdown_grace_ms,
        firewall,
        firewall_recheck_ms,
        test: TestHooks {
            root,
            fake_netfilter,
        },
    };
    validate(&settings, &seen, errs);
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses a boolean the way Go's `strconv.ParseBool` does; unset or empty
/// gives `None`, anything else unknown is an error (and `None`).
fn parse_bool(
    name: &'static str,
    value: Option<String>,
    errs: &mut Vec<ConfigError>,
) -> Option<bool> {
    match value.as_deref() {
        None | Some("") => None,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Some(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Some(false),
        Some(other) => {
            errs.push(ConfigError::new(
                name,
                format!("{name}={other:?} is not a boolean: {BOOL_ACCEPTED}"),
            ));
            None
        }
    }
}

/// Parses an optional IP address variable.
fn parse_ip(
    name: &'static str,
    value: Option<String>,
    errs: &mut Vec<ConfigError>,
) -> Option<IpAddr> {
    let value = value?;
    match IpAddr::from_str(&value) {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.push(ConfigError::new(
                name,
                format!("{name}={value:?} is not an IP address: use {IP_ACCEPTED}"),
            ));
            None
        }
    }
}

/// Splits an argument string on whitespace, as Go's `strings.Fields` does.
fn split_args(value: Option<String>) -> Vec<String> {
    value
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Checks `TS_ROUTES` (set): an empty or all-whitespace value is an empty
/// list;
/// otherwise every comma-separated entry, trimmed, must be a CIDR with an
/// explicit decimal prefix length. Returns `None` (and records an error per
/// bad entry) when any entry is bad.
fn parse_routes(value: &str, errs: &mut Vec<ConfigError>) -> Option<Vec<IpNetwork>> {
    if value.trim().is_empty() {
        return Some(Vec::new());
    }
    let mut ok = true;
    let mut entries = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if !is_cidr(entry) {
            ok = false;
            errs.push(ConfigError::new(
                "TS_ROUTES",
                format!("TS_ROUTES entry {entry:?} is not a CIDR: use {ROUTE_ACCEPTED}"),
            ));
        }
        if let Ok(net) = IpNetwork::from_str(entry) {
            entries.push(net);
        }
    }
    ok.then_some(entries)
}

/// Whether `entry` is `<ip>/<bits>`, with `bits` written in decimal (no
/// netmask form, no sign, no leading zero), as tailscale itself accepts.
fn is_cidr(entry: &str) -> bool {
    let Some((_, bits)) = entry.split_once('/') else {
        return false;
    };
    let decimal = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    decimal && ipnetwork::IpNetwork::from_str(entry).is_ok()
}
