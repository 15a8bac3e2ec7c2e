//! Credentials in text that leaves the agent — log lines copied into bundles and events,
//! the agent's own log, environment values — are cut out: passwords and tokens in URLs
//! (`https://TOKEN@host`, `user:pass@`), secret-looking query parameters (`?token=…`),
//! `Authorization`/`Bearer` values, `--api-key` arguments and API keys (`sk-…`).
//! Cheap when there is nothing to cut (one prefilter), and never longer than the input
//! by more than the markers.

use aho_corasick::AhoCorasick;
use regex::Regex;
use std::borrow::Cow;
use std::sync::OnceLock;

pub const REDACTED: &str = "<redacted>";

fn patterns() -> &'static [(Regex, &'static str)] {
    static P: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    P.get_or_init(|| {
        [
            // userinfo of a URL, up to its last `@` (a password may hold `@` itself)
            (r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]+@", "${keep}<redacted>@"),
            // Slack's webhook paths are the secret
            (
                r"(?P<keep>hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+",
                "${keep}<redacted>",
            ),
            // secret-looking query or form parameters
            (
                r"(?i)(?P<keep>[?&;](?:[a-z0-9_.-]*(?:token|key|secret|password|passwd|pwd|sig|signature|auth|credential)[a-z0-9_.-]*)=)[^&\s;#'\x22]+",
                "${keep}<redacted>",
            ),
            // NAME=value, NAME: value, "name": "value" anywhere, where the name ends in a
            // secret's word (`max_tokens=8` does not: the word must end the name)
            (
                r#"(?i)(?P<keep>\b[a-z0-9_.-]*(?:secret|password|passwd|pwd|credential|credentials|api[_-]?key|apikey|access[_-]?key|private[_-]?key|token)"?\s*[=:]\s*"?)[^\s&;,'"}]+"#,
                "${keep}<redacted>",
            ),
            // Authorization headers and bearer tokens
            (r"(?i)(?P<keep>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}", "${keep}<redacted>"),
            // command-line flags that carry secrets (`--api-key`, `--hf-token`, …)
            (
                r"(?i)(?P<keep>--[a-z-]*(?:api-key|token|password|secret)[= ])\S+",
                "${keep}<redacted>",
            ),
            // API keys with well-known shapes
            (r"\b(?:sk|hf|ghp|gho|ghu|ghs|ghr|xox[bpas])[-_][A-Za-z0-9_-]{12,}", "<redacted>"),
            (r"\bgithub_pat_[A-Za-z0-9_]{20,}", "<redacted>"),
            (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "<redacted>"),
        ]
        .into_iter()
        .filter_map(|(re, with)| Regex::new(re).ok().map(|r| (r, with)))
        .collect()
    })
}

/// Words one of the patterns needs: a text with none of them is returned as it is.
fn hints() -> Option<&'static AhoCorasick> {
    static H: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    H.get_or_init(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "://",
                "=",
                "bearer",
                "basic",
                "--",
                "sk-",
                "sk_",
                "hf_",
                "gh",
                "xox",
                "akia",
                "asia",
                "secret",
                "passw",
                "pwd",
                "key",
                "token",
                "credential",
                "slack",
            ])
            .ok()
    })
    .as_ref()
}

/// The text with every credential replaced by `<redacted>`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if hints().is_some_and(|h| !h.is_match(text)) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    for (re, with) in patterns() {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, *with).into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_cut_out() {
        for (input, secret) in [
            (
                "pulling from https://hf_abcdefghijklmnop@huggingface.co/x",
                "hf_abcdefghijklmnop",
            ),
            ("db postgres://user:hunter2@db:5432/x", "hunter2"),
            ("GET /v1/models?api_key=abc123secret&x=1", "abc123secret"),
            ("url http://h/p?token=tok-999;next", "tok-999"),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
                "eyJhbGciOiJIUzI1NiJ9",
            ),
            (
                "vllm serve m --api-key topsecret-1 --port 8000",
                "topsecret-1",
            ),
            (
                "key sk-proj-ABCDEFGHIJKLMNOP1234",
                "sk-proj-ABCDEFGHIJKLMNOP1234",
            ),
            // Each of these once went through whole (issue 21).
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIbPxRfiCY",
                "wJalrXUtnFEMIbPxRfiCY",
            ),
            ("connecting with password=hunter2 now", "hunter2"),
            ("config api_key=abc123secret loaded", "abc123secret"),
            ("vllm serve m --hf-token hfsecretvalue1", "hfsecretvalue1"),
            (r#"{"api_key": "abc123secret", "x": 1}"#, "abc123secret"),
            ("id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
            (
                "token github_pat_11ABCDEFG0123456789_abcdefghij",
                "github_pat_11ABCDEFG0123456789_abcdefghij",
            ),
            (
                "posting to https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX",
                "XXXXXXXXXXXX",
            ),
            ("db postgres://user:p@ss@db:5432/x", "ss@db"),
            ("HF_TOKEN: hfsecretvalue2", "hfsecretvalue2"),
        ] {
            let out = scrub(input);
            assert!(!out.contains(secret), "{input} -> {out}");
            assert!(out.contains(REDACTED), "{input} -> {out}");
        }
        let plain =
            "(EngineCore pid=1) INFO 11-29 13:36:21 [core.py:1] Engine 000: Running: 1 reqs";
        let params = "SamplingParams(n=1, max_tokens=8, stop_token_ids=[], skip_special_tokens=True, thinking_token_budget=None)";
        assert_eq!(scrub(params), params);
        assert_eq!(
            scrub("--max-num-batched-tokens 8192 --tokenizer x"),
            "--max-num-batched-tokens 8192 --tokenizer x"
        );
        assert!(matches!(scrub(plain), Cow::Borrowed(_)));
        assert_eq!(scrub("x=1 y=2"), "x=1 y=2");
    }
}
