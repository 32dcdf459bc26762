//! The effective configuration as TOML a user could reuse: what `berth
//! check-config` prints. Every field is written, defaults and environment
//! overrides included, in the forms the file takes (durations as "30s",
//! sizes as "256MiB"); a password appears only as where it comes from
//! (`password_env`, `password_file`), never itself.
//!
//! The configuration structs derive `Serialize` with the helpers here, so a
//! field added to them is printed without anyone remembering to; a unit
//! test reads the output back and compares it with what was printed.

use std::time::Duration;

use serde::Serializer;

use super::Config;

impl Config {
    /// The configuration as a TOML document that `Config::from_toml` reads
    /// back to the same configuration.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot write the configuration as TOML: {e}"))
    }
}

/// A duration as the file writes it: "30s", "5m", "1h 30m".
pub fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

pub fn optional_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => duration(value, serializer),
        None => serializer.serialize_none(),
    }
}

pub fn url<S: Serializer>(value: &reqwest::Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_str())
}

pub fn optional_url<S: Serializer>(
    value: &Option<reqwest::Url>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => serializer.serialize_str(url.as_str()),
        None => serializer.serialize_none(),
    }
}

/// A size as the file writes it: the largest binary unit that divides it
/// ("256MiB", "64KiB"), else bytes ("1000B").
pub fn size<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&size_text(*value))
}

pub fn optional_size<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => size(value, serializer),
        None => serializer.serialize_none(),
    }
}

fn size_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    UNITS
        .iter()
        .find(|(_, unit)| bytes != 0 && bytes.is_multiple_of(*unit))
        .map_or_else(
            || format!("{bytes}B"),
            |(name, unit)| format!("{}{name}", bytes / unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints `config`, reads the print back, and checks both are the same
    /// configuration (as far as `Debug` tells, which shows every field).
    fn round_trip(config: &Config) -> String {
        let text = config.to_toml().expect("printable");
        let back = Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("the printed configuration is refused: {e}\n{text}"));
        assert_eq!(format!("{back:?}"), format!("{config:?}"), "{text}");
        text
    }

    #[test]
    fn the_defaults_print_as_reusable_toml() {
        let text = round_trip(&Config::default());
        assert!(text.contains("listen = \"127.0.0.1:5000\""), "{text}");
        assert!(text.contains("[[upstream]]"), "{text}");
        assert!(
            text.contains("url = \"https://registry-1.docker.io/\""),
            "{text}"
        );
        assert!(text.contains("tag_ttl = \"5m\""), "{text}");
        assert!(text.contains("hot_size = \"256MiB\""), "{text}");
        assert!(!text.contains("Url {"), "no debug dump: {text}");
    }

    #[test]
    fn every_kind_of_field_prints_and_secrets_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = dir.path().join("password");
        std::fs::write(&password, "hunter2\n").expect("write the password");
        let text = format!(
            r#"
            listen = "0.0.0.0:5001"
            admin_listen = "127.0.0.1:9090"
            offline = true
            [[upstream]]
            name = "a.example"
            url = "https://a.example:5000"
            aliases = ["a"]
            username = "bot"
            password_file = "{}"
            max_stale = "1h 30m"
            allow = ["org/**"]
            deny = ["org/secret"]
            [[upstream]]
            name = "b.example"
            url = "http://b.example"
            default = true
            username = "other"
            password_env = "PATH"
            [cache]
            hot_size = "1000B"
            [storage]
            max_size = "50GiB"
            [limits]
            max_fills = 7
            [auth]
            realm = "site"
            "#,
            password.display()
        );
        let config = Config::from_toml(&text).expect("valid");
        let printed = round_trip(&config);
        assert!(!printed.contains("hunter2"), "{printed}");
        let path_value = std::env::var("PATH").unwrap_or_default();
        assert!(!printed.contains(&path_value), "{printed}");
        assert!(printed.contains("password_env = \"PATH\""), "{printed}");
        assert!(printed.contains("max_size = \"50GiB\""), "{printed}");
    }

    #[test]
    fn sizes_use_the_largest_unit_that_divides_them() {
        assert_eq!(size_text(256 << 20), "256MiB");
        assert_eq!(size_text(1536), "1536B");
        assert_eq!(size_text(3 << 10), "3KiB");
        assert_eq!(size_text(1000), "1000B");
        assert_eq!(size_text(0), "0B");
    }
}
