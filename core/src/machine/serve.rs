//! The serve config (`TS_SERVE_CONFIG`) as a value, like `kube_session.rs`:
//! the file's contents and the netmaps' cert domain in, `SetServeConfig`
//! commands out, one at a time, failures retried with a capped backoff.
//!
//! Upstream's flow: once Running, clear any serve config an earlier run
//! left (`{}`); once a netmap has said whether the tailnet has a
//! certificate domain, apply the file's config with every
//! `${TS_CERT_DOMAIN}` replaced; re-apply when the cert domain or the
//! file's content changes, never re-posting a config equal to the last
//! applied. The core reads no file: the shell's watch sends the bytes.
//! Bad input (missing, unreadable, empty, invalid JSON) is logged once,
//! naming the file, and the last good config stays applied.

use super::command::{Command, Level};
use super::ctx::{Backoff, Ctx, Deadline};
use serde_json::Value;
use std::path::PathBuf;

/// First wait before repeating a failed serve-config call; doubles per failure.
pub const SERVE_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between serve-config attempts.
pub const SERVE_RETRY_CAP_MS: u64 = 30_000;
/// Replaced by the tailnet's certificate domain everywhere in the config.
pub const CERT_DOMAIN_PLACEHOLDER: &str = "${TS_CERT_DOMAIN}";
/// `https_endpoint` when the config serves HTTPS but the tailnet has no
/// certificate domain (upstream's `kubetypes.ValueNoHTTPS`, which the
/// Kubernetes operator reads as "no endpoint").
pub const NO_HTTPS: &str = "no-https";

