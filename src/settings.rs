//! Settings from the environment.
//!
//! containerboot is configured entirely through environment variables (see
//! the list on [`Settings`]). [`Settings::from_env`] is the only place that
//! reads the process environment; [`Settings::from_lookup`] does the same work
//! from any lookup function, for tests and the `demo` command.
//!
//! Reading never stops at the first problem: every problem found is returned
//! together in [`ConfigErrors`], in the order the variables are read, followed
//! by the cross-variable rules (upstream's `settings.validate()`), followed by
//! the capabilities this version does not have yet.

use crate::kube_env::is_dns_name;
use crate::secret::Secret;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The socket path used when `TS_SOCKET` is unset.
pub const DEFAULT_SOCKET: &str = "/tmp/tailscaled.sock";

/// The Kubernetes secret name used when `TS_KUBE_SECRET` is unset.
pub const DEFAULT_KUBE_SECRET: &str = "tailscale";

/// The only tailscaled config file version upstream accepts.
pub const CONFIGFILE_VERSION: &str = "alpha0";

/// What a boolean variable accepts (Go's `strconv.ParseBool` set).
const BOOL_ACCEPTED: &str =
    "use true or false (also accepted: 1, t, T, TRUE, True, 0, f, F, FALSE, False)";

/// What an IP variable accepts.
const IP_ACCEPTED: &str = "an IPv4 or IPv6 address such as 10.0.0.5";

/// What a `TS_ROUTES` entry accepts.
const ROUTE_ACCEPTED: &str =
    "a CIDR such as 10.0.0.0/24 or fd00::/64; separate several with commas";

/// Every variable containerboot reads, so [`Settings::from_env`] can report
/// values that are not valid UTF-8.
const VARIABLES: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_HOSTNAME",
    "TS_ROUTES",
    "TS_SERVE_CONFIG",
    "TS_DEST_IP",
    "TS_TAILNET_TARGET_IP",
    "TS_TAILNET_TARGET_FQDN",
    "TS_TAILSCALED_EXTRA_ARGS",
    "TS_EXTRA_ARGS",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT_HTTPS",
    "KUBERNETES_SERVICE_PORT",
    "TS_KUBE_TIMEOUT",
    "TS_USERSPACE",
    "TS_STATE_DIR",
    "TS_ACCEPT_DNS",
    "TS_KUBE_SECRET",
    "TS_SOCKS5_SERVER",
    "TS_OUTBOUND_HTTP_PROXY_LISTEN",
    "TS_SOCKET",
    "TS_AUTH_ONCE",
    "TS_TEST_ONLY_ROOT",
    "EXPERIMENTAL_TS_CONFIGFILE_PATH",
    "TS_TEST_FAKE_NETFILTER",
    "TS_TRACE_FILE",
    "TS_TRACE_STEPS",
    "TS_BOOT_TIMEOUT",
    "TS_SHUTDOWN_GRACE",
];

/// How the node is authenticated (upstream isTwoStepConfigAlwaysAuth /
/// isTwoStepConfigAuthOnce / isOneStepConfig).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthMode {
    /// Run tailscaled, then `tailscale up` on every start (the default).
    AlwaysAuth,
    /// Run tailscaled, then `tailscale up` only when not logged in yet and
    /// `tailscale set` otherwise (`TS_AUTH_ONCE=true`).
    AuthOnce,
    /// Run only `tailscaled --config=<file>` (`EXPERIMENTAL_TS_CONFIGFILE_PATH`).
    ConfigFile,
}

