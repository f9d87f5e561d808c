//! `plugin.json`: parsing, checking, and resolving a configuration against it.
//!
//! PostHog's server did no schema validation (only its web form did); pluginflow has no web
//! form, so it checks at load: a missing `required` value or a value outside `choices` fails the
//! load with an error naming the file, the field and the problem. Defaults apply to keys the
//! configuration leaves out. Secret values never appear in an error.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::event::json_kind;

/// A config field's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Free text (the default).
    String,
    /// A JSON document entered as text.
    Json,
    /// An uploaded file, exposed in `meta.attachments`.
    Attachment,
    /// One of `choices`.
    Choice,
}

/// One configurable field of `plugin.json`'s `config`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigField {
    /// The key plugins read from `meta.config`.
    pub key: String,
    /// Display name.
    pub name: Option<String>,
    /// Field type.
    pub field_type: FieldType,
    /// Default value, applied when the configuration leaves the key out.
    pub default: Option<String>,
    /// Help text.
    pub hint: Option<String>,
    /// Markdown shown with the field.
    pub markdown: Option<String>,
    /// Whether a value must be given (by the configuration or a default).
    pub required: bool,
    /// Whether the value is secret: it never appears in logs or errors.
    pub secret: bool,
    /// Allowed values of a `choice` field.
    pub choices: Vec<String>,
}

/// An entry of `plugin.json`'s `config` array: a field, or a markdown-only block.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigEntry {
    /// A configurable field.
    Field(ConfigField),
    /// A markdown block with no key; it carries no value.
    Markdown(String),
}

/// A parsed `plugin.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginManifest {
    /// Display name; the folder name when `plugin.json` has none.
    pub name: String,
    /// Repository URL (informational).
    pub url: Option<String>,
    /// Description (informational).
    pub description: Option<String>,
    /// Entry file, relative to the plugin folder.
    pub main: Option<String>,
    /// Config schema, in file order.
    pub config: Vec<ConfigEntry>,
}

/// A problem with `plugin.json` or with a configuration checked against it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ManifestError {
    /// The file (or configuration) at fault.
    pub file: String,
    /// Which field, as a path such as `config[2].choices`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn err(file: &Path, field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError { file: file.display().to_string(), field: field.into(), problem: problem.into() }
}

