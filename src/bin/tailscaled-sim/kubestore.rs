//! `--state=kube:NAME`: the simulated daemon keeps its login in the
//! Kubernetes secret, as the real tailscaled's kube store does (keys
//! `_machinekey`, `_current-profile`, `_profiles`, `profile-…`; the profile
//! holds the prefs JSON). Found against tailscaled 1.102.5 on a real
//! kube-apiserver (tests/real/README.md).
//!
//! Differences kept on purpose: the real store reads the service-account
//! files only at `/var/run/secrets/kubernetes.io/serviceaccount` and needs
//! `TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV=true` to use
//! `KUBERNETES_SERVICE_HOST`; the simulator reads them under
//! `TS_TEST_ONLY_ROOT` and always uses the env, so tests need no mount
//! namespace. It writes with GET + PUT (update), as the real store does
//! without `patch` permission.

use super::daemon::Prefs;
use containerboot::kube::{KubeClient, Target};
use std::collections::BTreeMap;

/// The profile the simulator writes (one login, one profile).
const PROFILE: &str = "profile-5151";
/// A fixed, obviously simulated machine key.
const MACHINE_KEY: &str =
    "privkey:5151515151515151515151515151515151515151515151515151515151515151";

/// A connected store for one secret.
pub(crate) struct KubeStore {
    client: KubeClient,
}

/// What was saved: whether logged in, and the prefs.
pub(crate) struct Saved {
    pub logged_in: bool,
    pub prefs: Option<Prefs>,
}

impl KubeStore {
    /// Connects like the real store would, from the environment; `Err`
    /// says why the daemon falls back to memory.
    pub fn from_env(secret: &str) -> Result<KubeStore, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = var("KUBERNETES_SERVICE_HOST").ok_or("KUBERNETES_SERVICE_HOST is not set")?;
        let port = var("KUBERNETES_SERVICE_PORT_HTTPS")
            .or_else(|| var("KUBERNETES_SERVICE_PORT"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let client = KubeClient::connect_to(&Target {
            host,
            port,
            root: var("TS_TEST_ONLY_ROOT")
                .unwrap_or_else(|| "/".into())
                .into(),
            secret: secret.to_string(),
            timeout_ms: 5_000,
            user_agent: concat!("tailscaled-sim/", env!("CARGO_PKG_VERSION")).into(),
        })?;
        Ok(KubeStore { client })
    }

    /// What the secret remembers (nothing when it has no login).
    pub fn load(&self) -> Result<Saved, String> {
        let data = self.client.read_data()?.unwrap_or_default();
        let prefs = data
            .get("_current-profile")
            .and_then(|p| data.get(p))
            .and_then(|json| serde_json::from_str::<Prefs>(json).ok());
        Ok(Saved {
            logged_in: data.contains_key("_machinekey") && prefs.is_some(),
            prefs,
        })
    }

    /// Stores a login with these prefs.
    pub fn save(&self, prefs: &Prefs) -> Result<(), String> {
        let id = PROFILE.trim_start_matches("profile-");
        let profiles = serde_json::json!({ id: { "ID": id, "Key": PROFILE } });
        let prefs = serde_json::to_string(prefs).map_err(|e| e.to_string())?;
        let set = BTreeMap::from([
            ("_machinekey".to_string(), MACHINE_KEY.to_string()),
            ("_current-profile".to_string(), PROFILE.to_string()),
            ("_profiles".to_string(), profiles.to_string()),
            (PROFILE.to_string(), prefs),
        ]);
        self.client.write_data(&set)
    }
}
