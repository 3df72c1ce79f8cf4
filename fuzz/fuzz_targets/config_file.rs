//! The tailscaled config file (HuJSON) → settings: any text as the file
//! `EXPERIMENTAL_TS_CONFIGFILE_PATH` names, read by the settings reader.
//!
//! Checks: no panic (deep nesting included); a refused file is one error
//! naming the variable and the file.
#![no_main]

use containerboot::settings::{Settings, Source};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const PATH: &str = "/etc/tailscaled/config.hujson";

struct One<'a>(&'a str);

impl Source for One<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (name == "EXPERIMENTAL_TS_CONFIGFILE_PATH").then(|| PATH.to_string())
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        assert_eq!(path, Path::new(PATH), "a file nobody named was read");
        Ok(self.0.to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Settings::read(&One(text)) {
        Ok(s) => assert_eq!(s.config_file.as_deref(), Some(Path::new(PATH))),
        Err(errors) => {
            assert_eq!(errors.0.len(), 1, "{errors}");
            let e = &errors.0[0];
            assert_eq!(e.variable, "EXPERIMENTAL_TS_CONFIGFILE_PATH", "{errors}");
            assert!(
                e.message.contains(PATH),
                "the error does not name the file: {errors}"
            );
        }
    }
});