impl PluginManifest {
    /// Reads and checks `dir/plugin.json`. A missing file is allowed (PostHog's local plugins
    /// could omit it): the name falls back to the folder name and there is no config.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let file = dir.join("plugin.json");
        let fallback = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { name: fallback, url: None, description: None, main: None, config: vec![] });
            }
            Err(e) => return Err(err(&file, "(file)", format!("cannot read: {e}"))),
        };
        Self::parse(&file, &text, &fallback)
    }

    /// Parses `plugin.json` text; `file` is only used in errors.
    pub fn parse(file: &Path, text: &str, fallback_name: &str) -> Result<Self, ManifestError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err(file, format!("line {} column {}", e.line(), e.column()), format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err(file, "(root)", "expected a JSON object"));
        };
        let name = match optional_string(file, &obj, "name")? {
            Some(name) if !name.trim().is_empty() => name,
            _ => fallback_name.to_string(),
        };
        // The name appears in logs, `$plugins_*` labels and the summary: one printable line.
        if name.chars().any(char::is_control) || name.len() > 200 {
            return Err(err(file, "name", "must be one line of at most 200 bytes without control characters"));
        }
        Ok(Self {
            name,
            url: optional_string(file, &obj, "url")?,
            description: optional_string(file, &obj, "description")?,
            main: optional_string(file, &obj, "main")?,
            config: parse_config(file, obj.get("config"))?,
        })
    }

    /// The configurable fields (markdown blocks left out).
    pub fn fields(&self) -> impl Iterator<Item = &ConfigField> {
        self.config.iter().filter_map(|e| match e {
            ConfigEntry::Field(f) => Some(f),
            ConfigEntry::Markdown(_) => None,
        })
    }

    /// Keys whose values are secret.
    pub fn secret_keys(&self) -> Vec<String> {
        self.fields().filter(|f| f.secret).map(|f| f.key.clone()).collect()
    }

    /// Applies defaults and checks `values` (the configuration's `config`) against the schema:
    /// the first problem [`PluginManifest::config_problems`] would refuse is the error.
    /// `attachment_keys` are the attachment fields the configuration provides files for.
    /// `source` names the configuration in errors.
    pub fn resolve_config(
        &self,
        source: &str,
        values: &Map<String, Value>,
        attachment_keys: &[String],
    ) -> Result<Map<String, Value>, ManifestError> {
        match self.config_problems(values, attachment_keys).into_iter().find(|p| p.refused) {
            Some(p) => Err(err(Path::new(source), p.key, p.message)),
            None => Ok(self.fill_defaults(values)),
        }
    }

    /// `values` with the schema's defaults filled in and nothing checked: `pluginflow try`
    /// runs a plugin with what it was given, as jest would (see [`PluginManifest::config_problems`]).
    pub fn fill_defaults(&self, values: &Map<String, Value>) -> Map<String, Value> {
        let mut out = values.clone();
        for field in self.fields().filter(|f| f.field_type != FieldType::Attachment) {
            if let (false, Some(default)) = (out.get(&field.key).is_some_and(|v| !v.is_null()), &field.default) {
                out.insert(field.key.clone(), Value::String(default.clone()));
            }
        }
        out
    }

    /// Everything questionable about a configuration, as (key, problem): what
    /// [`PluginManifest::resolve_config`] refuses (a missing `required` value or attachment, a value
    /// outside `choices`; `refused` is true) and what it lets pass but is likely a typo (a
    /// config key or attachment key the schema does not have; the nearest known key is named).
    pub fn config_problems(&self, values: &Map<String, Value>, attachment_keys: &[String]) -> Vec<ConfigProblem> {
        let file = Path::new("");
        let mut out = Vec::new();
        let filled = self.fill_defaults(values);
        for field in self.fields() {
            let problem = if field.field_type == FieldType::Attachment {
                (field.required && !attachment_keys.contains(&field.key)).then(|| "required attachment is missing".to_string())
            } else if filled.get(&field.key).is_none_or(|v| v.is_null()) {
                field.required.then(|| "required value is missing (no default in plugin.json)".to_string())
            } else {
                check_choice(file, field, &filled[&field.key]).err().map(|e| e.problem)
            };
            if let Some(message) = problem {
                out.push(ConfigProblem { key: field.key.clone(), message, refused: true });
            }
        }
        let known = |attachment: bool| -> Vec<&str> {
            self.fields().filter(|f| (f.field_type == FieldType::Attachment) == attachment).map(|f| f.key.as_str()).collect()
        };
        let unknown = |key: &str, attachment: bool| {
            let keys = known(attachment);
            if keys.contains(&key) {
                return None;
            }
            let kind = if attachment { "attachment" } else { "config key" };
            let hint = keys.iter().filter(|k| edit_distance(k, key) <= 2).min_by_key(|k| edit_distance(k, key));
            Some(match hint {
                Some(k) => format!("unknown {kind} (plugin.json has no such field; did you mean '{k}'?)"),
                None => format!("unknown {kind} (plugin.json has no such field)"),
            })
        };
        for key in values.keys() {
            if let Some(message) = unknown(key, false) {
                out.push(ConfigProblem { key: key.clone(), message, refused: false });
            }
        }
        for key in attachment_keys {
            if let Some(message) = unknown(key, true) {
                out.push(ConfigProblem { key: key.clone(), message, refused: false });
            }
        }
        out
    }
}

/// One finding of [`PluginManifest::config_problems`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The config or attachment key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
    /// Whether `pluginflow run` refuses to start for it.
    pub refused: bool,
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn check_choice(file: &Path, field: &ConfigField, value: &Value) -> Result<(), ManifestError> {
    if field.field_type != FieldType::Choice {
        return Ok(());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if field.choices.contains(&text) {
        return Ok(());
    }
    let shown = if field.secret { "(secret)".to_string() } else { format!("'{text}'") };
    Err(err(file, &field.key, format!("value {shown} is not one of the choices {:?}", field.choices)))
}

fn optional_string(file: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ManifestError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(file, key, format!("expected a string, got {}", json_kind(other)))),
    }
}

