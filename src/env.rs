//! The process environment and the files it names, as a settings
//! [`Source`]: the only reader of either.

use crate::settings::{ConfigError, ConfigErrors, Settings, Source, VARIABLES};
use std::path::Path;

/// The process environment; files from the filesystem.
struct Process;

impl Source for Process {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).and_then(|v| v.into_string().ok())
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        crate::exec::fs::read_capped_text(path).map_err(|e| e.to_string())
    }
}

/// Reads the settings from the process environment. A known variable whose
/// value is not valid UTF-8 is reported as an error and otherwise treated
/// as unset.
pub fn settings() -> Result<Settings, ConfigErrors> {
    let mut errors = Vec::new();
    for &(name, _) in VARIABLES {
        if let Some(v) = std::env::var_os(name)
            && v.to_str().is_none()
        {
            errors.push(ConfigError::new(
                name,
                format!("{name} is not valid UTF-8: give it a UTF-8 value or unset it"),
            ));
        }
    }
    match (Settings::read(&Process), errors.is_empty()) {
        (Ok(s), true) => Ok(s),
        (Ok(_), false) => Err(ConfigErrors(errors)),
        (Err(ConfigErrors(more)), _) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}
