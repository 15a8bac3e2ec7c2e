//! Engine ids: names that survive restarts and tell pods apart (`docs/vllm.md`, "Engine
//! ids" under "Processes").

use crate::title::ServeArgs;
use hangwatch_rules::facts::PodFacts;

/// A label that survives restarts: `vllm-<port>` for the API port (vLLM's default 8000
/// when the command line names none), `-dp<i>` added for data-parallel replicas. With
/// no API server in sight the served model name stands in for the port, and only as a
/// last resort the engine core's pid.
pub fn engine_id(
    port: Option<u16>,
    dp_rank: u32,
    dp_size: u32,
    args: &ServeArgs,
    core_pid: u32,
) -> String {
    let base = match (port, &args.served_model_name, &args.model) {
        (Some(p), _, _) => format!("vllm-{p}"),
        (None, Some(m), _) | (None, None, Some(m)) => format!("vllm-{}", sanitize(m)),
        (None, None, None) => format!("vllm-core{core_pid}"),
    };
    if dp_size > 1 || dp_rank > 0 {
        format!("{base}-dp{dp_rank}")
    } else {
        base
    }
}

/// An engine in a pod is told apart by its pod: two pods on one node may both serve on
/// port 8000 (each in its own network namespace), and a restart of one must not move
/// the other's id. `vllm-8000.<namespace>.<pod>`, or `vllm-8000.pod-<uid prefix>` while
/// only the UID is known; an engine outside pods keeps its plain id.
pub fn in_pod(id: String, pod: Option<&PodFacts>) -> String {
    let Some(p) = pod else { return id };
    match (&p.namespace, &p.pod, &p.uid) {
        (Some(ns), Some(name), _) => format!("{id}.{}.{}", sanitize(ns), sanitize(name)),
        (_, _, Some(uid)) => format!("{id}.pod-{}", sanitize(uid.get(..8).unwrap_or(uid))),
        _ => id,
    }
}

fn sanitize(s: &str) -> String {
    let last = s.trim_end_matches('/').rsplit('/').next().unwrap_or(s);
    last.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids() {
        let a = ServeArgs::default();
        assert_eq!(engine_id(Some(8000), 0, 1, &a, 5), "vllm-8000");
        assert_eq!(engine_id(Some(8000), 1, 2, &a, 5), "vllm-8000-dp1");
        let named = ServeArgs {
            model: Some("/models/tiny-llama/".into()),
            ..Default::default()
        };
        assert_eq!(engine_id(None, 0, 1, &named, 5), "vllm-tiny-llama");
        assert_eq!(engine_id(None, 0, 1, &a, 5), "vllm-core5");
        let pod = PodFacts {
            namespace: Some("llm".into()),
            pod: Some("vllm-0".into()),
            uid: Some("0a1b2c3d-4e5f-4789-abcd-ef0123456789".into()),
            ..Default::default()
        };
        assert_eq!(
            in_pod("vllm-8000".into(), Some(&pod)),
            "vllm-8000.llm.vllm-0"
        );
        let uid_only = PodFacts {
            uid: pod.uid.clone(),
            ..Default::default()
        };
        assert_eq!(
            in_pod("vllm-8000".into(), Some(&uid_only)),
            "vllm-8000.pod-0a1b2c3d"
        );
        assert_eq!(in_pod("vllm-8000".into(), None), "vllm-8000");
    }
}