/// `config` is an array of entries, or (legacy) an object keyed by `key` sorted by `order`.
fn parse_config(file: &Path, value: Option<&Value>) -> Result<Vec<ConfigEntry>, ManifestError> {
    let entries: Vec<(String, &Value)> = match value {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(items)) => items.iter().enumerate().map(|(i, v)| (format!("config[{i}]"), v)).collect(),
        Some(Value::Object(map)) => {
            let mut items: Vec<_> = map.iter().collect();
            items.sort_by(|a, b| {
                let order = |v: &Value| v.get("order").and_then(Value::as_f64).unwrap_or(f64::MAX);
                order(a.1).total_cmp(&order(b.1))
            });
            items.into_iter().map(|(k, v)| (format!("config.{k}"), v)).collect()
        }
        Some(other) => return Err(err(file, "config", format!("expected an array, got {}", json_kind(other)))),
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (path, entry) in entries {
        let parsed = parse_entry(file, &path, entry)?;
        if let ConfigEntry::Field(f) = &parsed
            && !seen.insert(f.key.clone())
        {
            return Err(err(file, format!("{path}.key"), format!("duplicate key '{}'", f.key)));
        }
        out.push(parsed);
    }
    Ok(out)
}

fn parse_entry(file: &Path, path: &str, entry: &Value) -> Result<ConfigEntry, ManifestError> {
    let Value::Object(obj) = entry else {
        return Err(err(file, path, format!("expected an object, got {}", json_kind(entry))));
    };
    let field_str = |key: &str| -> Result<Option<String>, ManifestError> {
        optional_string(file, obj, key).map_err(|e| err(file, format!("{path}.{key}"), e.problem))
    };
    let field_bool = |key: &str| -> Result<bool, ManifestError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(err(file, format!("{path}.{key}"), format!("expected a boolean, got {}", json_kind(other)))),
        }
    };
    let markdown = field_str("markdown")?;
    let Some(key) = field_str("key")? else {
        return match markdown {
            Some(md) => Ok(ConfigEntry::Markdown(md)),
            None => Err(err(file, format!("{path}.key"), "missing (only markdown-only entries may omit it)")),
        };
    };
    if key.is_empty() {
        return Err(err(file, format!("{path}.key"), "must not be empty"));
    }
    let field_type = match field_str("type")?.as_deref() {
        None | Some("string") => FieldType::String,
        Some("json") => FieldType::Json,
        Some("attachment") => FieldType::Attachment,
        Some("choice") => FieldType::Choice,
        Some(other) => {
            return Err(err(file, format!("{path}.type"), format!("unknown type '{other}' (expected string, json, attachment or choice)")));
        }
    };
    let default = match obj.get("default") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
        Some(other) => return Err(err(file, format!("{path}.default"), format!("expected a string, got {}", json_kind(other)))),
    };
    let choices = parse_choices(file, path, obj.get("choices"), field_type)?;
    if let (Some(d), FieldType::Choice) = (&default, field_type)
        && !choices.contains(d)
    {
        return Err(err(file, format!("{path}.default"), format!("'{d}' is not one of the choices {choices:?}")));
    }
    Ok(ConfigEntry::Field(ConfigField {
        key,
        name: field_str("name")?,
        field_type,
        default,
        hint: field_str("hint")?,
        markdown,
        required: field_bool("required")?,
        secret: field_bool("secret")?,
        choices,
    }))
}

