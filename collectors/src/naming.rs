//! Engine ids: names that survive restarts and tell pods apart (`docs/vllm.md`, "Engine
//! ids" under "Processes").

use crate::title::ServeArgs;
use hangwatch_rules::facts::{NodePlace, PodFacts};

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

/// The id every node of a multi-node deployment derives alike from its own command line:
/// where the nodes meet (`--master-addr/--master-port` of the multiprocessing executor
/// across nodes, or the DP address and RPC port of replicas across nodes). None for a
/// deployment on one node.
pub fn deployment_of(args: &ServeArgs) -> Option<String> {
    let multi_node = args.nnodes.is_some_and(|n| n > 1);
    let (addr, port) = match (
        &args.master_addr,
        args.master_port,
        &args.dp_address,
        args.dp_rpc_port,
    ) {
        (Some(a), Some(p), _, _) if multi_node => (a, p),
        (_, _, Some(a), Some(p)) if args.headless || args.dp_local.is_some() => (a, p),
        _ => return None,
    };
    Some(format!("vllm-{}-{port}", sanitize(addr)))
}

/// An engine's id and its deployment's. A follower node's part is
/// `<deployment>-node<k>`, a replica on a follower node `<deployment>-dp<i>`; every
/// other engine keeps its port-based id, with the multi-node deployment (or, for
/// data-parallel replicas on one node, the id without `-dp<i>`) as its deployment.
pub fn identity(
    args: &ServeArgs,
    port: Option<u16>,
    dp_rank: u32,
    core_pid: u32,
    follower: bool,
    pod: Option<&PodFacts>,
) -> (String, Option<String>) {
    let dp_size = args.dp.unwrap_or(1).max(1);
    let shared = deployment_of(args);
    let id = match (&shared, follower, args.headless) {
        (Some(d), true, _) => format!("{d}-node{}", args.node_rank.unwrap_or(0)),
        (Some(d), false, true) => format!("{d}-dp{dp_rank}"),
        _ => engine_id(port, dp_rank, dp_size, args, core_pid),
    };
    let deployment =
        shared.or_else(|| (dp_size > 1).then(|| engine_id(port, 0, 1, args, core_pid)));
    (in_pod(id, pod), deployment.map(|d| in_pod(d, pod)))
}

/// Where an engine of a deployment across nodes (`--nnodes` > 1) sits, and which of its
/// ranks are elsewhere: node `k` runs ranks `k·L … k·L + L − 1`.
pub fn place_of(args: &ServeArgs, world: u32, local: &[u32]) -> Option<NodePlace> {
    let nnodes = args.nnodes.filter(|n| *n > 1)?;
    let node_rank = args.node_rank.unwrap_or(0);
    let per_node = (world / nnodes).max(1);
    let remote_ranks = if args.headless {
        Vec::new()
    } else {
        (0..world).filter(|r| !local.contains(r)).collect()
    };
    Some(NodePlace {
        node_rank,
        nnodes,
        leader: format!(
            "{}:{}",
            args.master_addr.as_deref().unwrap_or("?"),
            args.master_port.map_or("?".to_string(), |p| p.to_string())
        ),
        remote_ranks,
        ranks_per_node: per_node,
    })
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

    #[test]
    fn every_node_derives_the_same_deployment() {
        let leader = ServeArgs {
            nnodes: Some(2),
            node_rank: Some(0),
            master_addr: Some("10.0.0.1".into()),
            master_port: Some(29501),
            port: Some(8000),
            ..Default::default()
        };
        let follower = ServeArgs {
            node_rank: Some(1),
            headless: true,
            port: None,
            ..leader.clone()
        };
        assert_eq!(
            deployment_of(&leader).as_deref(),
            Some("vllm-10.0.0.1-29501")
        );
        assert_eq!(deployment_of(&leader), deployment_of(&follower));
        let dp_follower = ServeArgs {
            headless: true,
            dp: Some(2),
            dp_local: Some(1),
            dp_start_rank: Some(1),
            dp_address: Some("10.0.0.1".into()),
            dp_rpc_port: Some(13345),
            ..Default::default()
        };
        assert_eq!(
            deployment_of(&dp_follower).as_deref(),
            Some("vllm-10.0.0.1-13345")
        );
        assert_eq!(deployment_of(&ServeArgs::default()), None);
    }
}
