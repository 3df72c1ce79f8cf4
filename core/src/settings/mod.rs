//! Settings: containerboot's configuration as typed data.
//!
//! containerboot is configured entirely through environment variables (see
//! [`read::VARIABLES`], the one list of them). Reading is pure: it asks a
//! [`Source`] for variables and for the text of the files they name, so the
//! same code serves the process environment (the shell's `env.rs`), tests
//! and the demo.
//!
//! Reading never stops at the first problem: every problem found is returned
//! together in [`ConfigErrors`], in the order the variables are read, followed
//! by the cross-variable rules (upstream's `settings.validate()`, in
//! `validate.rs`), followed by the capabilities this version does not have
//! yet. A valid [`Settings`] is never changed afterwards.

mod config_file;
pub mod kube;
pub mod read;
mod validate;

pub use config_file::check_config_text;
pub use read::VARIABLES;

use crate::secret::Secret;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The socket path used when `TS_SOCKET` is unset.
pub const DEFAULT_TS_SOCKET: &str = "/tmp/tailscaled.sock";
/// The Kubernetes secret name used when `TS_KUBE_SECRET` is unset.
pub const DEFAULT_KUBE_SECRET: &str = "tailscale";
/// The only tailscaled config file version upstream accepts.
pub const CONFIGFILE_VERSION: &str = "alpha0";
/// Start to Running, unless `TS_BOOT_TIMEOUT` says otherwise (upstream: 60 s).
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 60_000;
/// SIGTERM to SIGKILL for tailscaled, unless `TS_SHUTDOWN_GRACE` says
/// otherwise: below Docker's 10 s stop timeout, so containerboot still exits
/// on its own terms.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 8_000;
/// The longest duration any duration variable may be set to.
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;
/// One Kubernetes API request, unless `TS_KUBE_TIMEOUT` says otherwise.
pub const DEFAULT_KUBE_TIMEOUT_MS: u64 = 10_000;
/// Where SIGUSR1 writes the state trace unless `TS_TRACE_FILE` says otherwise.
pub const DEFAULT_TRACE_FILE: &str = "/tmp/containerboot-trace.jsonl";
/// How many steps the trace keeps unless `TS_TRACE_STEPS` says otherwise.
pub const DEFAULT_TRACE_STEPS: usize = 1000;
/// The most steps `TS_TRACE_STEPS` may ask for (memory stays bounded).
pub const MAX_TRACE_STEPS: usize = 1_000_000;
/// Where tailscaled keeps files it needs beside a memory or secret state.
pub const DEFAULT_STATE_DIR: &str = "/tmp";

/// Where configuration comes from: variables, and the files they name.
pub trait Source {
    /// The variable's value; `None` when unset.
    fn var(&self, name: &str) -> Option<String>;
    /// The text of a file a variable names, or why it cannot be read.
    fn file(&self, path: &Path) -> Result<String, String>;
}

/// A [`Source`] of variables from a function and no readable files: for
/// tests and the demo.
pub struct Lookup<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Source for Lookup<F> {
    fn var(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        Err(format!("no file {} in this lookup", path.display()))
    }
}

/// How the node is authenticated (upstream isTwoStepConfigAlwaysAuth /
/// isTwoStepConfigAuthOnce / isOneStepConfig).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMode {
    /// Run tailscaled, then `tailscale up` on every start (the default).
    AlwaysAuth,
    /// Run tailscaled, then `tailscale up` only when not logged in yet and
    /// `tailscale set` otherwise (`TS_AUTH_ONCE=true`).
    AuthOnce,
    /// Run only `tailscaled --config=<file>` (`EXPERIMENTAL_TS_CONFIGFILE_PATH`).
    ConfigFile,
}

/// Where tailscaled keeps its state; decided once, from `TS_STATE_DIR`,
/// `TS_KUBE_SECRET` and whether containerboot runs in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateStore {
    /// Nowhere: `--state=mem:` (no `TS_STATE_DIR`, no secret).
    Memory,
    /// `TS_STATE_DIR`.
    Dir(String),
    /// A Kubernetes secret (in Kubernetes, `TS_KUBE_SECRET` not empty).
    KubeSecret {
        /// `TS_KUBE_SECRET` (default `tailscale`).
        secret: String,
        /// `TS_STATE_DIR`, for the files beside the state.
        dir: Option<String>,
    },
}

/// The Kubernetes API as the pod sees it (only in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeEnv {
    /// `KUBERNETES_SERVICE_HOST`: the API server's address.
    pub host: String,
    /// `KUBERNETES_SERVICE_PORT_HTTPS`, else `KUBERNETES_SERVICE_PORT`, else 443.
    pub port: u16,
    /// `TS_KUBE_TIMEOUT`: how long one request may take.
    pub timeout_ms: u64,
}

/// Where an egress proxy sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EgressTarget {
    /// `TS_TAILNET_TARGET_IP`.
    Ip(IpAddr),
    /// `TS_TAILNET_TARGET_FQDN`: a node's MagicDNS name.
    Fqdn(String),
}

/// What the node proxies (kernel mode only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// `TS_DEST_IP`: tailnet traffic to the node goes here.
    pub ingress: Option<IpAddr>,
    /// Non-tailnet traffic to the node goes to this tailnet target.
    pub egress: Option<EgressTarget>,
}

/// Which netfilter backend installs the proxy rules
/// (`TS_DEBUG_FIREWALL_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirewallMode {
    /// iptables and ip6tables (the default, as upstream).
    Iptables,
    /// nftables.
    Nftables,
    /// Whichever the host's other users (kube-proxy, Docker, a CNI) already
    /// use, decided at the first installation.
    Auto,
}

