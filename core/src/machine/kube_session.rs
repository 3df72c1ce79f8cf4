//! The Kubernetes secret session as a value: permission checks and the
//! auth key while booting; auth-key removal and device-info writes once
//! running; one call at a time, transient failures retried with a capped,
//! jittered backoff. It takes replies and returns what they mean; the
//! states only map those answers to transitions.

use super::command::{Command, Level};
use super::ctx::{Backoff, Ctx, Deadline, jitter};
use super::kube::{DeviceInfo, FailureKind, KubeCall, KubeReply, KubeTarget, Verb};
use crate::secret::Secret;

/// First wait before repeating a failed Kubernetes call; doubles per failure.
pub const KUBE_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between Kubernetes attempts while booting.
pub const KUBE_RETRY_CAP_BOOT_MS: u64 = 4_000;
/// Longest wait between Kubernetes attempts once Running.
pub const KUBE_RETRY_CAP_RUNNING_MS: u64 = 30_000;

/// What a reply during the boot checks means for the machine.
#[derive(Debug, PartialEq)]
pub enum BootCheck {
    /// Nothing yet: the next call is under way or will be retried.
    Pending,
    /// The client is set up: the boot deadline starts now.
    Connected,
    /// The checks are done: start tailscaled, with the auth key found in
    /// the secret, if any.
    Ready {
        /// `authkey` from the secret.
        auth_key: Option<Secret>,
    },
    /// Exit: the reason, for the log.
    Fatal(String),
}

/// The session with the secret `TS_KUBE_SECRET` (only when there is one).
#[derive(Debug)]
pub struct KubeSession {
    target: KubeTarget,
    secret: String,
    /// Whether to read `authkey` from the secret once permissions are known.
    read_authkey: bool,
    /// From the service-account files, once connected.
    namespace: String,
    /// Whether `patch` on the secret is allowed.
    can_patch: bool,
    /// Required verbs found missing.
    missing: Vec<Verb>,
    /// The one call in flight (calls are made one at a time).
    in_flight: Option<KubeCall>,
    /// The call to repeat when `KubeRetry` fires.
    retry: Option<KubeCall>,
    backoff: Backoff,
    /// Failed attempts of the current call.
    failures: u32,
    /// The last logged failure, so a retry storm logs once.
    last_error: Option<String>,
    /// `authkey` still has to be removed (auth-once).
    remove_authkey: bool,
    /// The device info of the latest netmap.
    latest: Option<DeviceInfo>,
    /// The (id, name) pair last stored, or found not ours to store.
    stored: Option<(String, String)>,
    /// `https_endpoint` as the serve config wants it (`Some(None)`: the
    /// key removed); `None` until the serve session has a say.
    https_want: Option<Option<String>>,
    /// `https_endpoint` as last written (or found impossible to write).
    https_stored: Option<Option<String>>,
}

impl KubeSession {
    /// A session on `secret`; `read_authkey` when neither `TS_AUTHKEY` nor
    /// a config file gives the key.
    pub fn new(target: KubeTarget, read_authkey: bool) -> KubeSession {
        KubeSession {
            secret: target.secret.clone(),
            target,
            read_authkey,
            namespace: String::new(),
            can_patch: false,
            missing: Vec::new(),
            in_flight: None,
            retry: None,
            backoff: Backoff::default(),
            failures: 0,
            last_error: None,
            remove_authkey: false,
            latest: None,
            stored: None,
            https_want: None,
            https_stored: None,
        }
    }

    /// Begins: set up the client.
    pub fn connect(&mut self, cx: &mut Ctx) {
        let target = self.target.clone();
        self.issue(cx, KubeCall::Connect { target });
    }

    /// Whether containerboot writes to the secret (patch is allowed).
    pub fn writes(&self) -> bool {
        self.can_patch
    }

    /// Whether every write that startup waits for has been made.
    pub fn settled(&self) -> bool {
        !self.remove_authkey && self.stored.is_some()
    }

