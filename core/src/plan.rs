//! `containerboot check`: what a start with this configuration would do,
//! built from the same pure functions the machine uses, without starting
//! anything.

use crate::machine::{self, Arg, argv, rules};
use crate::settings::{AuthMode, Settings};
use serde::Serialize;
use std::net::IpAddr;

/// Everything a start would do, in order.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// `always-auth`, `auth-once` or `config-file`.
    pub auth_mode: &'static str,
    /// Kernel-mode preparation, if any.
    pub kernel: Option<Kernel>,
    /// The tailscaled command line.
    pub tailscaled: Vec<String>,
    /// The socket waited for (with inotify on its directory).
    pub socket: String,
    /// The symlink made for the CLI, if any.
    pub socket_symlink: Option<String>,
    /// CLI runs, each with when it happens.
    pub cli: Vec<CliStep>,
    /// Netfilter mode and rule templates.
    pub netfilter: Netfilter,
    /// Kubernetes actions.
    pub kubernetes: Vec<String>,
    /// Files watched while running.
    pub watched: Vec<String>,
    /// Where SIGUSR1 writes the trace, and how many steps it keeps.
    pub trace: String,
    /// Every variable containerboot reads, with what it is for (the one
    /// table the reader asks from: nothing else is read).
    pub variables: Vec<Variable>,
}

/// One variable containerboot reads.
#[derive(Debug, Serialize)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// What it is for.
    pub about: &'static str,
}

/// Kernel-mode preparation.
#[derive(Debug, Serialize)]
pub struct Kernel {
    /// The tun device created when missing.
    pub tun: String,
    /// Sysctl files set to 1 unless already 1.
    pub forwarding: Vec<String>,
}

/// One CLI run.
#[derive(Debug, Serialize)]
pub struct CliStep {
    /// When it runs.
    pub when: &'static str,
    /// The command line, secrets redacted.
    pub argv: Vec<String>,
}

/// Netfilter plans.
#[derive(Debug, Serialize)]
pub struct Netfilter {
    /// `none`, `fake (logged, not installed)` or `iptables`.
    pub mode: &'static str,
    /// Rules installed whenever this node's tailnet addresses change, with
    /// `<tailnet-ip>` for this node's address of the destination's family.
    pub rules: Vec<String>,
    /// With `auto`: what it chooses on this host and why (filled in by the
    /// binary, which can look at the host; the plan itself cannot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_choice: Option<String>,
}

const LOCAL: &str = "<tailnet-ip>";

