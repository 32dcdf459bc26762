//! A field-by-field reader over a TOML table. Fields are removed as they are
//! read and every problem is collected, so that one pass reports every bad or
//! unknown field of a configuration, not just the first.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::FieldError;

/// A secret and where it came from (for the effective configuration,
/// which names the source, never the value).
#[derive(Debug, Default)]
pub struct SecretSource {
    pub value: Option<super::Secret>,
    pub env: Option<String>,
    pub file: Option<std::path::PathBuf>,
}

/// One table of the document being read. Fields are removed as they are
/// read; what is left at the end is unknown and reported as such.
pub struct Fields {
    path: String,
    table: toml::Table,
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn new(path: &str, table: toml::Table) -> Self {
        Fields {
            path: path.to_owned(),
            table,
            errors: Vec::new(),
        }
    }

    fn field_name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&mut self, key: &str, reason: impl Into<String>) {
        let field = self.field_name(key);
        self.errors.push(FieldError {
            field,
            reason: reason.into(),
        });
    }

    /// Whether `key` already has an error recorded.
    pub fn has_error(&self, key: &str) -> bool {
        let field = self.field_name(key);
        self.errors.iter().any(|e| e.field == field)
    }

    /// Whether the table has `key` (not yet read).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn take_raw(&mut self, key: &str) -> Option<toml::Value> {
        self.table.remove(key)
    }

    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.take_raw(key)?;
        match value.try_into::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(key, e.message().trim().to_owned());
                None
            }
        }
    }

    pub fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text: String = self.get(key)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(key, format!("{text:?} is not {what}: {reason}"));
                None
            }
        }
    }

    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        self.parsed(key, "a duration (e.g. \"30s\", \"5m\")", |s| {
            humantime::parse_duration(s).map_err(|e| e.to_string())
        })
    }

    pub fn positive_duration(&mut self, key: &str) -> Option<Duration> {
        let d = self.duration(key)?;
        if d.is_zero() {
            self.error(key, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    pub fn size(&mut self, key: &str) -> Option<u64> {
        self.parsed(key, "a size (e.g. \"64KiB\", \"256MiB\")", |s| {
            s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
        })
    }

    /// An http(s) URL with a host, or why `text` is not one.
    pub fn check_url(text: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
        match url.scheme() {
            "http" | "https" if url.host().is_some() => Ok(url),
            _ => Err("scheme must be http or https, with a host".to_owned()),
        }
    }

    /// A table found under `key` (an entry of a list, say), read on its
    /// own and named `<this>.<key>` in errors; `absorb` it when done.
    pub fn child(&self, key: &str, table: toml::Table) -> Fields {
        Fields::new(&self.field_name(key), table)
    }

    /// Whether any error was recorded here (or absorbed from a child).
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty() || !self.table.is_empty()
    }

    /// A secret named by `<base>_env` (an environment variable) or
    /// `<base>_file` (a file, its trailing newline dropped), never written
    /// in the configuration itself.
    pub fn secret(&mut self, base: &str) -> SecretSource {
        let (env_key, file_key) = (format!("{base}_env"), format!("{base}_file"));
        let from_env: Option<String> = self.get(&env_key);
        let from_file: Option<std::path::PathBuf> = self.get(&file_key);
        let mut source = SecretSource::default();
        match (from_env, from_file) {
            (Some(_), Some(_)) => {
                self.error(
                    &file_key,
                    format!("set either {env_key} or {file_key}, not both"),
                );
            }
            (Some(var), None) => match std::env::var(&var) {
                Ok(value) => {
                    source.value = Some(super::Secret::new(value));
                    source.env = Some(var);
                }
                Err(_) => self.error(&env_key, format!("environment variable {var} is not set")),
            },
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(value) => {
                    source.value = Some(super::Secret::new(value.trim_end_matches(['\r', '\n'])));
                    source.file = Some(path);
                }
                Err(e) => self.error(&file_key, format!("cannot read {}: {e}", path.display())),
            },
            (None, None) => {}
        }
        source
    }

    /// A nested table; a missing one is an empty one.
    pub fn section(&mut self, key: &str) -> Fields {
        let path = self.field_name(key);
        match self.take_raw(key) {
            Some(toml::Value::Table(table)) => Fields::new(&path, table),
            Some(_) => {
                self.error(key, "must be a table");
                Fields::new(&path, toml::Table::new())
            }
            None => Fields::new(&path, toml::Table::new()),
        }
    }

    /// An array of tables (`[[key]]`), each entry named by its `name` field
    /// when it has one (`upstream[ghcr.io]`), else by its position.
    pub fn tables(&mut self, key: &str) -> Option<Vec<Fields>> {
        let path = self.field_name(key);
        let value = self.take_raw(key)?;
        let toml::Value::Array(entries) = value else {
            self.error(key, format!("must be a list of tables, written [[{key}]]"));
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            match entry {
                toml::Value::Table(table) => {
                    let label = match table.get("name") {
                        Some(toml::Value::String(name)) => name.clone(),
                        _ => i.to_string(),
                    };
                    out.push(Fields::new(&format!("{path}[{label}]"), table));
                }
                _ => self.error(&format!("{key}[{i}]"), "must be a table"),
            }
        }
        Some(out)
    }

    pub fn absorb(&mut self, child: Fields) {
        self.errors.extend(child.finish());
    }

    pub fn finish(mut self) -> Vec<FieldError> {
        let unknown: Vec<String> = self.table.keys().cloned().collect();
        for key in unknown {
            self.error(&key, "unknown field");
        }
        self.errors
    }
}
