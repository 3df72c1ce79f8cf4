//! A small parser with the semantics of Go's `flag` package, which both
//! `tailscaled` and the `tailscale` CLI use: `-name`, `--name`,
//! `--name=value`, `--name value` (non-bool flags only), parsing stops at the
//! first non-flag argument or after `--`.

use std::fmt;

/// Whether a flag takes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `--name` alone means true; `--name=false` is allowed.
    Bool,
    /// `--name=value` or `--name value`.
    Value,
}

/// Flags seen, in order, and the arguments left after the flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// (name, value) pairs; bool flags have `"true"` or `"false"`.
    pub values: Vec<(String, String)>,
    /// The arguments after the last flag.
    pub rest: Vec<String>,
}

impl Parsed {
    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why parsing stopped, with Go's wording in `Display`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FlagError {
    /// `-h` or `-help` was given and is not defined.
    Help,
    /// A flag that is not defined.
    Undefined(String),
    /// A value flag at the end of the arguments.
    NeedsArgument(String),
    /// A bool flag with a value that is not a bool.
    BadBool { name: String, value: String },
    /// `---x` or `-=x`.
    BadSyntax(String),
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagError::Help => f.write_str("flag: help requested"),
            FlagError::Undefined(name) => write!(f, "flag provided but not defined: -{name}"),
            FlagError::NeedsArgument(name) => write!(f, "flag needs an argument: -{name}"),
            FlagError::BadBool { name, value } => {
                write!(
                    f,
                    "invalid boolean value {value:?} for -{name}: parse error"
                )
            }
            FlagError::BadSyntax(arg) => write!(f, "bad flag syntax: {arg}"),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses `args` against `defs` the way Go's `flag.FlagSet.Parse` does.
pub(crate) fn parse(defs: &[(&str, Kind)], args: &[String]) -> Result<Parsed, FlagError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let mut body = &arg[1..];
        if let Some(b) = body.strip_prefix('-') {
            if b.is_empty() {
                // "--" ends the flags and is consumed.
                i += 1;
                break;
            }
            body = b;
        }
        if body.starts_with('-') || body.starts_with('=') {
            return Err(FlagError::BadSyntax(arg.clone()));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(_, kind)) = defs.iter().find(|(n, _)| *n == name) else {
            if name == "h" || name == "help" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Undefined(name.to_string()));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match parse_bool(v) {
                Some(b) => b.to_string(),
                None => {
                    return Err(FlagError::BadBool {
                        name: name.to_string(),
                        value: v.to_string(),
                    });
                }
            },
            (Kind::Value, Some(v)) => v.to_string(),
            (Kind::Value, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(FlagError::NeedsArgument(name.to_string())),
            },
        };
        out.values.push((name.to_string(), value));
    }
    out.rest = args[i..].to_vec();
    Ok(out)
}

/// Parses a Go `time.Duration` string such as `30s`, `1m30s`, `250ms`.
pub(crate) fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &[(&str, Kind)] = &[("socket", Kind::Value), ("reset", Kind::Bool)];

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_forms() {
        let p = parse(
            DEFS,
            &strs(&["--socket=/a", "-reset", "--socket", "/b", "up", "-x"]),
        )
        .unwrap();
        assert_eq!(p.get("socket"), Some("/b"));
        assert_eq!(p.get("reset"), Some("true"));
        assert_eq!(p.rest, strs(&["up", "-x"]));
        let p = parse(DEFS, &strs(&["--reset=false", "--", "-y"])).unwrap();
        assert_eq!(p.get("reset"), Some("false"));
        assert_eq!(p.rest, strs(&["-y"]));
    }

    #[test]
    fn errors_read_like_go() {
        let e = parse(DEFS, &strs(&["--bogus=1"])).unwrap_err();
        assert_eq!(e.to_string(), "flag provided but not defined: -bogus");
        let e = parse(DEFS, &strs(&["--socket"])).unwrap_err();
        assert_eq!(e.to_string(), "flag needs an argument: -socket");
        let e = parse(DEFS, &strs(&["--reset=maybe"])).unwrap_err();
        assert!(matches!(e, FlagError::BadBool { .. }));
        assert_eq!(parse(DEFS, &strs(&["-h"])).unwrap_err(), FlagError::Help);
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("1m30s"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("250ms"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("abc"), None);
    }
}