fn rule_lines(
    build: fn(IpAddr, &[ipnetwork::IpNetwork]) -> Result<Vec<rules::Rule>, String>,
    dst: IpAddr,
) -> Vec<String> {
    let placeholder: IpAddr = if dst.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    };
    let local = ipnetwork::IpNetwork::from(placeholder);
    let placeholder = placeholder.to_string();
    build(dst, &[local])
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.iptables_argv()
                .into_iter()
                .map(|t| {
                    if t == placeholder {
                        LOCAL.to_string()
                    } else {
                        t
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The plan for `s`.
pub fn plan(s: &Settings) -> Plan {
    let redact = |a: Vec<Arg>| a.iter().map(Arg::redacted).collect::<Vec<_>>();
    let cli = match s.auth_mode() {
        AuthMode::AlwaysAuth => vec![CliStep {
            when: "once the IPN bus is watched, on every start",
            argv: redact(argv::up(s, s.auth_key.as_ref())),
        }],
        AuthMode::AuthOnce => vec![
            CliStep {
                when: "only if tailscaled reports NeedsLogin",
                argv: redact(argv::up(s, s.auth_key.as_ref())),
            },
            CliStep {
                when: "once tailscaled reports Running",
                argv: redact(argv::set(s)),
            },
        ],
        AuthMode::ConfigFile => Vec::new(),
    };
    let kernel = (!s.userspace).then(|| {
        let (v4, v6) = machine::forwarding_families(s);
        let mut forwarding = Vec::new();
        if v4 {
            forwarding.push(s.test.root.join("proc/sys/net/ipv4/ip_forward"));
        }
        if v6 {
            forwarding.push(s.test.root.join("proc/sys/net/ipv6/conf/all/forwarding"));
        }
        Kernel {
            tun: s.test.root.join("dev/net/tun").display().to_string(),
            forwarding: forwarding.iter().map(|p| p.display().to_string()).collect(),
        }
    });
    let mut rule_plan = Vec::new();
    if let Some(dst) = s.proxy.ingress {
        rule_plan.extend(rule_lines(rules::ingress, dst));
    }
    if let Some(dst) = s.egress_ip() {
        rule_plan.extend(rule_lines(rules::egress, dst));
    }
    if let Some(fqdn) = s.egress_fqdn() {
        rule_plan.push(format!(
            "for each address of the peer named {fqdn} (of a family this node has an address of): the egress rules for it (DNAT, SNAT, MSS clamp)"
        ));
    }
    if s.wants_proxy() {
        rule_plan.push(if s.firewall_recheck_ms == 0 {
            "read back and repaired on every netmap (TS_FIREWALL_RECHECK=0: no periodic check)"
                .to_string()
        } else {
            format!(
                "read back and repaired on every netmap and every {} s (TS_FIREWALL_RECHECK)",
                s.firewall_recheck_ms / 1000
            )
        });
    }
    let mode = if !s.wants_proxy() {
        "none"
    } else if s.test.fake_netfilter {
        "fake (logged, not installed)"
    } else {
        match s.firewall {
            crate::settings::FirewallMode::Iptables => "iptables (TS_DEBUG_FIREWALL_MODE)",
            crate::settings::FirewallMode::Nftables => "nftables (TS_DEBUG_FIREWALL_MODE)",
            crate::settings::FirewallMode::Auto => {
                "auto: nftables or iptables, whichever already holds the host's rules, decided at start (TS_DEBUG_FIREWALL_MODE)"
            }
        }
    };
    let symlink = (s.socket != std::path::Path::new(machine::CLI_SOCKET_LINK)).then(|| {
        format!(
            "{} -> {}",
            machine::under_root(&s.test.root, machine::CLI_SOCKET_LINK).display(),
            s.socket.display()
        )
    });
    let kubernetes = if let (Some(kube), Some(secret)) = (&s.kube, s.kube_state_secret()) {
        let api = crate::settings::kube::server_url(&kube.host, kube.port);
        let sa = machine::under_root(&s.test.root, crate::settings::kube::SERVICE_ACCOUNT_DIR);
        let mut k = vec![
            format!(
                "API server {api}, trusting only {}/ca.crt, token and namespace from {}",
                sa.display(),
                sa.display()
            ),
            format!(
                "check get, update (required) and patch permission on secret {:?} (SelfSubjectAccessReview)",
                secret
            ),
        ];
        if s.auth_key.is_none() && s.auth_mode() != AuthMode::ConfigFile {
            k.push("read authkey from the secret (needs patch permission)".into());
        }
        k.push(format!(
            "tailscaled keeps its state in the secret (--state=kube:{secret})"
        ));
        k.push(
            "with patch permission: store device_id, device_fqdn, device_ips once Running".into(),
        );
        if s.auth_mode() == AuthMode::AuthOnce {
            k.push(
                "with patch permission: remove authkey from the secret after 'tailscale set'"
                    .into(),
            );
        }
        if s.serve_config.is_some() {
            k.push(format!(
                "with patch permission: https_endpoint = the certificate domain while the applied serve config serves HTTPS ({} while the tailnet has no certificate domain), removed otherwise",
                machine::serve::NO_HTTPS
            ));
        }
        k
    } else if s.kube.is_some() {
        vec!["none: TS_KUBE_SECRET is empty, state is kept per TS_STATE_DIR".to_string()]
    } else {
        vec!["none: not in Kubernetes (KUBERNETES_SERVICE_HOST is unset)".to_string()]
    };
    Plan {
        auth_mode: match s.auth_mode() {
            AuthMode::AlwaysAuth => "always-auth",
            AuthMode::AuthOnce => "auth-once",
            AuthMode::ConfigFile => "config-file",
        },
        kernel,
        tailscaled: argv::tailscaled(s),
        socket: s.socket.display().to_string(),
        socket_symlink: symlink,
        cli,
        netfilter: Netfilter {
            mode,
            rules: rule_plan,
            auto_choice: None,
        },
        kubernetes,
        watched: std::iter::once(format!(
            "the directory of {} until the socket appears (inotify)",
            s.socket.display()
        ))
        .chain(s.serve_config.as_ref().map(|p| {
            format!(
                "the directory of {} once Running (inotify): the serve config, applied with {} replaced by the tailnet's certificate domain",
                p.display(),
                machine::serve::CERT_DOMAIN_PLACEHOLDER
            )
        }))
        .chain(s.config_file.as_ref().map(|p| {
            format!(
                "the directory of {} once Running (inotify): the tailscaled config file; a change that validates is sent as POST /localapi/v0/reload-config",
                p.display()
            )
        }))
        .chain(std::iter::once(
            "if inotify's limits are reached (fs.inotify.max_user_instances, fs.inotify.max_user_watches): said once, then files are read every 10 s and the socket looked for every 200 ms".to_string(),
        ))
        .collect(),
        trace: format!(
            "SIGUSR1 writes the last {} steps to {}",
            s.trace_steps,
            s.trace_file.display()
        ),
        variables: crate::settings::VARIABLES
            .iter()
            .map(|&(name, about)| Variable { name, about })
            .collect(),
    }
}

impl Plan {
    /// The plan for people.
    pub fn to_text(&self) -> String {
        let mut o = String::from("configuration is valid; a start would:\n");
        if let Some(k) = &self.kernel {
            o.push_str(&format!("1. kernel mode: create {} if missing", k.tun));
            if !k.forwarding.is_empty() {
                o.push_str(&format!("; set {} to 1", k.forwarding.join(" and ")));
            }
            o.push('\n');
        } else {
            o.push_str("1. userspace networking: no kernel preparation\n");
        }
        o.push_str(&format!("2. start: {}\n", self.tailscaled.join(" ")));
        o.push_str(&format!("3. wait for {} (inotify)", self.socket));
        if let Some(l) = &self.socket_symlink {
            o.push_str(&format!(", then symlink {l}"));
        }
        o.push('\n');
        o.push_str(&format!("4. auth mode {}:", self.auth_mode));
        if self.cli.is_empty() {
            o.push_str(" no CLI runs; tailscaled logs in from its config file\n");
        } else {
            o.push('\n');
            for c in &self.cli {
                o.push_str(&format!("   {}: {}\n", c.when, c.argv.join(" ")));
            }
        }
        o.push_str(&format!("5. netfilter: {}\n", self.netfilter.mode));
        if let Some(c) = &self.netfilter.auto_choice {
            o.push_str(&format!("   on this host now: {c}\n"));
        }
        for r in &self.netfilter.rules {
            o.push_str(&format!("   {r}\n"));
        }
        o.push_str(&format!("6. kubernetes: {}\n", self.kubernetes.join("; ")));
        o.push_str(&format!("7. watched: {}\n", self.watched.join("; ")));
        o.push_str(&format!("8. trace: {}\n", self.trace));
        let names: Vec<&str> = self.variables.iter().map(|v| v.name).collect();
        o.push_str(&format!(
            "variables read (unset ones take their defaults; `check --json` says what each is for): {}\n",
            names.join(" ")
        ));
        o
    }
}