    /// What the session is doing, for a boot timeout: the call and the
    /// last error.
    pub fn doing(&self) -> String {
        let doing = self
            .retry
            .as_ref()
            .or(self.in_flight.as_ref())
            .map(|c| c.describe())
            .unwrap_or_else(|| "Kubernetes API calls".into());
        match &self.last_error {
            Some(e) => format!("{doing}; last error: {e}"),
            None => doing,
        }
    }

    /// `KubeRetry` fired: repeat the failed call.
    pub fn retry_due(&mut self, cx: &mut Ctx) {
        if let Some(call) = self.retry.take() {
            self.issue(cx, call);
        }
    }

    /// A reply while booting.
    pub fn on_boot_reply(&mut self, cx: &mut Ctx, call: &KubeCall, reply: &KubeReply) -> BootCheck {
        let Some(reply) = self.settle(cx, call, reply) else {
            return BootCheck::Pending;
        };
        let secret = self.secret.clone();
        match (call, reply) {
            (KubeCall::Connect { .. }, KubeReply::Connected { namespace, server }) => {
                cx.info(format!(
                    "Kubernetes API server {server}, namespace {namespace:?}, secret {secret:?}"
                ));
                self.namespace = namespace;
                self.issue(cx, KubeCall::CheckPermission { verb: Verb::Get });
                BootCheck::Connected
            }
            (KubeCall::Connect { .. }, reply) => BootCheck::Fatal(format!(
                "Error creating kube client: {} (in Kubernetes, state is kept in the secret TS_KUBE_SECRET={secret:?}: give the pod its service account token, or set TS_KUBE_SECRET=\"\" and TS_STATE_DIR to keep state on disk)",
                self.text(call, &reply)
            )),
            (KubeCall::CheckPermission { verb }, KubeReply::Allowed { allowed }) => {
                match verb {
                    Verb::Patch => self.can_patch = allowed,
                    _ if !allowed => self.missing.push(*verb),
                    _ => {}
                }
                self.after_permission(cx, *verb)
            }
            (KubeCall::CheckPermission { verb }, reply @ KubeReply::Status { .. }) => {
                // Upstream: an error checking a verb is logged, not fatal.
                cx.log(
                    Level::Warn,
                    format!(
                        "error checking {verb} permission on secret {secret}: {}",
                        self.text(call, &reply)
                    ),
                );
                if *verb == Verb::Patch {
                    self.can_patch = false;
                }
                self.after_permission(cx, *verb)
            }
            // Unlike upstream (which logs every error here), a 401 that
            // survived a token re-read, a TLS failure or a malformed answer
            // is fatal: every later call would fail the same way.
            (KubeCall::CheckPermission { .. }, reply) => BootCheck::Fatal(format!(
                "Some Kubernetes permissions could not be checked: {}",
                self.text(call, &reply)
            )),
            (KubeCall::ReadAuthKey, KubeReply::Secret { authkey: Some(key) }) => {
                // Pulling keys from the secret came with the patch
                // permission, so the key can be removed after login and no
                // reusable key is left lying around.
                if !self.can_patch {
                    return BootCheck::Fatal("authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey.".into());
                }
                cx.info("Using authkey found in kube secret");
                BootCheck::Ready {
                    auth_key: Some(key),
                }
            }
            (KubeCall::ReadAuthKey, KubeReply::Secret { authkey: None }) => {
                cx.info("No authkey found in kube secret and TS_AUTHKEY not provided, login will be interactive if needed.");
                BootCheck::Ready { auth_key: None }
            }
            (KubeCall::ReadAuthKey, KubeReply::Status { code: 404, .. }) => {
                BootCheck::Fatal(format!(
                    "Getting authkey from kube secret: secret {secret:?} not found in namespace {:?}: create it (it may be empty; tailscaled keeps its state there) or set TS_KUBE_SECRET to the name of an existing secret",
                    self.namespace
                ))
            }
            (KubeCall::ReadAuthKey, reply) => BootCheck::Fatal(format!(
                "Getting authkey from kube secret: {}",
                self.text(call, &reply)
            )),
            _ => {
                cx.ignore("Kubernetes reply not expected while checking");
                BootCheck::Pending
            }
        }
    }

