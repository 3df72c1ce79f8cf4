//! The Kubernetes calls the core asks for and what comes back (docs/protocols.md
//! §4). Pure data: the client in `crate::kube` carries the calls out.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A secret verb checked by SelfSubjectAccessReview.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    /// `get`: required.
    Get,
    /// `update`: required.
    Update,
    /// `patch`: decides whether containerboot writes to the secret.
    Patch,
}

impl Verb {
    /// The verb as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Update => "update",
            Verb::Patch => "patch",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is stored in the secret about this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `device_id`: the self node's `StableID`.
    pub id: String,
    /// `device_fqdn`: the self node's `Name`, as received.
    pub fqdn: String,
    /// `device_ips`: the self node's addresses without prefix length.
    pub ips: Vec<IpAddr>,
}

impl DeviceInfo {
    /// Upstream rewrites the device info only when this pair changes.
    pub fn key(&self) -> (&str, &str) {
        (&self.id, &self.fqdn)
    }
}

/// Where the client connects and for which secret: everything the
/// executor needs to set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeTarget {
    /// `KUBERNETES_SERVICE_HOST`.
    pub host: String,
    /// `KUBERNETES_SERVICE_PORT_HTTPS` (or its fallbacks).
    pub port: u16,
    /// The root the service-account directory is under (`TS_TEST_ONLY_ROOT`).
    pub root: std::path::PathBuf,
    /// `TS_KUBE_SECRET`.
    pub secret: String,
    /// `TS_KUBE_TIMEOUT`, per request.
    pub timeout_ms: u64,
}

/// One call to the Kubernetes API, on the secret `TS_KUBE_SECRET`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KubeCall {
    /// Read the service-account files and set up the client.
    Connect {
        /// The API server and secret.
        target: KubeTarget,
    },
    /// `POST selfsubjectaccessreviews` for this verb on the secret.
    CheckPermission {
        /// `get`, `update` or `patch`.
        verb: Verb,
    },
    /// `GET` the secret for its `authkey`.
    ReadAuthKey,
    /// `GET` the secret before writing device info (4xx: not ours).
    ProbeSecret,
    /// Strategic-merge `PATCH` of the device info.
    StoreDeviceInfo {
        /// What to store.
        info: DeviceInfo,
    },
    /// JSON `PATCH` removing `authkey` (422: already gone).
    RemoveAuthKey,
    /// Strategic-merge `PATCH` of `https_endpoint`: the value, or `None`
    /// to remove the key (`null`).
    StoreHttpsEndpoint {
        /// The cert domain, `no-https`, or `None` to remove it.
        endpoint: Option<String>,
    },
}

impl KubeCall {
    /// What the call does, for log lines: names the operation.
    pub fn describe(&self) -> String {
        match self {
            KubeCall::Connect { .. } => "setting up the Kubernetes client".into(),
            KubeCall::CheckPermission { verb } => format!("checking {verb} permission"),
            KubeCall::ReadAuthKey => "reading the auth key from the secret".into(),
            KubeCall::ProbeSecret => "reading the secret before storing device info".into(),
            KubeCall::StoreDeviceInfo { .. } => "storing device info in the secret".into(),
            KubeCall::RemoveAuthKey => "deleting the auth key from the secret".into(),
            KubeCall::StoreHttpsEndpoint { endpoint: Some(_) } => {
                "storing https_endpoint in the secret".into()
            }
            KubeCall::StoreHttpsEndpoint { endpoint: None } => {
                "removing https_endpoint from the secret".into()
            }
        }
    }
}

/// Why a call failed, as the core needs to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Worth retrying: connection refused or reset, timeout, 429, 5xx.
    Transient,
    /// Retrying will not help: 401 after re-reading the token, 403, other
    /// 4xx, a malformed answer, TLS or set-up errors.
    Permanent,
}

/// What a call came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KubeReply {
    /// `Connect` succeeded.
    Connected {
        /// The namespace from the service-account files.
        namespace: String,
        /// The API server URL.
        server: String,
    },
    /// A SelfSubjectAccessReview answer.
    Allowed {
        /// Whether the verb is allowed.
        allowed: bool,
    },
    /// The secret was read.
    Secret {
        /// Its non-empty `authkey`, if any.
        authkey: Option<Secret>,
    },
    /// A patch was applied (or, for `RemoveAuthKey`, the key was already gone).
    Done,
    /// The API answered with an error status that is neither transient nor
    /// a token problem: 403, 404, 422, other 4xx.
    Status {
        /// The HTTP status.
        code: u16,
        /// The `Status` message, or the body.
        message: String,
    },
    /// The call failed.
    Failed {
        /// Whether to retry.
        kind: FailureKind,
        /// What happened, naming namespace, secret and operation.
        error: String,
    },
}
