//! The process environment and the files it names, as a settings
//! [`Source`]: the only reader of either.

use crate::settings::{ConfigError, ConfigErrors, Settings, Source, VARIABLES};
use std::ffi::OsString;
use std::path::Path;

/// Variables as raw bytes and files by path: the process environment and
/// the filesystem in the product, anything in the fuzz target.
struct Raw<'a> {
    var: &'a dyn Fn(&str) -> Option<OsString>,
    file: &'a dyn Fn(&Path) -> Result<String, String>,
}

impl Source for Raw<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.var)(name).and_then(|v| v.into_string().ok())
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        (self.file)(path)
    }
}

/// Reads the settings from the process environment. A known variable whose
/// value is not valid UTF-8 is reported as an error and otherwise treated
/// as unset.
pub fn settings() -> Result<Settings, ConfigErrors> {
    settings_from(&|name| std::env::var_os(name), &|path| {
        crate::exec::fs::read_capped_text(path).map_err(|e| e.to_string())
    })
}

/// [`settings`] from the variables `var` gives (any bytes) and the files
/// `file` reads.
pub fn settings_from(
    var: &dyn Fn(&str) -> Option<OsString>,
    file: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<Settings, ConfigErrors> {
    let mut errors = Vec::new();
    for &(name, _) in VARIABLES {
        if let Some(v) = var(name)
            && v.to_str().is_none()
        {
            errors.push(ConfigError::new(
                name,
                format!("{name} is not valid UTF-8: give it a UTF-8 value or unset it"),
            ));
        }
    }
    match (Settings::read(&Raw { var, file }), errors.is_empty()) {
        (Ok(s), true) => Ok(s),
        (Ok(_), false) => Err(ConfigErrors(errors)),
        (Err(ConfigErrors(more)), _) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}