    /// The permission check for `verb` is done: the next check, the auth
    /// key, or ready.
    fn after_permission(&mut self, cx: &mut Ctx, verb: Verb) -> BootCheck {
        match verb {
            Verb::Get => {
                self.issue(cx, KubeCall::CheckPermission { verb: Verb::Update });
                BootCheck::Pending
            }
            Verb::Update if !self.missing.is_empty() => {
                let missing: Vec<String> = self
                    .missing
                    .iter()
                    .map(|v| {
                        format!(
                            "missing {v} permission on secret {:?} in namespace {:?}",
                            self.secret, self.namespace
                        )
                    })
                    .collect();
                BootCheck::Fatal(format!(
                    "Some Kubernetes permissions are missing, please check your RBAC configuration: {}",
                    missing.join("; ")
                ))
            }
            Verb::Update => {
                self.issue(cx, KubeCall::CheckPermission { verb: Verb::Patch });
                BootCheck::Pending
            }
            Verb::Patch if self.read_authkey => {
                self.issue(cx, KubeCall::ReadAuthKey);
                BootCheck::Pending
            }
            Verb::Patch => BootCheck::Ready { auth_key: None },
        }
    }

    /// A reply once running: `Ok(true)` when a write that startup may
    /// wait for has ended, `Err` when the run must end.
    pub fn on_running_reply(
        &mut self,
        cx: &mut Ctx,
        call: &KubeCall,
        reply: &KubeReply,
    ) -> Result<bool, String> {
        let Some(reply) = self.settle(cx, call, reply) else {
            return Ok(false);
        };
        match (call, reply) {
            (KubeCall::RemoveAuthKey, KubeReply::Done) => {
                self.remove_authkey = false;
            }
            (KubeCall::RemoveAuthKey, reply) => {
                return Err(format!(
                    "deleting authkey from kube secret: {}",
                    self.text(call, &reply)
                ));
            }
            (KubeCall::ProbeSecret, KubeReply::Secret { .. }) => {
                // A probe is only made with device info in hand.
                if let Some(info) = self.latest.clone() {
                    self.issue(cx, KubeCall::StoreDeviceInfo { info });
                }
                return Ok(false);
            }
            (
                KubeCall::ProbeSecret,
                reply @ KubeReply::Status {
                    code: 400..=499, ..
                },
            ) => {
                // Upstream: a 4xx means the secret is not ours to write.
                cx.info(format!(
                    "Not storing device info: {}",
                    self.text(call, &reply)
                ));
                self.stored = self.latest.as_ref().map(|l| (l.id.clone(), l.fqdn.clone()));
            }
            (KubeCall::StoreDeviceInfo { info }, KubeReply::Done) => {
                self.stored = Some((info.id.clone(), info.fqdn.clone()));
            }
            (KubeCall::StoreHttpsEndpoint { endpoint }, KubeReply::Done) => {
                self.https_stored = Some(endpoint.clone());
            }
            (KubeCall::StoreHttpsEndpoint { endpoint }, reply) => {
                // Unlike upstream (log.Fatalf), a refused write of this
                // informational key does not end the run: it is logged and
                // not tried again until the value changes.
                cx.log(
                    Level::Warn,
                    format!(
                        "{}: {} (the serve config stays applied; tried again when the endpoint changes)",
                        call.describe(),
                        self.text(call, &reply)
                    ),
                );
                self.https_stored = Some(endpoint.clone());
            }
            (KubeCall::ProbeSecret | KubeCall::StoreDeviceInfo { .. }, reply) => {
                return Err(format!(
                    "storing device ID in kube secret: {}",
                    self.text(call, &reply)
                ));
            }
            _ => {
                cx.ignore("Kubernetes reply not expected while running");
                return Ok(false);
            }
        }
        self.next(cx);
        Ok(true)
    }

    /// Auth-once: `tailscale set` is done, the key goes.
    pub fn remove_authkey(&mut self, cx: &mut Ctx) {
        cx.info("Deleting authkey from kube secret");
        self.remove_authkey = true;
        self.next(cx);
    }

    /// The device info of a new netmap.
    pub fn device_info(&mut self, cx: &mut Ctx, info: DeviceInfo) {
        self.latest = Some(info);
        self.next(cx);
    }