/// How often the installed proxy rules are read back and repaired once
/// Running, unless `TS_FIREWALL_RECHECK` says otherwise (`0` turns it off).
pub const DEFAULT_FIREWALL_RECHECK_MS: u64 = 60_000;

/// Knobs for tests, not for users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestHooks {
    /// `TS_TEST_ONLY_ROOT`: filesystem root for `dev/`, `proc/sys/` and the
    /// service-account directory (default `/`; empty means `/`).
    pub root: PathBuf,
    /// `TS_TEST_FAKE_NETFILTER`: log netfilter rules instead of installing
    /// them (default `false`).
    pub fake_netfilter: bool,
}

/// containerboot's configuration, valid by construction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `TS_AUTHKEY` if non-empty, else `TS_AUTH_KEY` if non-empty.
    pub auth_key: Option<Secret>,
    /// `TS_HOSTNAME`: the hostname to request for the node.
    pub hostname: Option<String>,
    /// `TS_ROUTES`: `None` when unset; an empty list when set empty (stop
    /// advertising); otherwise the routes, in order.
    pub routes: Option<Vec<IpNetwork>>,
    /// `TS_DEST_IP`, `TS_TAILNET_TARGET_IP`, `TS_TAILNET_TARGET_FQDN`.
    pub proxy: Proxy,
    /// `TS_TAILSCALED_EXTRA_ARGS`, split on whitespace.
    pub tailscaled_extra_args: Vec<String>,
    /// `TS_EXTRA_ARGS`, split on whitespace: extra `tailscale up` arguments;
    /// the values of secret flags (`--authkey=…`) are secrets.
    pub extra_args: Vec<crate::secret::Arg>,
    /// The Kubernetes API, when `KUBERNETES_SERVICE_HOST` is set.
    pub kube: Option<KubeEnv>,
    /// Where tailscaled keeps its state.
    pub state: StateStore,
    /// `TS_USERSPACE`: userspace networking (default `true`).
    pub userspace: bool,
    /// `TS_ACCEPT_DNS`: `None` when unset or empty.
    pub accept_dns: Option<bool>,
    /// `TS_SOCKS5_SERVER`: SOCKS5 listen address.
    pub socks5_server: Option<String>,
    /// `TS_OUTBOUND_HTTP_PROXY_LISTEN`: HTTP proxy listen address.
    pub http_proxy_listen: Option<String>,
    /// `TS_SOCKET`: tailscaled's LocalAPI socket (default [`DEFAULT_TS_SOCKET`]).
    pub socket: PathBuf,
    /// `TS_AUTH_ONCE`: log in only when not logged in yet (default `false`).
    pub auth_once: bool,
    /// `EXPERIMENTAL_TS_CONFIGFILE_PATH`: tailscaled config file.
    pub config_file: Option<PathBuf>,
    /// `TS_SERVE_CONFIG`: the serve config file, applied once Running and
    /// re-applied when it changes (`machine/serve.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_config: Option<PathBuf>,
    /// `TS_TRACE_FILE`: where SIGUSR1 writes the state trace.
    pub trace_file: PathBuf,
    /// `TS_TRACE_STEPS`: how many steps the trace keeps.
    pub trace_steps: usize,
    /// `TS_BOOT_TIMEOUT`: how long tailscaled has from start to Running.
    pub boot_timeout_ms: u64,
    /// `TS_SHUTDOWN_GRACE`: how long tailscaled has between SIGTERM and
    /// SIGKILL.
    pub shutdown_grace_ms: u64,
    /// `TS_DEBUG_FIREWALL_MODE`: which netfilter backend (kernel mode).
    pub firewall: FirewallMode,
    /// `TS_FIREWALL_RECHECK`: how often the proxy rules are read back and
    /// repaired once Running; 0 for never.
    pub firewall_recheck_ms: u64,
    /// Test knobs.
    pub test: TestHooks,
}

impl Settings {
    /// Reads the settings from `source`. Returns every problem found, not
    /// just the first.
    pub fn read(source: &impl Source) -> Result<Settings, ConfigErrors> {
        read::read(source, Vec::new())
    }

    /// Reads the settings from variables alone (no file can be read).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigErrors> {
        Settings::read(&Lookup(lookup))
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

    /// The secret tailscaled keeps its state in, if any: the one place that
    /// says whether there is Kubernetes work at all.
    pub fn kube_state_secret(&self) -> Option<&str> {
        match &self.state {
            StateStore::KubeSecret { secret, .. } => Some(secret),
            _ => None,
        }
    }

    /// Whether the node proxies.
    pub fn wants_proxy(&self) -> bool {
        self.proxy.ingress.is_some() || self.proxy.egress.is_some()
    }

    /// `TS_TAILNET_TARGET_FQDN`, if that is the egress target.
    pub fn egress_fqdn(&self) -> Option<&str> {
        match &self.proxy.egress {
            Some(EgressTarget::Fqdn(f)) => Some(f),
            _ => None,
        }
    }

    /// `TS_TAILNET_TARGET_IP`, if that is the egress target.
    pub fn egress_ip(&self) -> Option<IpAddr> {
        match self.proxy.egress {
            Some(EgressTarget::Ip(ip)) => Some(ip),
            _ => None,
        }
    }
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
    /// A problem with `variable`.
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
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

#[cfg(test)]
mod tests;