/// The file's text as a serve config: a JSON object, kept whole (fields
/// this version does not know are passed on as they are). The error names
/// the line and column serde_json reports.
pub fn parse_config(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Err("the file is empty: it must hold a JSON object (an ipn.ServeConfig)".into());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("the file must hold a JSON object (an ipn.ServeConfig)".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// Whether the config serves HTTPS (`TCP[port].HTTPS`), which needs the
/// tailnet's certificate domain.
pub fn uses_https(config: &Value) -> bool {
    config
        .get("TCP")
        .and_then(Value::as_object)
        .is_some_and(|ports| {
            ports
                .values()
                .any(|p| p.get("HTTPS").and_then(Value::as_bool) == Some(true))
        })
}

/// Whether any string (key or value) names `${TS_CERT_DOMAIN}`.
pub fn mentions_cert_domain(config: &Value) -> bool {
    match config {
        Value::String(s) => s.contains(CERT_DOMAIN_PLACEHOLDER),
        Value::Array(a) => a.iter().any(mentions_cert_domain),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains(CERT_DOMAIN_PLACEHOLDER) || mentions_cert_domain(v)),
        _ => false,
    }
}

/// `config` with `${TS_CERT_DOMAIN}` replaced by `domain` in every string,
/// keys included (upstream replaces it in the file's bytes; `Web` keys are
/// `host:port`). Numbers, booleans and unknown fields are kept as they are.
pub fn substitute(config: &Value, domain: &str) -> Value {
    match config {
        Value::String(s) => Value::String(s.replace(CERT_DOMAIN_PLACEHOLDER, domain)),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, domain)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    (
                        k.replace(CERT_DOMAIN_PLACEHOLDER, domain),
                        substitute(v, domain),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The kind of a `TCP` port handler, as tailscaled names it
/// (`serveTypeFromPortHandler`): tailscaled refuses a new config that
/// changes the kind of a port the current one serves.
fn port_kind(handler: &Value) -> &'static str {
    let set = |k: &str| match handler.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    };
    if set("HTTP") {
        "http"
    } else if set("HTTPS") {
        "https"
    } else if set("TerminateTLS") {
        "tls-terminated-tcp"
    } else if set("TCPForward") {
        "tcp"
    } else {
        "unknown"
    }
}

/// When `want` changes the kind of ports `applied` serves (a TCP forward
/// becoming HTTP, …), which tailscaled refuses in place ("want to serve
/// \"http\", but port 80 is already serving \"tcp\""): `applied` without
/// those ports, to post first, and the changes for the log. Looks at `TCP`
/// and at each `Services[name].TCP`, as tailscaled does.
pub fn without_changed_kinds(applied: &Value, want: &Value) -> Option<(Value, Vec<String>)> {
    let mut step = applied.clone();
    let mut changes = Vec::new();
    let mut drop_changed = |step_tcp: Option<&mut Value>, want_tcp: Option<&Value>, label: &str| {
        let (Some(Value::Object(step_tcp)), Some(Value::Object(want_tcp))) = (step_tcp, want_tcp)
        else {
            return;
        };
        for (port, handler) in want_tcp {
            if let Some(was) = step_tcp.get(port) {
                let (from, to) = (port_kind(was), port_kind(handler));
                if from != to {
                    step_tcp.remove(port);
                    changes.push(format!("{label}{port} ({from} to {to})"));
                }
            }
        }
    };
    drop_changed(step.get_mut("TCP"), want.get("TCP"), "port ");
    if let (Some(Value::Object(services)), Some(want_services)) =
        (step.get_mut("Services"), want.get("Services"))
    {
        for (name, service) in services.iter_mut() {
            drop_changed(
                service.get_mut("TCP"),
                want_services.get(name).and_then(|s| s.get("TCP")),
                &format!("{name} port "),
            );
        }
    }
    (!changes.is_empty()).then_some((step, changes))
}

/// The serve-config session (only when `TS_SERVE_CONFIG` is set).
#[derive(Debug)]
pub struct ServeSession {
    /// `TS_SERVE_CONFIG`, for the watch and the log.
    path: PathBuf,
    /// `TS_SOCKET`, for the executor.
    socket: PathBuf,
    /// Running was reached: the watch and the clear were started.
    started: bool,
    /// The clear of an earlier run's config succeeded.
    cleared: bool,
    /// The config posted and not answered yet.
    in_flight: Option<Value>,
    /// What is in flight is the step that removes ports changing kind
    /// (see [`without_changed_kinds`]), not the file's config.
    stepping: bool,
    /// The cert domain substituted into the config in flight.
    in_flight_domain: Option<String>,
    /// `https_endpoint` for the state secret (upstream's key): the cert
    /// domain while an applied config serves HTTPS, `no-https` while one
    /// is skipped for want of a cert domain, `Some(None)` (removed) while
    /// nothing applied serves HTTPS; `None` before the clear is done.
    endpoint: Option<Option<String>>,
    /// A failed post waits for `ServeRetry`.
    retrying: bool,
    backoff: Backoff,
    /// The last call failure logged, so a failure repeating on every retry
    /// (a config tailscaled refuses) is logged once.
    set_error: Option<String>,
    /// The file's last good config, as written.
    file: Option<Value>,
    /// The last error logged about the file, so a burst logs it once.
    file_error: Option<String>,
    /// A netmap has arrived (so the cert domain, or its absence, is known).
    netmap_seen: bool,
    /// `DNS.CertDomains[0]` of the latest netmap.
    cert_domain: Option<String>,
    /// The config tailscaled holds, as far as we know (after the clear: `{}`).
    applied: Option<Value>,
    /// The "no cert domain" line was logged for the current file and domain.
    https_skip_logged: bool,
}

impl ServeSession {
    /// A session for the file at `path`, talking to tailscaled at `socket`.
    pub fn new(path: PathBuf, socket: PathBuf) -> ServeSession {
        ServeSession {
            path,
            socket,
            started: false,
            cleared: false,
            in_flight: None,
            stepping: false,
            in_flight_domain: None,
            endpoint: None,
            retrying: false,
            backoff: Backoff::default(),
            set_error: None,
            file: None,
            file_error: None,
            netmap_seen: false,
            cert_domain: None,
            applied: None,
            https_skip_logged: false,
        }
    }

    /// Running: clear what an earlier run left and start watching the file.
    pub fn start(&mut self, context: &mut Ctx) {
        if self.started {
            return;
        }
        self.started = true;
        context.info(format!(
            "Clearing any serve config left by an earlier run; then applying {} and watching it for changes",
            self.path.display()
        ));
        context.emit(Command::WatchServeConfig {
            path: self.path.clone(),
        });
        self.post(context, Value::Object(Default::default()));
    }

    /// The file's bytes, as read after a change (or at the start).
    pub fn on_file(&mut self, context: &mut Ctx, content: &str) {
        match parse_config(content) {
            Ok(config) => {
                self.file_error = None;
                if self.file.as_ref() != Some(&config) {
                    self.file = Some(config);
                    self.https_skip_logged = false;
                }
                self.advance(context);
            }
            Err(e) => self.bad_file(context, e),
        }
    }

    /// The file could not be read (missing, unreadable).
    pub fn on_file_unreadable(&mut self, context: &mut Ctx, error: &str) {
        self.bad_file(context, format!("cannot read it: {error}"));
    }

    /// A netmap: its cert domain, if any.
    pub fn on_netmap(&mut self, context: &mut Ctx, cert_domain: Option<&str>) {
        let changed = !self.netmap_seen || self.cert_domain.as_deref() != cert_domain;
        self.netmap_seen = true;
        if changed {
            self.cert_domain = cert_domain.map(str::to_string);
            self.https_skip_logged = false;
            self.advance(context);
        }
    }

    /// The answer to the `SetServeConfig` in flight.
    pub fn on_set(&mut self, context: &mut Ctx, error: Option<&str>) {
        let Some(config) = self.in_flight.take() else {
            context.ignore("no serve config was being set");
            return;
        };
        match error {
            None => {
                self.backoff.reset();
                self.set_error = None;
                let domain = self.in_flight_domain.take();
                if std::mem::take(&mut self.stepping) {
                    // The endpoint follows the file's config, posted next.
                    context.ignore("the ports changing kind are removed; the new config is next");
                } else if self.cleared {
                    context.info(format!("Applied serve config from {}", self.path.display()));
                    self.endpoint = Some(domain.filter(|_| uses_https(&config)));
                } else {
                    self.cleared = true;
                    self.endpoint = Some(None);
                }
                self.applied = Some(config);
                self.advance(context);
            }
            Some(e) => {
                self.stepping = false;
                let wait = self.backoff.next(SERVE_RETRY_FIRST_MS, SERVE_RETRY_CAP_MS);
                let what = if self.cleared {
                    "applying the serve config"
                } else {
                    "clearing the serve config of an earlier run"
                };
                if self.set_error.as_deref() == Some(e) {
                    context.ignore(format!(
                        "{what} failed again as logged; retrying in {wait} ms"
                    ));
                } else {
                    context.log(
                        Level::Warn,
                        format!("{what} failed: {e}; retrying in {wait} ms (the same failure again is not logged)"),
                    );
                    self.set_error = Some(e.to_string());
                }
                self.retrying = true;
                context.arm(Deadline::ServeRetry, wait);
            }
        }
    }

    /// `ServeRetry` fired: repeat what failed, with the latest file and domain.
    pub fn retry_due(&mut self, context: &mut Ctx) {
        if !self.retrying {
            return;
        }
        self.retrying = false;
        if self.cleared {
            self.advance(context);
        } else {
            self.post(context, Value::Object(Default::default()));
        }
    }

    fn bad_file(&mut self, context: &mut Ctx, why: String) {
        let kept = if self.file.is_some() {
            "the last good config stays applied"
        } else {
            "nothing is applied until it is fixed"
        };
        let message = format!(
            "serve config {}: {why} ({kept}; fix the file and it is applied)",
            self.path.display()
        );
        if self.file_error.as_ref() == Some(&message) {
            context.ignore("the same problem with the serve config file, logged before");
            return;
        }
        context.log(Level::Error, message.clone());
        self.file_error = Some(message);
    }

    /// The config to have applied now, if one can be.
    fn desired(&mut self, context: &mut Ctx) -> Option<Value> {
        if !self.cleared || !self.netmap_seen {
            return None;
        }
        let file = self.file.as_ref()?;
        match &self.cert_domain {
            Some(domain) => Some(substitute(file, domain)),
            None if uses_https(file) || mentions_cert_domain(file) => {
                if uses_https(file) {
                    self.endpoint = Some(Some(NO_HTTPS.to_string()));
                }
                if !self.https_skip_logged {
                    self.https_skip_logged = true;
                    context.log(
                        Level::Warn,
                        format!(
                            "serve config {} serves HTTPS or names {CERT_DOMAIN_PLACEHOLDER}, but this tailnet has no certificate domain: not applied. Enable HTTPS for the tailnet (admin console, DNS page: MagicDNS and HTTPS Certificates); the config is applied as soon as a netmap carries a certificate domain",
                            self.path.display()
                        ),
                    );
                }
                None
            }
            None => Some(file.clone()),
        }
    }

    /// Posts the desired config unless a call is out, a retry waits, or
    /// it equals what tailscaled holds.
    fn advance(&mut self, context: &mut Ctx) {
        if !self.started || self.in_flight.is_some() || self.retrying {
            return;
        }
        if let Some(want) = self.desired(context)
            && self.applied.as_ref() != Some(&want)
        {
            if let Some((step, changes)) = self
                .applied
                .as_ref()
                .and_then(|applied| without_changed_kinds(applied, &want))
            {
                context.info(format!(
                    "Serve config from {} changes what is served on {}: tailscaled changes no port's kind in place, so these ports are removed first, then the new config is applied",
                    self.path.display(),
                    changes.join(", ")
                ));
                self.stepping = true;
                self.post(context, step);
                return;
            }
            context.info(format!(
                "Applying serve config from {}",
                self.path.display()
            ));
            self.post(context, want);
        }
    }

    /// What `https_endpoint` in the state secret should hold: `Some(value)`
    /// to write, `None` to remove; outer `None` before the session has a say.
    pub fn https_endpoint(&self) -> Option<Option<String>> {
        self.endpoint.clone()
    }

    fn post(&mut self, context: &mut Ctx, config: Value) {
        self.in_flight = Some(config.clone());
        self.in_flight_domain = self.cert_domain.clone();
        context.emit(Command::SetServeConfig {
            socket: self.socket.clone(),
            config,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> (ServeSession, Ctx) {
        (
            ServeSession::new("/etc/ts/serve.json".into(), "/run/ts.sock".into()),
            Ctx::default(),
        )
    }

    /// The configs posted by `commands`, in order.
    fn posts(c: &mut Ctx) -> Vec<Value> {
        std::mem::take(&mut c.commands)
            .into_iter()
            .filter_map(|c| match c {
                Command::SetServeConfig { config, .. } => Some(config),
                _ => None,
            })
            .collect()
    }

    fn logs(c: &Ctx, level: Level) -> Vec<String> {
        c.commands
            .iter()
            .filter_map(|c| match c {
                Command::Log { level: l, message } if *l == level => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    const HTTPS: &str = r#"{"TCP":{"443":{"HTTPS":true}},"Web":{"${TS_CERT_DOMAIN}:443":{"Handlers":{"/":{"Proxy":"http://127.0.0.1:8080"}}}},"Future":{"x":1}}"#;

    #[test]
    fn clears_then_applies_with_the_cert_domain_substituted() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        assert!(
            c.commands
                .iter()
                .any(|c| matches!(c, Command::WatchServeConfig { .. }))
        );
        assert_eq!(posts(&mut c), [json!({})]);
        s.on_file(&mut c, HTTPS);
        assert!(posts(&mut c).is_empty(), "nothing until the clear is done");
        s.on_set(&mut c, None);
        assert!(posts(&mut c).is_empty(), "nothing until a netmap");
        s.on_netmap(&mut c, Some("node.tailnet.ts.net"));
        let applied = posts(&mut c);
        assert_eq!(
            applied,
            [
                json!({"TCP":{"443":{"HTTPS":true}},"Web":{"node.tailnet.ts.net:443":{"Handlers":{"/":{"Proxy":"http://127.0.0.1:8080"}}}},"Future":{"x":1}})
            ]
        );
        s.on_set(&mut c, None);
        // The same domain again, the same content again: nothing.
        s.on_netmap(&mut c, Some("node.tailnet.ts.net"));
        s.on_file(&mut c, &format!("{HTTPS}\n"));
        assert!(posts(&mut c).is_empty());
        // A new domain: re-applied.
        s.on_netmap(&mut c, Some("other.ts.net"));
        assert_eq!(posts(&mut c).len(), 1);
    }

    #[test]
    fn without_a_cert_domain_https_is_skipped_with_one_line_and_plain_tcp_applied() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        s.on_set(&mut c, None);
        s.on_file(&mut c, HTTPS);
        posts(&mut c);
        s.on_netmap(&mut c, None);
        s.on_netmap(&mut c, None);
        s.on_file(&mut c, HTTPS);
        assert_eq!(logs(&c, Level::Warn).len(), 1, "{:?}", c.commands);
        assert!(logs(&c, Level::Warn)[0].contains("no certificate domain"));
        assert!(posts(&mut c).is_empty());
        let tcp = r#"{"TCP":{"22":{"TCPForward":"127.0.0.1:22"}}}"#;
        s.on_file(&mut c, tcp);
        assert_eq!(
            posts(&mut c),
            [json!({"TCP":{"22":{"TCPForward":"127.0.0.1:22"}}})]
        );
    }

    #[test]
    fn bad_input_keeps_the_last_good_config_and_logs_once() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        s.on_set(&mut c, None);
        s.on_netmap(&mut c, Some("d.ts.net"));
        s.on_file(&mut c, r#"{"TCP":{}}"#);
        assert_eq!(posts(&mut c), [json!({}), json!({"TCP":{}})]);
        s.on_set(&mut c, None);
        c.commands.clear();
        s.on_file(&mut c, "{\n  \"TCP\": {\n}");
        s.on_file(&mut c, "{\n  \"TCP\": {\n}");
        let errors = logs(&c, Level::Error);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("/etc/ts/serve.json") && errors[0].contains("line 3 column 1"),
            "{}",
            errors[0]
        );
        s.on_file_unreadable(&mut c, "No such file or directory");
        s.on_file(&mut c, "  ");
        assert_eq!(logs(&c, Level::Error).len(), 3);
        assert!(posts(&mut c).is_empty());
        s.on_file(&mut c, r#"{"TCP":{"80":{"HTTP":true}}}"#);
        assert_eq!(posts(&mut c), [json!({"TCP":{"80":{"HTTP":true}}})]);
    }

    #[test]
    fn failures_are_retried_with_backoff_and_the_latest_config() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        posts(&mut c);
        s.on_set(&mut c, Some("connection refused"));
        assert!(c.timers.is_armed(Deadline::ServeRetry));
        s.retry_due(&mut c);
        s.on_set(&mut c, Some("connection refused"));
        assert_eq!(
            logs(&c, Level::Warn).len(),
            1,
            "the same failure is logged once"
        );
        posts(&mut c);
        s.retry_due(&mut c);
        assert_eq!(posts(&mut c), [json!({})], "the clear is repeated");
        s.on_set(&mut c, None);
        s.on_netmap(&mut c, Some("d.ts.net"));
        s.on_file(&mut c, r#"{"A":1}"#);
        assert_eq!(posts(&mut c), [json!({"A":1})]);
        s.on_set(&mut c, Some("412 four times"));
        s.on_file(&mut c, r#"{"A":2}"#);
        assert!(posts(&mut c).is_empty(), "waits for the retry");
        s.retry_due(&mut c);
        assert_eq!(posts(&mut c), [json!({"A":2})]);
        s.on_set(&mut c, None);
        s.on_file(&mut c, r#"{"A":2}"#);
        assert!(posts(&mut c).is_empty());
    }

    #[test]
    fn an_empty_file_config_equal_to_the_clear_is_not_posted_again() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        s.on_set(&mut c, None);
        s.on_netmap(&mut c, None);
        posts(&mut c);
        s.on_file(&mut c, "{}");
        assert!(posts(&mut c).is_empty());
    }

    #[test]
    fn a_port_changing_kind_is_removed_first_then_the_new_config_applied() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        s.on_set(&mut c, None);
        s.on_netmap(&mut c, None);
        let tcp = r#"{"TCP":{"80":{"TCPForward":"127.0.0.1:8080"},"22":{"TCPForward":"127.0.0.1:22"}},"Services":{"svc:a":{"TCP":{"443":{"HTTPS":true},"5432":{"TCPForward":"db:5432"}}}}}"#;
        s.on_file(&mut c, tcp);
        posts(&mut c);
        s.on_set(&mut c, None);
        c.commands.clear();
        // Port 80 becomes HTTP, 22 keeps its kind with another target, and
        // the service's 443 becomes a TCP forward.
        let next = json!({
            "TCP": {"80": {"HTTP": true}, "22": {"TCPForward": "127.0.0.1:2222"}},
            "Web": {"node.example:80": {"Handlers": {"/": {"Text": "hi"}}}},
            "Services": {"svc:a": {"TCP": {"443": {"TCPForward": "127.0.0.1:443"}, "5432": {"TCPForward": "db:5432"}}}}
        });
        s.on_file(&mut c, &next.to_string());
        let info = logs(&c, Level::Info);
        assert!(
            info.iter().any(|l| l.contains("port 80 (tcp to http)")
                && l.contains("svc:a port 443 (https to tcp)")
                && !l.contains("port 22")),
            "{info:?}"
        );
        assert_eq!(
            posts(&mut c),
            [json!({
                "TCP": {"22": {"TCPForward": "127.0.0.1:22"}},
                "Services": {"svc:a": {"TCP": {"5432": {"TCPForward": "db:5432"}}}}
            })],
            "the old config without the ports changing kind"
        );
        s.on_set(&mut c, None);
        assert_eq!(posts(&mut c), std::slice::from_ref(&next));
        s.on_set(&mut c, None);
        assert_eq!(
            c.commands
                .iter()
                .filter(|c| matches!(c, Command::Log { message, .. } if message.starts_with("Applied serve config")))
                .count(),
            1,
            "the step is not reported as an apply: {:?}",
            c.commands
        );
        // Nothing more to do.
        s.on_file(&mut c, &next.to_string());
        assert!(posts(&mut c).is_empty());
    }

    #[test]
    fn kinds_as_tailscaled_names_them() {
        for (handler, kind) in [
            (json!({"HTTP": true}), "http"),
            (json!({"HTTPS": true}), "https"),
            (
                json!({"TCPForward": "a:1", "TerminateTLS": "n.ts.net"}),
                "tls-terminated-tcp",
            ),
            (json!({"TCPForward": "a:1"}), "tcp"),
            (json!({"HTTP": false, "TCPForward": ""}), "unknown"),
        ] {
            assert_eq!(port_kind(&handler), kind, "{handler}");
        }
        let same = json!({"TCP": {"1": {"TCPForward": "a:1"}}});
        assert!(
            without_changed_kinds(&same, &json!({"TCP": {"1": {"TCPForward": "b:2"}}})).is_none()
        );
        assert!(without_changed_kinds(&same, &json!({"TCP": {"2": {"HTTP": true}}})).is_none());
        assert!(without_changed_kinds(&json!({}), &same).is_none());
    }

    #[test]
    fn parse_errors_name_line_and_column() {
        let e = parse_config("{\"a\": 1,\n \"b\" 2}").unwrap_err();
        assert!(e.contains("line 2 column 6"), "{e}");
        assert!(parse_config("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_config("").unwrap_err().contains("empty"));
    }
}
