//! The tailscaled config file, checked before tailscaled is started.

use super::CONFIGFILE_VERSION;

/// Checks that the tailscaled config file's text is HuJSON (JSON with
/// comments and trailing commas), an object, and has `"Version": "alpha0"`.
/// The error says what is wrong.
pub fn check_config_text(text: &str) -> Result<(), String> {
    let options = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let value = jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &options)
        .map_err(|e| format!("not valid HuJSON (JSON with comments and trailing commas): {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("the file must hold a JSON object".to_string());
    };
    match map.get("Version") {
        Some(serde_json::Value::String(v)) if v == CONFIGFILE_VERSION => Ok(()),
        Some(other) => Err(format!(
            "unsupported \"Version\" {other}: want \"{CONFIGFILE_VERSION}\""
        )),
        None => Err(format!(
            "no \"Version\" field: want \"Version\": \"{CONFIGFILE_VERSION}\""
        )),
    }
}
