//! `HANGWATCH_<KEY>` overrides, derived from the configuration's own structure: every
//! key of the TOML file has one (nested keys joined by `_`, upper case:
//! `judge.suspect_after` → `HANGWATCH_JUDGE_SUSPECT_AFTER`), so a key added to the
//! configuration can never miss its variable. Lists are comma-separated.

use super::{Config, ConfigError};
use toml::Value;

/// Every leaf key: (variable name, path of keys).
pub fn env_keys(tree: &Value) -> Vec<(String, Vec<String>)> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
        match v {
            Value::Table(t) => {
                for (k, child) in t {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                let var = format!("HANGWATCH_{}", path.join("_").to_ascii_uppercase());
                out.push((var, path.clone()));
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// The variable's text as a value of the kind the key holds now; the key's own parser
/// (durations, sizes, addresses) then reads it when the tree becomes a `Config` again.
fn typed(current: &Value, text: &str) -> Result<Value, String> {
    Ok(match current {
        Value::Boolean(_) => Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(format!("{text:?}: expected true or false")),
        }),
        Value::Integer(_) => match text.trim().parse::<i64>() {
            Ok(n) => Value::Integer(n),
            // Sizes accept units (`512MiB`): let the key's parser judge.
            Err(_) => Value::String(text.to_string()),
        },
        Value::Float(_) => Value::Float(
            text.trim()
                .parse::<f64>()
                .map_err(|e| format!("{text:?}: {e}"))?,
        ),
        // A list of tables (`alerts.webhooks`) is written as TOML: `[{url = "…"}]`.
        Value::Array(_) if text.trim_start().starts_with('[') => {
            let t: toml::Table = toml::from_str(&format!("v = {text}"))
                .map_err(|e| format!("{text:?}: not a TOML list ({})", e.message().trim()))?;
            t.get("v").cloned().unwrap_or(Value::Array(Vec::new()))
        }
        Value::Array(_) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(text.to_string()),
    })
}

fn slot<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(tree, |v, k| v.get_mut(k.as_str()))
}

impl Config {
    /// Applies every `HANGWATCH_<KEY>` that `get` knows; an error names the variable.
    pub fn apply_env<F>(&mut self, get: F) -> Result<(), ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let invalid = |var: &str, message: String| ConfigError::Env {
            var: var.to_string(),
            message,
        };
        let mut tree = Value::try_from(&*self).map_err(|e| {
            ConfigError::Invalid(format!("cannot represent the configuration: {e}"))
        })?;
        for (var, path) in env_keys(&tree.clone()) {
            let Some(text) = get(&var) else { continue };
            let Some(v) = slot(&mut tree, &path) else {
                continue;
            };
            *v = typed(v, &text).map_err(|m| invalid(&var, m))?;
            // Convert now, so the error names this variable and not a later one.
            let _: Config = tree
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| invalid(&var, e.message().trim().to_string()))?;
        }
        *self = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A valid value for a key that differs from its default, chosen by the default's kind.
    fn other_value(default: &Value) -> String {
        match default {
            Value::Boolean(b) => (!b).to_string(),
            Value::Integer(n) => (n + 1).to_string(),
            // A fraction (a confidence) stays one.
            Value::Float(f) if *f < 1.0 => (f / 2.0).to_string(),
            Value::Float(f) => (f + 1.0).to_string(),
            Value::Array(_) => "/tmp/a.log,/tmp/b.log".to_string(),
            Value::String(s) if super::super::parse_duration(s).is_ok() => "7s".to_string(),
            Value::String(s) if s.contains(':') => "127.0.0.1:1".to_string(),
            Value::String(s) if s == "text" => "json".to_string(),
            _ => "/tmp/hangwatch-env-test".to_string(),
        }
    }

    #[test]
    fn every_key_has_a_variable_that_works() {
        let defaults = Value::try_from(Config::default()).expect("tree");
        let keys = env_keys(&defaults);
        assert!(keys.len() >= 30, "{} keys", keys.len());
        let names: std::collections::BTreeSet<_> = keys.iter().map(|(v, _)| v).collect();
        assert_eq!(names.len(), keys.len(), "two keys share a variable");
        for (var, path) in &keys {
            let default = path
                .iter()
                .try_fold(&defaults, |v, k| v.get(k.as_str()))
                .expect("key");
            let text = match path.last().map(String::as_str) {
                Some("webhooks") => r#"[{url = "http://127.0.0.1:1/hook"}]"#.to_string(),
                _ => other_value(default),
            };
            let mut c = Config::default();
            c.apply_env(|k| (k == var).then(|| text.clone()))
                .unwrap_or_else(|e| panic!("{var}={text}: {e}"));
            assert_ne!(c, Config::default(), "{var}={text} changed nothing");
            let after = Value::try_from(&c).expect("tree");
            let got = path.iter().try_fold(&after, |v, k| v.get(k.as_str()));
            assert_ne!(got, Some(default), "{var}: {} unchanged", path.join("."));
        }
    }

    #[test]
    fn names_the_variable_and_is_ignored_when_absent() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "HANGWATCH_JUDGE_CONFIRM_AFTER").then(|| "20s".to_string()))
            .expect("valid");
        assert_eq!(c.judge.confirm_after, std::time::Duration::from_secs(20));
        for (var, text) in [
            ("HANGWATCH_INTERVAL", "fast"),
            ("HANGWATCH_GPU_ENABLED", "maybe"),
            ("HANGWATCH_BUNDLES_MAX_COUNT", "many"),
            ("HANGWATCH_JUDGE_ADAPT_FACTOR", "x"),
        ] {
            let e = Config::default()
                .apply_env(|k| (k == var).then(|| text.to_string()))
                .expect_err(var)
                .to_string();
            assert!(e.contains(var), "{e}");
        }
        let env: BTreeMap<&str, &str> = [("HANGWATCH_GPU_ENABLED", "false")].into();
        let mut c = Config::default();
        c.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("valid");
        assert!(!c.gpu.enabled, "HANGWATCH_GPU_ENABLED=false is honoured");
        assert_eq!(c.judge, Config::default().judge);
    }
}
