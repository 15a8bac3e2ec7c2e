//! Credentials in text that leaves the agent — log lines copied into bundles and events,
//! the agent's own log, environment values — are cut out: passwords and tokens in URLs
//! (`https://TOKEN@host`, `user:pass@`), secret-looking query parameters (`?token=…`),
//! `Authorization`/`Bearer` values, `--api-key` arguments and API keys (`sk-…`).
//! Cheap when there is nothing to cut (one prefilter), and never longer than the input
//! by more than the markers.

use regex::Regex;
use std::borrow::Cow;
use std::sync::OnceLock;

pub const REDACTED: &str = "<redacted>";

fn patterns() -> &'static [(Regex, &'static str)] {
    static P: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    P.get_or_init(|| {
        [
            // userinfo of a URL: scheme://anything-without-slash-or-space@
            (r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@", "${keep}<redacted>@"),
            // secret-looking query or form parameters
            (
                r"(?i)(?P<keep>[?&;](?:[a-z0-9_.-]*(?:token|key|secret|password|passwd|pwd|sig|signature|auth|credential)[a-z0-9_.-]*)=)[^&\s;#'\x22]+",
                "${keep}<redacted>",
            ),
            // Authorization headers and bearer tokens
            (r"(?i)(?P<keep>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}", "${keep}<redacted>"),
            // command-line flags that carry secrets
            (
                r"(?i)(?P<keep>--(?:api-key|token|password|secret)[= ])\S+",
                "${keep}<redacted>",
            ),
            // API keys with well-known shapes
            (r"\b(?:sk|hf|ghp|gho|xox[bp])[-_][A-Za-z0-9_-]{12,}", "<redacted>"),
        ]
        .into_iter()
        .filter_map(|(re, with)| Regex::new(re).ok().map(|r| (r, with)))
        .collect()
    })
}

/// The text with every credential replaced by `<redacted>`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let lower_hint = |t: &str| {
        t.contains("://")
            || t.contains('=')
            || t.contains("earer")
            || t.contains("asic")
            || t.contains("--")
            || t.contains("sk-")
            || t.contains("hf_")
            || t.contains("gh")
            || t.contains("xox")
    };
    if !lower_hint(text) {
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
        ] {
            let out = scrub(input);
            assert!(!out.contains(secret), "{input} -> {out}");
            assert!(out.contains(REDACTED), "{input} -> {out}");
        }
        let plain =
            "(EngineCore pid=1) INFO 11-29 13:36:21 [core.py:1] Engine 000: Running: 1 reqs";
        assert!(matches!(scrub(plain), Cow::Borrowed(_)));
        assert_eq!(scrub("x=1 y=2"), "x=1 y=2");
    }
}