fn parse_choices(file: &Path, path: &str, value: Option<&Value>, field_type: FieldType) -> Result<Vec<String>, ManifestError> {
    let at = format!("{path}.choices");
    match (value, field_type) {
        (None | Some(Value::Null), FieldType::Choice) => Err(err(file, at, "a choice field needs a non-empty choices array")),
        (None | Some(Value::Null), _) => Ok(vec![]),
        (Some(_), t) if t != FieldType::Choice => Err(err(file, at, "only fields of type choice may have choices")),
        (Some(Value::Array(items)), _) => {
            if items.is_empty() {
                return Err(err(file, at, "a choice field needs a non-empty choices array"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(err(file, format!("{at}[{i}]"), format!("expected a string, got {}", json_kind(other)))),
                })
                .collect()
        }
        (Some(other), _) => Err(err(file, at, format!("expected an array, got {}", json_kind(other)))),
    }
}

/// Where a plugin's entry file is: `main` when given, else `index.ts`, else `index.js`.
pub fn entry_file(dir: &Path, manifest: &PluginManifest) -> Result<PathBuf, ManifestError> {
    let file = dir.join("plugin.json");
    if let Some(main) = &manifest.main {
        let path = dir.join(main);
        return if path.is_file() { Ok(path) } else { Err(err(&file, "main", format!("entry file '{main}' does not exist"))) };
    }
    ["index.ts", "index.js"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| err(&file, "main", "not given, and neither index.ts nor index.js exists"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<PluginManifest, ManifestError> {
        PluginManifest::parse(Path::new("p/plugin.json"), text, "p")
    }

    #[test]
    fn parses_every_field_kind() {
        let m = parse(
            r#"{"name":"Hello","url":"u","description":"d","main":"index.js","config":[
            {"markdown":"Intro"},
            {"key":"bar","name":"Bar","type":"string","default":"baz","hint":"h","required":false,"order":1},
            {"key":"pick","type":"choice","choices":["a","b"],"default":"a"},
            {"key":"doc","type":"json"},
            {"key":"file","type":"attachment","required":true},
            {"key":"apiKey","secret":true,"required":true}
        ]}"#,
        )
        .unwrap();
        assert_eq!(m.name, "Hello");
        assert_eq!(m.main.as_deref(), Some("index.js"));
        assert_eq!(m.config[0], ConfigEntry::Markdown("Intro".into()));
        let fields: Vec<_> = m.fields().collect();
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[0].default.as_deref(), Some("baz"));
        assert_eq!(fields[1].field_type, FieldType::Choice);
        assert_eq!(fields[2].field_type, FieldType::Json);
        assert_eq!(fields[3].field_type, FieldType::Attachment);
        assert!(fields[4].secret);
        assert_eq!(m.secret_keys(), vec!["apiKey".to_string()]);
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let e = parse(r#"{"config":[{"key":"x","type":"colour"}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "p/plugin.json: config[0].type: unknown type 'colour' (expected string, json, attachment or choice)");
        let e = parse(r#"{"config":[{"key":"x","type":"choice"}]}"#).unwrap_err();
        assert_eq!(e.field, "config[0].choices");
        let e = parse(r#"{"config":[{"name":"no key"}]}"#).unwrap_err();
        assert_eq!(e.field, "config[0].key");
        let e = parse(r#"{"config":[{"key":"a","required":"yes"}]}"#).unwrap_err();
        assert_eq!(e.field, "config[0].required");
        let e = parse(r#"{"config":[{"key":"a"},{"key":"a"}]}"#).unwrap_err();
        assert!(e.problem.contains("duplicate key"));
        let e = parse("{not json").unwrap_err();
        assert!(e.problem.starts_with("invalid JSON"), "{e}");
        let e = parse(r#"{"name": 3}"#).unwrap_err();
        assert_eq!(e.to_string(), "p/plugin.json: name: expected a string, got a number");
        let e = PluginManifest::parse(Path::new("p/plugin.json"), r#"{"name": "x\n  events in: 5"}"#, "f").unwrap_err();
        assert!(e.to_string().contains("name: must be one line"), "{e}");
    }

    #[test]
    fn legacy_object_config_is_sorted_by_order() {
        let m = parse(r#"{"config":{"b":{"key":"b","order":2},"a":{"key":"a","order":1}}}"#).unwrap();
        let keys: Vec<_> = m.fields().map(|f| f.key.clone()).collect();
        assert_eq!(keys, vec!["a", "b"]);
    }

    #[test]
    fn name_falls_back_to_folder() {
        assert_eq!(parse("{}").unwrap().name, "p");
    }

    #[test]
    fn resolve_applies_defaults_and_checks_required_and_choices() {
        let m = parse(
            r#"{"config":[{"key":"a","default":"1"},{"key":"b","required":true},
            {"key":"c","type":"choice","choices":["x","y"]},{"key":"s","secret":true,"type":"choice","choices":["k"]}]}"#,
        )
        .unwrap();
        let ok = m.resolve_config("cfg", json!({"b":"2","c":"y"}).as_object().unwrap(), &[]).unwrap();
        assert_eq!(ok["a"], "1");
        assert_eq!(ok["b"], "2");
        let e = m.resolve_config("cfg", json!({}).as_object().unwrap(), &[]).unwrap_err();
        assert_eq!(e.to_string(), "cfg: b: required value is missing (no default in plugin.json)");
        let e = m.resolve_config("cfg", json!({"b":"2","c":"z"}).as_object().unwrap(), &[]).unwrap_err();
        assert!(e.problem.contains("'z' is not one of"), "{e}");
        let e = m.resolve_config("cfg", json!({"b":"2","s":"hunter2"}).as_object().unwrap(), &[]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.problem.contains("(secret)"));
    }

    #[test]
    fn required_attachment_must_be_provided() {
        let m = parse(r#"{"config":[{"key":"db","type":"attachment","required":true}]}"#).unwrap();
        assert!(m.resolve_config("cfg", &Map::new(), &[]).is_err());
        assert!(m.resolve_config("cfg", &Map::new(), &["db".to_string()]).is_ok());
    }
}
