//! The deployment's settings, from the API server's environment (the only vLLM process
//! whose environment survives setproctitle), filtered by an allowlist and with secrets
//! redacted before they can reach a bundle, a metric, a log or a webhook.

use std::collections::BTreeMap;

/// vLLM's default execute timeout (`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`).
pub const DEFAULT_EXECUTE_TIMEOUT_SECONDS: f64 = 300.0;

pub use crate::scrub::REDACTED;

/// Variables worth reporting: vLLM's, NCCL's, torch's distributed knobs, device masks.
fn allowed(name: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "VLLM_",
        "NCCL_",
        "TORCH_NCCL_",
        "TORCH_DISTRIBUTED_",
        "GLOO_",
        "CUDA_",
    ];
    const NAMES: [&str; 5] = [
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "LOCAL_WORLD_SIZE",
        // The pod, when its spec passes them down (a fallback for pod metadata).
        "POD_NAME",
        "POD_NAMESPACE",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Names that suggest a secret (`VLLM_API_KEY`, `…_TOKEN`, …): their values never
/// leave the agent.
pub fn looks_secret(name: &str) -> bool {
    const WORDS: [&str; 10] = [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "PRIVATE",
        "COOKIE",
        "SIGNATURE",
    ];
    let upper = name.to_ascii_uppercase();
    WORDS.iter().any(|w| upper.contains(w))
}

/// A value may carry credentials even under an innocent name (`scheme://user:pass@host`).
fn scrub_value(value: &str) -> String {
    crate::scrub::scrub(value).into_owned()
}

/// Allowlisted variables of an environment, secrets redacted.
pub fn deployment_settings<I, K, V>(env: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    env.into_iter()
        .filter(|(k, _)| allowed(k.as_ref()))
        .map(|(k, v)| {
            let k = k.as_ref().to_string();
            let v = if looks_secret(&k) {
                REDACTED.to_string()
            } else {
                scrub_value(v.as_ref())
            };
            (k, v)
        })
        .collect()
}

/// The execute timeout in force: vLLM reads it as an integer or float of seconds.
pub fn execute_timeout_seconds(settings: &BTreeMap<String, String>) -> f64 {
    settings
        .get("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(DEFAULT_EXECUTE_TIMEOUT_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_and_redaction() {
        let env = [
            ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "60"),
            ("VLLM_API_KEY", "sk-very-secret"),
            ("HF_TOKEN", "hf_secret"),
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_RAS_ADDR", "127.0.0.1:28028"),
            ("VLLM_PROXY", "http://bob:hunter2@proxy:3128"),
            ("PATH", "/usr/bin"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
        ];
        let s = deployment_settings(env);
        assert_eq!(s.get("VLLM_API_KEY").map(String::as_str), Some(REDACTED));
        assert!(!s.contains_key("HF_TOKEN"));
        assert!(!s.contains_key("PATH"));
        assert_eq!(s.get("NCCL_DEBUG").map(String::as_str), Some("INFO"));
        assert_eq!(
            s.get("VLLM_PROXY").map(String::as_str),
            Some("http://<redacted>@proxy:3128")
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s:?}").contains("sk-very-secret"));
        assert_eq!(execute_timeout_seconds(&s), 60.0);
        assert_eq!(
            execute_timeout_seconds(&BTreeMap::new()),
            DEFAULT_EXECUTE_TIMEOUT_SECONDS
        );
    }
}