    /// What `https_endpoint` should hold now (the serve session's answer):
    /// written (or removed) once nothing else is under way, unless it is
    /// what was last written.
    pub fn https_endpoint(&mut self, cx: &mut Ctx, want: Option<String>) {
        if self.https_want.as_ref() == Some(&want) {
            return;
        }
        self.https_want = Some(want);
        self.next(cx);
    }

    /// Starts the next write, if one is due and none is under way: the
    /// auth key removal, then device info whose (id, name) differs from
    /// what was last stored, then `https_endpoint`.
    fn next(&mut self, cx: &mut Ctx) {
        if self.in_flight.is_some() || self.retry.is_some() {
            return;
        }
        if self.remove_authkey {
            self.issue(cx, KubeCall::RemoveAuthKey);
            return;
        }
        let due = match (&self.latest, &self.stored) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(l), Some((id, fqdn))) => l.key() != (id.as_str(), fqdn.as_str()),
        };
        if due {
            self.issue(cx, KubeCall::ProbeSecret);
            return;
        }
        if let Some(want) = &self.https_want
            && self.https_stored.as_ref() != Some(want)
        {
            let endpoint = want.clone();
            self.issue(cx, KubeCall::StoreHttpsEndpoint { endpoint });
        }
    }

    fn issue(&mut self, cx: &mut Ctx, call: KubeCall) {
        // Device info is always the latest known when the call is made.
        let call = match (call, &self.latest) {
            (KubeCall::StoreDeviceInfo { .. }, Some(latest)) => KubeCall::StoreDeviceInfo {
                info: latest.clone(),
            },
            (call, _) => call,
        };
        self.in_flight = Some(call.clone());
        cx.emit(Command::Kube { call });
    }

    /// Takes a reply for the call in flight. A transient failure schedules
    /// a retry (logged once per distinct error, not per attempt) and gives
    /// `None`; anything else ends the episode and is returned.
    fn settle(&mut self, cx: &mut Ctx, call: &KubeCall, reply: &KubeReply) -> Option<KubeReply> {
        if self.in_flight.as_ref() != Some(call) {
            cx.ignore("reply to a Kubernetes call not in flight");
            return None;
        }
        self.in_flight = None;
        if let KubeReply::Failed {
            kind: FailureKind::Transient,
            error,
        } = reply
        {
            self.failures += 1;
            let cap = if cx.timers.is_armed(Deadline::Boot) {
                KUBE_RETRY_CAP_BOOT_MS
            } else {
                KUBE_RETRY_CAP_RUNNING_MS
            };
            let backoff = self.backoff.next(KUBE_RETRY_FIRST_MS, cap);
            let wait = backoff - jitter(cx.now_ms, backoff / 4);
            if self.last_error.as_deref() != Some(error.as_str()) {
                cx.log(
                    Level::Warn,
                    format!(
                        "Kubernetes API: {} failed: {error}; retrying in {wait} ms (same failures are not logged again)",
                        call.describe()
                    ),
                );
                self.last_error = Some(error.clone());
            } else {
                cx.ignore(format!(
                    "same failure as before (attempt {}); retrying in {wait} ms",
                    self.failures
                ));
            }
            self.retry = Some(call.clone());
            cx.arm(Deadline::KubeRetry, wait);
            return None;
        }
        if self.failures > 0 {
            cx.info(format!(
                "Kubernetes API: {} went through after {} failed attempts",
                call.describe(),
                self.failures
            ));
        }
        self.failures = 0;
        self.backoff.reset();
        self.last_error = None;
        Some(reply.clone())
    }

    /// A failure as a sentence naming the operation, secret and namespace.
    fn text(&self, call: &KubeCall, reply: &KubeReply) -> String {
        match reply {
            KubeReply::Failed { error, .. } => error.clone(),
            KubeReply::Status { code, message } => format!(
                "{} (secret {:?} in namespace {:?}): {code} {message}",
                call.describe(),
                self.secret,
                self.namespace
            ),
            other => format!("{}: unexpected answer {other:?}", call.describe()),
        }
    }
}