/// containerboot's configuration, read from environment variables.
///
/// Each field names the variable it comes from. Strings treat a variable set
/// to the empty string like an unset one, except `TS_ROUTES` and
/// `TS_KUBE_SECRET`, where empty has a meaning of its own.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// `TS_AUTHKEY` if non-empty, else `TS_AUTH_KEY` if non-empty.
    pub auth_key: Option<Secret>,
    /// `TS_HOSTNAME`: the hostname to request for the node.
    pub hostname: Option<String>,
    /// `TS_ROUTES`: subnet routes to advertise. `None` when unset; `Some("")`
    /// when set empty (stop advertising); otherwise comma-separated CIDRs,
    /// each trimmed of surrounding whitespace, otherwise as written.
    pub routes: Option<String>,
    /// `TS_SERVE_CONFIG`: path of an ipn.ServeConfig file.
    pub serve_config_path: Option<PathBuf>,
    /// `TS_DEST_IP`: proxy all incoming Tailscale traffic to this address.
    pub dest_ip: Option<IpAddr>,
    /// `TS_TAILNET_TARGET_IP`: proxy incoming non-Tailscale traffic to this
    /// tailnet address.
    pub tailnet_target_ip: Option<IpAddr>,
    /// `TS_TAILNET_TARGET_FQDN`: proxy incoming non-Tailscale traffic to this
    /// MagicDNS name.
    pub tailnet_target_fqdn: Option<String>,
    /// `TS_TAILSCALED_EXTRA_ARGS`, split on whitespace: extra tailscaled arguments.
    pub tailscaled_extra_args: Vec<String>,
    /// `TS_EXTRA_ARGS`, split on whitespace: extra `tailscale up` arguments.
    pub extra_args: Vec<String>,
    /// Whether `KUBERNETES_SERVICE_HOST` is non-empty.
    pub in_kubernetes: bool,
    /// `KUBERNETES_SERVICE_HOST`: the API server's address.
    #[serde(default)]
    pub kube_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT_HTTPS`, else `KUBERNETES_SERVICE_PORT`, else 443.
    #[serde(default = "default_kube_port")]
    pub kube_port: u16,
    /// `TS_KUBE_TIMEOUT`: how long one Kubernetes API request may take
    /// (default [`DEFAULT_KUBE_TIMEOUT_MS`]).
    #[serde(default = "default_kube_timeout_ms")]
    pub kube_timeout_ms: u64,
    /// `TS_USERSPACE`: userspace networking (default `true`).
    pub userspace: bool,
    /// `TS_STATE_DIR`: where tailscaled keeps its state.
    pub state_dir: Option<String>,
    /// `TS_ACCEPT_DNS`: `None` when unset or empty.
    pub accept_dns: Option<bool>,
    /// `TS_KUBE_SECRET`: `"tailscale"` when unset; set empty stays `""`,
    /// meaning no Kubernetes secret.
    pub kube_secret: String,
    /// `TS_SOCKS5_SERVER`: SOCKS5 listen address.
    pub socks5_server: Option<String>,
    /// `TS_OUTBOUND_HTTP_PROXY_LISTEN`: HTTP proxy listen address.
    pub http_proxy_listen: Option<String>,
    /// `TS_SOCKET`: tailscaled's LocalAPI socket (default `/tmp/tailscaled.sock`).
    pub socket: PathBuf,
    /// `TS_AUTH_ONCE`: log in only when not logged in yet (default `false`).
    pub auth_once: bool,
    /// `TS_TEST_ONLY_ROOT`: filesystem root for `dev/`, `proc/sys/` and the
    /// service-account directory (default `/`; empty means `/`).
    pub root: PathBuf,
    /// `EXPERIMENTAL_TS_CONFIGFILE_PATH`: tailscaled config file.
    pub config_file: Option<PathBuf>,
    /// `TS_TEST_FAKE_NETFILTER`: log netfilter rules instead of installing
    /// them (default `false`).
    pub fake_netfilter: bool,
    /// `TS_TRACE_FILE`: where SIGUSR1 writes the state trace (default
    /// [`DEFAULT_TRACE_FILE`]).
    #[serde(default = "default_trace_file")]
    pub trace_file: PathBuf,
    /// `TS_TRACE_STEPS`: how many steps the trace keeps (default
    /// [`DEFAULT_TRACE_STEPS`]).
    #[serde(default = "default_trace_steps")]
    pub trace_steps: usize,
    /// `TS_BOOT_TIMEOUT`: how long tailscaled has from start to Running
    /// (default [`DEFAULT_BOOT_TIMEOUT_MS`]).
    #[serde(default = "default_boot_timeout_ms")]
    pub boot_timeout_ms: u64,
    /// `TS_SHUTDOWN_GRACE`: how long tailscaled has between SIGTERM and
    /// SIGKILL (default [`DEFAULT_SHUTDOWN_GRACE_MS`]).
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

/// Start to Running, unless `TS_BOOT_TIMEOUT` says otherwise (upstream: 60 s).
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 60_000;
/// SIGTERM to SIGKILL for tailscaled, unless `TS_SHUTDOWN_GRACE` says
/// otherwise: below Docker's 10 s stop timeout, so containerboot still exits
/// on its own terms.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 8_000;
/// The longest duration either may be set to.
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;

/// One Kubernetes API request, unless `TS_KUBE_TIMEOUT` says otherwise.
pub const DEFAULT_KUBE_TIMEOUT_MS: u64 = 10_000;

fn default_kube_timeout_ms() -> u64 {
    DEFAULT_KUBE_TIMEOUT_MS
}

fn default_kube_port() -> u16 {
    443
}

fn default_boot_timeout_ms() -> u64 {
    DEFAULT_BOOT_TIMEOUT_MS
}

fn default_shutdown_grace_ms() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_MS
}

/// Reads a duration such as `90s`, `3m`, `1m30s` or `500ms` (jiff's
/// friendly format, or ISO 8601) into milliseconds.
fn parse_duration(
    name: &'static str,
    value: Option<String>,
    default_ms: u64,
    min_ms: u64,
    errs: &mut Vec<ConfigError>,
) -> u64 {
    let Some(v) = value else {
        return default_ms;
    };
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

/// Where SIGUSR1 writes the state trace unless `TS_TRACE_FILE` says otherwise.
pub const DEFAULT_TRACE_FILE: &str = "/tmp/containerboot-trace.jsonl";
/// How many steps the trace keeps unless `TS_TRACE_STEPS` says otherwise.
pub const DEFAULT_TRACE_STEPS: usize = 1000;
/// The most steps `TS_TRACE_STEPS` may ask for (memory stays bounded).
pub const MAX_TRACE_STEPS: usize = 1_000_000;

fn default_trace_file() -> PathBuf {
    PathBuf::from(DEFAULT_TRACE_FILE)
}

fn default_trace_steps() -> usize {
    DEFAULT_TRACE_STEPS
}

/// One problem with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable the problem is about (the main one, for cross-variable rules).
    pub variable: &'static str,
    /// What is wrong and what to do; it names the variable itself.
    pub message: String,
}

impl ConfigError {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            variable,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in the configuration, in the order found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            fmt::Display::fmt(e, f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Settings {
    /// Reads the process environment (the only reader of it).
    ///
    /// A known variable whose value is not valid UTF-8 is reported as an
    /// error and otherwise treated as unset.
    pub fn from_env() -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        for &name in VARIABLES {
            if let Some(v) = std::env::var_os(name)
                && v.to_str().is_none()
            {
                errors.push(ConfigError::new(
                    name,
                    format!("{name} is not valid UTF-8: give it a UTF-8 value or unset it"),
                ));
            }
        }
        let lookup = |name: &str| std::env::var_os(name).and_then(|v| v.into_string().ok());
        read(lookup, errors)
    }

    /// Reads the settings from any lookup (`None` = unset). Returns every
    /// problem found, not just the first.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigErrors> {
        read(lookup, Vec::new())
    }

    /// How the node is authenticated: [`AuthMode::ConfigFile`] if a config
    /// file is given, else [`AuthMode::AuthOnce`] if `TS_AUTH_ONCE`, else
    /// [`AuthMode::AlwaysAuth`].
    pub fn auth_mode(&self) -> AuthMode {
        if self.config_file.is_some() {
            AuthMode::ConfigFile
        } else if self.auth_once {
            AuthMode::AuthOnce
        } else {
            AuthMode::AlwaysAuth
        }
    }

    /// Whether the node proxies (`TS_DEST_IP`, `TS_TAILNET_TARGET_IP` or
    /// `TS_TAILNET_TARGET_FQDN` set).
    pub fn wants_proxy(&self) -> bool {
        self.dest_ip.is_some()
            || self.tailnet_target_ip.is_some()
            || self.tailnet_target_fqdn.is_some()
    }
}

/// Reads every variable through `lookup`, then applies the cross-variable
/// rules; `errors` holds problems found before (e.g. non-UTF-8 values).
fn read(
    lookup: impl Fn(&str) -> Option<String>,
    mut errors: Vec<ConfigError>,
) -> Result<Settings, ConfigErrors> {
    let non_empty = |name: &str| lookup(name).filter(|v| !v.is_empty());
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
    let serve_config_path = non_empty("TS_SERVE_CONFIG").map(PathBuf::from);
    if serve_config_path.is_some() {
        errs.push(ConfigError::new(
            "TS_SERVE_CONFIG",
            "TS_SERVE_CONFIG is not supported by this version of containerboot yet: unset it \
             (applying and watching a serve config is not built yet; configure serve with \
             the tailscale CLI once the node is up instead)",
        ));
    }
    let dest_ip = parse_ip("TS_DEST_IP", non_empty("TS_DEST_IP"), errs);
    let tailnet_target_ip = parse_ip(
        "TS_TAILNET_TARGET_IP",
        non_empty("TS_TAILNET_TARGET_IP"),
        errs,
    );
    let tailnet_target_fqdn = non_empty("TS_TAILNET_TARGET_FQDN");
    let tailscaled_extra_args = split_args(lookup("TS_TAILSCALED_EXTRA_ARGS"));
    let extra_args = split_args(lookup("TS_EXTRA_ARGS"));
    let kube_host = non_empty("KUBERNETES_SERVICE_HOST");
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
            None => default_kube_port(),
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    if in_kubernetes {
                        errs.push(ConfigError::new(
                            name,
                            format!("{name}={v:?} is not a port: use a number from 1 to 65535 (Kubernetes sets it for every pod; unset it for 443)"),
                        ));
                    }
                    default_kube_port()
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
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(s) if s.is_empty() => {
            errs.push(ConfigError::new(
                "TS_SOCKET",
                format!("TS_SOCKET is set but empty: unset it for the default {DEFAULT_SOCKET} or give a path"),
            ));
            PathBuf::from(DEFAULT_SOCKET)
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

    let settings = Settings {
        auth_key,
        hostname,
        routes,
        serve_config_path,
        dest_ip,
        tailnet_target_ip,
        tailnet_target_fqdn,
        tailscaled_extra_args,
        extra_args,
        in_kubernetes,
        kube_host,
        kube_port,
        kube_timeout_ms,
        userspace,
        state_dir,
        accept_dns,
        kube_secret,
        socks5_server,
        http_proxy_listen,
        socket,
        auth_once,
        root,
        config_file,
        fake_netfilter,
        trace_file,
        trace_steps,
        boot_timeout_ms,
        shutdown_grace_ms,
    };
    validate(&settings, auth_key_var, errs);
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Upstream's `settings.validate()` rules, then the capabilities this
/// version does not have yet.
fn validate(s: &Settings, auth_key_var: Option<&'static str>, errs: &mut Vec<ConfigError>) {
    if let Some(path) = &s.config_file
        && let Err(why) = check_config_file(path)
    {
        errs.push(ConfigError::new(
            "EXPERIMENTAL_TS_CONFIGFILE_PATH",
            format!(
                "error validating tailscaled configfile contents: EXPERIMENTAL_TS_CONFIGFILE_PATH={:?}: {why}",
                path.display().to_string()
            ),
        ));
    }

    let proxies: [(&'static str, bool); 3] = [
        ("TS_DEST_IP", s.dest_ip.is_some()),
        ("TS_TAILNET_TARGET_IP", s.tailnet_target_ip.is_some()),
        ("TS_TAILNET_TARGET_FQDN", s.tailnet_target_fqdn.is_some()),
    ];
    if s.userspace {
        for (name, set) in proxies {
            if set {
                errs.push(ConfigError::new(
                    name,
                    format!(
                        "{name} is not supported with TS_USERSPACE: set TS_USERSPACE=false \
                         (kernel networking) to proxy, or unset {name}"
                    ),
                ));
            }
        }
    }
    if s.tailnet_target_ip.is_some() && s.tailnet_target_fqdn.is_some() {
        errs.push(ConfigError::new(
            "TS_TAILNET_TARGET_FQDN",
            "Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set: \
             set only one of TS_TAILNET_TARGET_IP and TS_TAILNET_TARGET_FQDN",
        ));
    }
    if s.config_file.is_some() {
        let mut set: Vec<&str> = Vec::new();
        if s.hostname.is_some() {
            set.push("TS_HOSTNAME");
        }
        if !s.extra_args.is_empty() {
            set.push("TS_EXTRA_ARGS");
        }
        if let Some(var) = auth_key_var {
            set.push(var);
        }
        if s.routes.is_some() {
            set.push("TS_ROUTES");
        }
        if s.accept_dns.is_some() {
            set.push("TS_ACCEPT_DNS");
        }
        if !set.is_empty() {
            errs.push(ConfigError::new(
                "EXPERIMENTAL_TS_CONFIGFILE_PATH",
                format!(
                    "EXPERIMENTAL_TS_CONFIGFILE_PATH cannot be set in combination with TS_HOSTNAME, \
                     TS_EXTRA_ARGS, TS_AUTHKEY, TS_ROUTES, TS_ACCEPT_DNS. Set now: {}; unset {} \
                     and put those settings in the config file instead",
                    set.join(", "),
                    if set.len() == 1 { "it" } else { "them" },
                ),
            ));
        }
    }

    if s.in_kubernetes && !s.kube_secret.is_empty() && !is_dns_name(&s.kube_secret) {
        errs.push(ConfigError::new(
            "TS_KUBE_SECRET",
            format!(
                "TS_KUBE_SECRET={:?} is not a Kubernetes secret name: use lower-case letters, digits, '-' and '.' \
                 (at most 253 characters), or set TS_KUBE_SECRET=\"\" to keep state on disk in TS_STATE_DIR",
                s.kube_secret
            ),
        ));
    }
    if !s.userspace && !s.fake_netfilter {
        let set: Vec<&str> = proxies
            .iter()
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect();
        if let Some(&first) = set.first() {
            errs.push(ConfigError::new(
                first,
                format!(
                    "{} in kernel mode (TS_USERSPACE=false) needs netfilter rules, and installing \
                     real netfilter rules is not supported by this version of containerboot yet: \
                     set TS_TEST_FAKE_NETFILTER=true to have the rules logged instead of installed",
                    set.join(" and "),
                ),
            ));
        }
    }
}

/// Checks that the tailscaled config file exists, is readable, is HuJSON
/// (JSON with comments and trailing commas), is an object and has
/// `"Version": "alpha0"`. The error says what is wrong.
fn check_config_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let options = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let value = jsonc_parser::parse_to_serde_value::<serde_json::Value>(&text, &options)
        .map_err(|e| format!("not valid HuJSON (JSON with comments and trailing commas): {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("the file must hold a JSON object".to_string());
    };
    match map.get("Version") {
        Some(serde_json::Value::String(v)) if v == CONFIGFILE_VERSION => Ok(()),
        Some(other) => Err(format!(
            "unsupported \"Version\" {other}: want \"{CONFIGFILE_VERSION}\""
        )),
        None => Err(format!(
            "no \"Version\" field: want \"Version\": \"{CONFIGFILE_VERSION}\""
        )),
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

/// Checks `TS_ROUTES` (set): an empty or all-whitespace value is `Some("")`;
/// otherwise every comma-separated entry, trimmed, must be a CIDR with an
/// explicit decimal prefix length. Returns `None` (and records an error per
/// bad entry) when any entry is bad.
fn parse_routes(value: &str, errs: &mut Vec<ConfigError>) -> Option<String> {
    if value.trim().is_empty() {
        return Some(String::new());
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
        entries.push(entry);
    }
    ok.then(|| entries.join(","))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    fn ok(vars: &[(&str, &str)]) -> Settings {
        match settings(vars) {
            Ok(s) => s,
            Err(e) => panic!("unexpected errors: {e}"),
        }
    }

    fn errors(vars: &[(&str, &str)]) -> Vec<ConfigError> {
        match settings(vars) {
            Ok(s) => panic!("expected errors, got {s:?}"),
            Err(e) => e.0,
        }
    }

    /// The single error for `vars`; fails if there are more or none.
    fn one_error(vars: &[(&str, &str)]) -> ConfigError {
        let errs = errors(vars);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().expect("one error")
    }

    fn config_file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(contents.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults() {
        let s = ok(&[]);
        assert_eq!(
            s,
            Settings {
                auth_key: None,
                hostname: None,
                routes: None,
                serve_config_path: None,
                dest_ip: None,
                tailnet_target_ip: None,
                tailnet_target_fqdn: None,
                tailscaled_extra_args: vec![],
                extra_args: vec![],
                in_kubernetes: false,
                kube_host: None,
                kube_port: 443,
                kube_timeout_ms: 10_000,
                userspace: true,
                state_dir: None,
                accept_dns: None,
                kube_secret: "tailscale".into(),
                socks5_server: None,
                http_proxy_listen: None,
                socket: PathBuf::from("/tmp/tailscaled.sock"),
                auth_once: false,
                root: PathBuf::from("/"),
                config_file: None,
                fake_netfilter: false,
                trace_file: PathBuf::from("/tmp/containerboot-trace.jsonl"),
                trace_steps: 1000,
                boot_timeout_ms: 60_000,
                shutdown_grace_ms: 8_000,
            }
        );
        assert_eq!(s.auth_mode(), AuthMode::AlwaysAuth);
        assert!(!s.wants_proxy());
    }

    #[test]
    fn set_empty_strings_are_unset() {
        let vars: Vec<(&str, &str)> = [
            "TS_AUTHKEY",
            "TS_AUTH_KEY",
            "TS_HOSTNAME",
            "TS_SERVE_CONFIG",
            "TS_DEST_IP",
            "TS_TAILNET_TARGET_IP",
            "TS_TAILNET_TARGET_FQDN",
            "TS_TAILSCALED_EXTRA_ARGS",
            "TS_EXTRA_ARGS",
            "KUBERNETES_SERVICE_HOST",
            "TS_USERSPACE",
            "TS_STATE_DIR",
            "TS_ACCEPT_DNS",
            "TS_SOCKS5_SERVER",
            "TS_OUTBOUND_HTTP_PROXY_LISTEN",
            "TS_AUTH_ONCE",
            "TS_TEST_ONLY_ROOT",
            "EXPERIMENTAL_TS_CONFIGFILE_PATH",
            "TS_TEST_FAKE_NETFILTER",
        ]
        .iter()
        .map(|n| (*n, ""))
        .collect();
        let mut expected = ok(&[]);
        assert_eq!(ok(&vars), expected);
        // The two whose empty value means something of its own.
        expected.routes = Some(String::new());
        expected.kube_secret = String::new();
        let mut with_special = vars.clone();
        with_special.push(("TS_ROUTES", ""));
        with_special.push(("TS_KUBE_SECRET", ""));
        assert_eq!(ok(&with_special), expected);
    }

    #[test]
    fn plain_values_are_read() {
        let s = ok(&[
            ("TS_HOSTNAME", "node1"),
            ("TS_STATE_DIR", "/state"),
            ("TS_SOCKS5_SERVER", "localhost:1080"),
            ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080"),
            ("TS_SOCKET", "/run/ts.sock"),
            ("TS_TEST_ONLY_ROOT", "/tmp/root"),
            ("TS_TAILSCALED_EXTRA_ARGS", "  --verbose=1\t--port=41641 "),
            ("TS_EXTRA_ARGS", "--accept-routes\n--ssh"),
        ]);
        assert_eq!(s.hostname.as_deref(), Some("node1"));
        assert_eq!(s.state_dir.as_deref(), Some("/state"));
        assert_eq!(s.socks5_server.as_deref(), Some("localhost:1080"));
        assert_eq!(s.http_proxy_listen.as_deref(), Some("localhost:8080"));
        assert_eq!(s.socket, PathBuf::from("/run/ts.sock"));
        assert_eq!(s.root, PathBuf::from("/tmp/root"));
        assert_eq!(s.tailscaled_extra_args, vec!["--verbose=1", "--port=41641"]);
        assert_eq!(s.extra_args, vec!["--accept-routes", "--ssh"]);
    }

    #[test]
    fn auth_key_alias_and_precedence() {
        let key = |vars: &[(&str, &str)]| ok(vars).auth_key.map(|k| k.expose().to_string());
        assert_eq!(key(&[("TS_AUTHKEY", "a")]), Some("a".into()));
        assert_eq!(key(&[("TS_AUTH_KEY", "b")]), Some("b".into()));
        assert_eq!(
            key(&[("TS_AUTHKEY", "a"), ("TS_AUTH_KEY", "b")]),
            Some("a".into())
        );
        assert_eq!(
            key(&[("TS_AUTHKEY", ""), ("TS_AUTH_KEY", "b")]),
            Some("b".into())
        );
        assert_eq!(key(&[("TS_AUTHKEY", ""), ("TS_AUTH_KEY", "")]), None);
    }

    #[test]
    fn auth_key_never_in_debug() {
        let s = ok(&[("TS_AUTHKEY", "tskey-secret-value")]);
        assert!(!format!("{s:?}").contains("tskey-secret-value"));
    }

    #[test]
    fn routes() {
        assert_eq!(ok(&[]).routes, None);
        assert_eq!(ok(&[("TS_ROUTES", "")]).routes.as_deref(), Some(""));
        assert_eq!(ok(&[("TS_ROUTES", "   ")]).routes.as_deref(), Some(""));
        assert_eq!(
            ok(&[("TS_ROUTES", "10.0.0.0/24")]).routes.as_deref(),
            Some("10.0.0.0/24")
        );
        // Trimmed, re-joined, otherwise as written (host bits kept, no canonicalisation).
        assert_eq!(
            ok(&[("TS_ROUTES", " 10.0.0.1/24 ,  fd00:0::/64,0.0.0.0/0 ")])
                .routes
                .as_deref(),
            Some("10.0.0.1/24,fd00:0::/64,0.0.0.0/0")
        );
    }

    #[test]
    fn routes_bad_entries() {
        let e = one_error(&[("TS_ROUTES", "10.0.0.0/24,not-a-route")]);
        assert_eq!(e.variable, "TS_ROUTES");
        assert!(e.message.contains("TS_ROUTES"), "{}", e.message);
        assert!(e.message.contains("\"not-a-route\""), "{}", e.message);
        assert!(e.message.contains(ROUTE_ACCEPTED), "{}", e.message);

        // A bare IP is not a route.
        let e = one_error(&[("TS_ROUTES", "10.0.0.5")]);
        assert!(e.message.contains("\"10.0.0.5\""), "{}", e.message);

        // Prefix too long, netmask form, signed or padded bits, empty entry.
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/255.255.255.0",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0.0/24,",
            "/24",
        ] {
            let errs = errors(&[("TS_ROUTES", bad)]);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].variable, "TS_ROUTES");
        }

        // Every bad entry is reported.
        assert_eq!(errors(&[("TS_ROUTES", "a,10.0.0.0/8,b")]).len(), 2);
    }

    #[test]
    fn accept_dns_tri_state() {
        assert_eq!(ok(&[]).accept_dns, None);
        assert_eq!(ok(&[("TS_ACCEPT_DNS", "")]).accept_dns, None);
        assert_eq!(ok(&[("TS_ACCEPT_DNS", "true")]).accept_dns, Some(true));
        assert_eq!(ok(&[("TS_ACCEPT_DNS", "0")]).accept_dns, Some(false));
        assert_eq!(ok(&[("TS_ACCEPT_DNS", "False")]).accept_dns, Some(false));
    }

    #[test]
    fn bools_accept_go_parse_bool_set() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            let s = ok(&[
                ("TS_AUTH_ONCE", t),
                ("TS_TEST_FAKE_NETFILTER", t),
                ("TS_USERSPACE", t),
            ]);
            assert!(s.auth_once && s.fake_netfilter && s.userspace, "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            let s = ok(&[
                ("TS_AUTH_ONCE", f),
                ("TS_TEST_FAKE_NETFILTER", f),
                ("TS_USERSPACE", f),
            ]);
            assert!(!s.auth_once && !s.fake_netfilter && !s.userspace, "{f}");
        }
    }

    #[test]
    fn every_bool_error() {
        for name in [
            "TS_USERSPACE",
            "TS_ACCEPT_DNS",
            "TS_AUTH_ONCE",
            "TS_TEST_FAKE_NETFILTER",
        ] {
            for bad in ["maybe", "yes", "tRUE", " true", "2"] {
                let e = one_error(&[(name, bad)]);
                assert_eq!(e.variable, name);
                assert_eq!(
                    e.message,
                    format!("{name}={bad:?} is not a boolean: {BOOL_ACCEPTED}")
                );
            }
        }
        assert_eq!(
            one_error(&[("TS_USERSPACE", "maybe")]).to_string(),
            "TS_USERSPACE=\"maybe\" is not a boolean: use true or false \
             (also accepted: 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
        );
    }

    #[test]
    fn ip_errors() {
        for name in ["TS_DEST_IP", "TS_TAILNET_TARGET_IP"] {
            for bad in ["10.0.0", "10.0.0.0/24", "example.com", "fe80::1%eth0"] {
                // Kernel mode with fake netfilter so only the parse error is left.
                let e = one_error(&[
                    (name, bad),
                    ("TS_USERSPACE", "false"),
                    ("TS_TEST_FAKE_NETFILTER", "true"),
                ]);
                assert_eq!(e.variable, name);
                assert!(e.message.contains(name), "{}", e.message);
                assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
                assert!(e.message.contains(IP_ACCEPTED), "{}", e.message);
            }
        }
    }

    #[test]
    fn proxy_in_kernel_mode_with_fake_netfilter() {
        let base = [
            ("TS_USERSPACE", "false"),
            ("TS_TEST_FAKE_NETFILTER", "true"),
        ];
        let mut v = base.to_vec();
        v.push(("TS_DEST_IP", "10.0.0.5"));
        let s = ok(&v);
        assert_eq!(s.dest_ip, Some("10.0.0.5".parse().expect("ip")));
        assert!(s.wants_proxy());

        let mut v = base.to_vec();
        v.push(("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::1"));
        let s = ok(&v);
        assert_eq!(
            s.tailnet_target_ip,
            Some("fd7a:115c:a1e0::1".parse().expect("ip"))
        );
        assert!(s.wants_proxy());

        let mut v = base.to_vec();
        v.push(("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"));
        let s = ok(&v);
        assert_eq!(s.tailnet_target_fqdn.as_deref(), Some("foo.tails.ts.net"));
        assert!(s.wants_proxy());
    }

    #[test]
    fn proxy_not_supported_with_userspace() {
        for (name, value) in [
            ("TS_DEST_IP", "10.0.0.5"),
            ("TS_TAILNET_TARGET_IP", "100.64.0.1"),
            ("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"),
        ] {
            let e = one_error(&[(name, value)]);
            assert_eq!(e.variable, name);
            assert!(
                e.message.starts_with(&format!(
                    "{name} is not supported with TS_USERSPACE: set TS_USERSPACE=false"
                )),
                "{}",
                e.message
            );
            // Same when userspace is explicit.
            assert_eq!(one_error(&[(name, value), ("TS_USERSPACE", "true")]), e);
        }
    }

    #[test]
    fn both_tailnet_targets() {
        let e = one_error(&[
            ("TS_USERSPACE", "false"),
            ("TS_TEST_FAKE_NETFILTER", "true"),
            ("TS_TAILNET_TARGET_IP", "100.64.0.1"),
            ("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"),
        ]);
        assert!(
            e.message
                .starts_with("Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("only one"), "{}", e.message);
    }

    #[test]
    fn real_netfilter_not_supported() {
        let e = one_error(&[("TS_USERSPACE", "false"), ("TS_DEST_IP", "10.0.0.5")]);
        assert_eq!(e.variable, "TS_DEST_IP");
        assert!(
            e.message.contains("set TS_TEST_FAKE_NETFILTER=true"),
            "{}",
            e.message
        );
        assert!(e.message.contains("not supported"), "{}", e.message);

        // One error naming every proxy variable set.
        let e = one_error(&[
            ("TS_USERSPACE", "false"),
            ("TS_TAILNET_TARGET_FQDN", "a.ts.net"),
            ("TS_DEST_IP", "10.0.0.5"),
        ]);
        assert_eq!(e.variable, "TS_DEST_IP");
        assert!(
            e.message
                .starts_with("TS_DEST_IP and TS_TAILNET_TARGET_FQDN "),
            "{}",
            e.message
        );

        // Kernel mode without proxying needs no netfilter.
        assert!(!ok(&[("TS_USERSPACE", "false")]).userspace);
    }

    #[test]
    fn serve_config_not_supported() {
        let e = one_error(&[("TS_SERVE_CONFIG", "/etc/serve.json")]);
        assert_eq!(e.variable, "TS_SERVE_CONFIG");
        assert!(
            e.message.starts_with(
                "TS_SERVE_CONFIG is not supported by this version of containerboot yet: unset it"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn kube_secret_default_vs_set_empty() {
        assert_eq!(ok(&[]).kube_secret, "tailscale");
        assert_eq!(ok(&[("TS_KUBE_SECRET", "")]).kube_secret, "");
        assert_eq!(ok(&[("TS_KUBE_SECRET", "mine")]).kube_secret, "mine");

        // In Kubernetes the secret (default or given) is used...
        let s = ok(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]);
        assert!(s.in_kubernetes);
        assert_eq!(s.kube_secret, "tailscale");
        assert_eq!(s.kube_host.as_deref(), Some("10.96.0.1"));
        assert_eq!(s.kube_port, 443);
        // ...and must be a Kubernetes name.
        let e = one_error(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("TS_KUBE_SECRET", "Mine/../x"),
        ]);
        assert_eq!(e.variable, "TS_KUBE_SECRET");
        assert!(
            e.message
                .contains("\"Mine/../x\" is not a Kubernetes secret name"),
            "{}",
            e.message
        );
        assert!(e.message.contains("TS_KUBE_SECRET=\"\""), "{}", e.message);

        // ...but setting it empty works.
        let s = ok(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("TS_KUBE_SECRET", ""),
            ("TS_STATE_DIR", "/state"),
        ]);
        assert!(s.in_kubernetes);
        assert_eq!(s.kube_secret, "");
    }

    #[test]
    fn socket_set_empty_is_an_error() {
        let e = one_error(&[("TS_SOCKET", "")]);
        assert_eq!(e.variable, "TS_SOCKET");
        assert!(
            e.message
                .contains("unset it for the default /tmp/tailscaled.sock"),
            "{}",
            e.message
        );
    }

    #[test]
    fn config_file_valid_with_comments_and_trailing_commas() {
        let f = config_file(
            "// tailscaled config\n{\n  \"Version\": \"alpha0\", /* the only one */\n  \"Hostname\": \"n\",\n  \"AdvertiseRoutes\": [\"10.0.0.0/24\",],\n}\n",
        );
        let path = f.path().to_str().expect("utf-8 path");
        let s = ok(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
        assert_eq!(s.config_file.as_deref(), Some(f.path()));
        assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
        // The config file wins over TS_AUTH_ONCE.
        let s = ok(&[
            ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
            ("TS_AUTH_ONCE", "true"),
        ]);
        assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
    }

    #[test]
    fn config_file_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.json");
        let path = path.to_str().expect("utf-8 path");
        let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
        assert_eq!(e.variable, "EXPERIMENTAL_TS_CONFIGFILE_PATH");
        assert!(
            e.message
                .starts_with("error validating tailscaled configfile contents:"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("EXPERIMENTAL_TS_CONFIGFILE_PATH"),
            "{}",
            e.message
        );
        assert!(e.message.contains(path), "{}", e.message);
        assert!(e.message.contains("cannot read"), "{}", e.message);
    }

    #[test]
    fn config_file_bad_hujson() {
        for bad in [
            "{\"Version\": \"alpha0\"",
            "{Version: \"alpha0\"}",
            "{'Version': 'alpha0'}",
            "{\"Version\": \"alpha0\" \"A\": 1}",
            "{\"Version\": \"alpha0\", \"N\": 0x10}",
            "{} {}",
        ] {
            let f = config_file(bad);
            let path = f.path().to_str().expect("utf-8 path");
            let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
            assert!(
                e.message
                    .starts_with("error validating tailscaled configfile contents:"),
                "{}",
                e.message
            );
            assert!(e.message.contains(path), "{}", e.message);
            assert!(
                e.message.contains("not valid HuJSON"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn config_file_not_an_object_or_wrong_version() {
        for (contents, why) in [
            ("[1, 2]", "JSON object"),
            ("", "JSON object"),
            ("{}", "no \"Version\""),
            (
                "{\"Version\": \"alpha1\"}",
                "unsupported \"Version\" \"alpha1\"",
            ),
            ("{\"Version\": 0}", "unsupported \"Version\" 0"),
            ("{\"version\": \"alpha0\"}", "no \"Version\""),
        ] {
            let f = config_file(contents);
            let path = f.path().to_str().expect("utf-8 path");
            let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
            assert!(
                e.message
                    .starts_with("error validating tailscaled configfile contents:"),
                "{}",
                e.message
            );
            assert!(e.message.contains(why), "{contents}: {}", e.message);
        }
    }

    #[test]
    fn config_file_conflicts() {
        let f = config_file("{\"Version\": \"alpha0\"}");
        let path = f.path().to_str().expect("utf-8 path");
        let prefix = "EXPERIMENTAL_TS_CONFIGFILE_PATH cannot be set in combination with TS_HOSTNAME, \
                      TS_EXTRA_ARGS, TS_AUTHKEY, TS_ROUTES, TS_ACCEPT_DNS.";
        for (name, value) in [
            ("TS_HOSTNAME", "h"),
            ("TS_EXTRA_ARGS", "--ssh"),
            ("TS_AUTHKEY", "k"),
            ("TS_AUTH_KEY", "k"),
            ("TS_ROUTES", ""),
            ("TS_ROUTES", "10.0.0.0/8"),
            ("TS_ACCEPT_DNS", "false"),
        ] {
            let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path), (name, value)]);
            assert_eq!(e.variable, "EXPERIMENTAL_TS_CONFIGFILE_PATH");
            assert!(e.message.starts_with(prefix), "{}", e.message);
            assert!(
                e.message.contains(&format!("Set now: {name};")),
                "{}",
                e.message
            );
        }
        // Several are named together.
        let e = one_error(&[
            ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
            ("TS_HOSTNAME", "h"),
            ("TS_ACCEPT_DNS", "1"),
        ]);
        assert!(
            e.message.contains("Set now: TS_HOSTNAME, TS_ACCEPT_DNS;"),
            "{}",
            e.message
        );
        // Empty values (other than TS_ROUTES) count as unset.
        ok(&[
            ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
            ("TS_HOSTNAME", ""),
            ("TS_EXTRA_ARGS", " "),
            ("TS_AUTHKEY", ""),
            ("TS_ACCEPT_DNS", ""),
        ]);
    }

    #[test]
    fn kube_port_and_timeout() {
        let host = ("KUBERNETES_SERVICE_HOST", "fd00::1");
        let s = ok(&[
            host,
            ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
            ("KUBERNETES_SERVICE_PORT", "1"),
        ]);
        assert_eq!(s.kube_port, 6443);
        assert_eq!(
            ok(&[host, ("KUBERNETES_SERVICE_PORT", "8443")]).kube_port,
            8443
        );
        let e = one_error(&[host, ("KUBERNETES_SERVICE_PORT_HTTPS", "0")]);
        assert_eq!(e.variable, "KUBERNETES_SERVICE_PORT_HTTPS");
        // Outside Kubernetes the port is not read for anything.
        assert_eq!(ok(&[("KUBERNETES_SERVICE_PORT", "x")]).kube_port, 443);
        assert_eq!(ok(&[("TS_KUBE_TIMEOUT", "2s")]).kube_timeout_ms, 2000);
        assert_eq!(
            one_error(&[("TS_KUBE_TIMEOUT", "soon")]).variable,
            "TS_KUBE_TIMEOUT"
        );
    }

    #[test]
    fn multiple_errors_reported_together_in_order() {
        let errs = errors(&[
            ("TS_ROUTES", "10.0.0.5"),
            ("TS_DEST_IP", "nope"),
            ("TS_USERSPACE", "maybe"),
            ("TS_SOCKET", ""),
            ("TS_TAILNET_TARGET_FQDN", "a.ts.net"),
            ("KUBERNETES_SERVICE_HOST", "k"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "https"),
        ]);
        let vars: Vec<&str> = errs.iter().map(|e| e.variable).collect();
        // Read order first (TS_USERSPACE falls back to its default, true),
        // then the cross-variable rules.
        assert_eq!(
            vars,
            vec![
                "TS_ROUTES",
                "TS_DEST_IP",
                "KUBERNETES_SERVICE_PORT_HTTPS",
                "TS_USERSPACE",
                "TS_SOCKET",
                "TS_TAILNET_TARGET_FQDN",
            ]
        );
        let all = ConfigErrors(errs.clone()).to_string();
        let joined: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        assert_eq!(all, joined.join("; "));
    }

    #[test]
    fn auth_mode_and_wants_proxy() {
        assert_eq!(ok(&[]).auth_mode(), AuthMode::AlwaysAuth);
        assert_eq!(
            ok(&[("TS_AUTH_ONCE", "false")]).auth_mode(),
            AuthMode::AlwaysAuth
        );
        assert_eq!(
            ok(&[("TS_AUTH_ONCE", "true")]).auth_mode(),
            AuthMode::AuthOnce
        );
        let mut s = ok(&[]);
        assert!(!s.wants_proxy());
        s.tailnet_target_fqdn = Some("a.ts.net".into());
        assert!(s.wants_proxy());
        s.config_file = Some(PathBuf::from("/c.json"));
        s.auth_once = true;
        assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
    }

    #[test]
    fn error_display() {
        let e = ConfigError::new("TS_X", "TS_X is bad: fix it");
        assert_eq!(e.to_string(), "TS_X is bad: fix it");
        let es = ConfigErrors(vec![e.clone(), ConfigError::new("TS_Y", "TS_Y too")]);
        assert_eq!(es.to_string(), "TS_X is bad: fix it; TS_Y too");
        let boxed: Box<dyn std::error::Error> = Box::new(es);
        assert!(boxed.to_string().contains("; "));
    }

    #[test]
    fn settings_round_trip_through_serde() {
        let s = ok(&[
            ("TS_HOSTNAME", "h"),
            ("TS_ROUTES", "10.0.0.0/8"),
            ("TS_ACCEPT_DNS", "true"),
        ]);
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Settings = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }

    #[test]
    fn trace_settings() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.trace_file, PathBuf::from(DEFAULT_TRACE_FILE));
        assert_eq!(s.trace_steps, DEFAULT_TRACE_STEPS);
        let env = |k: &str| match k {
            "TS_TRACE_FILE" => Some("/x/t.jsonl".to_string()),
            "TS_TRACE_STEPS" => Some("50".to_string()),
            _ => None,
        };
        let s = Settings::from_lookup(env).unwrap();
        assert_eq!(s.trace_file, PathBuf::from("/x/t.jsonl"));
        assert_eq!(s.trace_steps, 50);
        for bad in ["0", "-1", "many", "2000000"] {
            let e = Settings::from_lookup(|k| (k == "TS_TRACE_STEPS").then(|| bad.to_string()))
                .unwrap_err();
            assert_eq!(e.0.len(), 1);
            assert_eq!(e.0[0].variable, "TS_TRACE_STEPS");
            assert!(
                e.0[0].message.contains(&format!("{bad:?}")),
                "{}",
                e.0[0].message
            );
        }
    }

    #[test]
    fn durations() {
        let get = |k: &'static str, v: &'static str| {
            Settings::from_lookup(move |name| (name == k).then(|| v.to_string()))
        };
        assert_eq!(
            get("TS_BOOT_TIMEOUT", "90s").unwrap().boot_timeout_ms,
            90_000
        );
        assert_eq!(
            get("TS_BOOT_TIMEOUT", "3m").unwrap().boot_timeout_ms,
            180_000
        );
        assert_eq!(
            get("TS_BOOT_TIMEOUT", "1m30s").unwrap().boot_timeout_ms,
            90_000
        );
        assert_eq!(
            get("TS_SHUTDOWN_GRACE", "500ms").unwrap().shutdown_grace_ms,
            500
        );
        assert_eq!(get("TS_SHUTDOWN_GRACE", "0s").unwrap().shutdown_grace_ms, 0);
        for (k, bad) in [
            ("TS_BOOT_TIMEOUT", "90"),
            ("TS_BOOT_TIMEOUT", "0s"),
            ("TS_BOOT_TIMEOUT", "-5s"),
            ("TS_BOOT_TIMEOUT", "48h"),
            ("TS_SHUTDOWN_GRACE", "soon"),
        ] {
            let e = get(k, bad).unwrap_err();
            assert_eq!(e.0[0].variable, k);
            assert!(e.0[0].message.contains("such as 90s"), "{}", e.0[0].message);
            assert!(e.0[0].message.contains(&format!("{bad:?}")));
        }
    }
}
