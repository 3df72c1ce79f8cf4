//! The cross-variable rules (upstream's `settings.validate()`), then the
//! capabilities this version does not have yet.

use super::config_file::check_config_text;
use super::kube::is_dns_name;
use super::{ConfigError, Settings};

/// What the reader saw that typed settings no longer show.
pub(super) struct Seen {
    /// Which auth key variable was used.
    pub auth_key_var: Option<&'static str>,
    /// The proxy variables set, in table order.
    pub proxy_vars: Vec<&'static str>,
    /// The config file's text, or why it could not be read.
    pub config_text: Option<Result<String, String>>,
}

/// Upstream's `settings.validate()` rules, then the capabilities this
/// version does not have yet.
pub(super) fn validate(s: &Settings, seen: &Seen, errs: &mut Vec<ConfigError>) {
    if let (Some(path), Some(text)) = (&s.config_file, &seen.config_text)
        && let Err(why) = text
            .as_deref()
            .map_err(|e| format!("cannot read the file: {e}"))
            .and_then(check_config_text)
    {
        errs.push(ConfigError::new(
            "EXPERIMENTAL_TS_CONFIGFILE_PATH",
            format!(
                "error validating tailscaled configfile contents: EXPERIMENTAL_TS_CONFIGFILE_PATH={:?}: {why}",
                path.display().to_string()
            ),
        ));
    }

    if s.userspace {
        for &name in &seen.proxy_vars {
            errs.push(ConfigError::new(
                name,
                format!(
                    "{name} is not supported with TS_USERSPACE: set TS_USERSPACE=false \
                     (kernel networking) to proxy, or unset {name}"
                ),
            ));
        }
    }
    if s.serve_config.is_some() && s.proxy.ingress.is_some() {
        errs.push(ConfigError::new(
            "TS_SERVE_CONFIG",
            "TS_SERVE_CONFIG cannot be used with TS_DEST_IP: unset one of them \
             (TS_DEST_IP forwards all tailnet traffic to one address; a serve config \
             chooses per port)",
        ));
    }
    if seen.proxy_vars.contains(&"TS_TAILNET_TARGET_IP")
        && seen.proxy_vars.contains(&"TS_TAILNET_TARGET_FQDN")
    {
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
        if let Some(var) = seen.auth_key_var {
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

    if let Some(secret) = s.kube_state_secret()
        && !is_dns_name(secret)
    {
        errs.push(ConfigError::new(
            "TS_KUBE_SECRET",
            format!(
                "TS_KUBE_SECRET={:?} is not a Kubernetes secret name: use lower-case letters, digits, '-' and '.' \
                 (at most 253 characters), or set TS_KUBE_SECRET=\"\" to keep state on disk in TS_STATE_DIR",
                secret
            ),
        ));
    }
}
