//! The label sets of hangwatch's own series: one struct per shape of labels.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineL {
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoL {
    pub engine: String,
    pub model: String,
    pub tp: String,
    pub pp: String,
    pub dp: String,
    /// The deployment a data-parallel replica or a node's part belongs to (empty: its own).
    pub deployment: String,
    /// This engine's node in a deployment across nodes (empty: one node).
    pub node_rank: String,
    pub api_pid: String,
    pub core_pid: String,
    /// Empty outside Kubernetes.
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl InfoL {
    pub fn of(e: &hangwatch_rules::EngineFacts) -> InfoL {
        let pod = |f: fn(&hangwatch_rules::facts::PodFacts) -> &Option<String>| {
            e.pod
                .as_ref()
                .and_then(|p| f(p).clone())
                .unwrap_or_default()
        };
        InfoL {
            engine: e.id.clone(),
            model: e.model.clone().unwrap_or_default(),
            tp: e.tp.to_string(),
            pp: e.pp.to_string(),
            dp: e.dp.to_string(),
            deployment: e.deployment.clone().unwrap_or_default(),
            node_rank: e
                .node
                .as_ref()
                .map(|n| n.node_rank.to_string())
                .unwrap_or_default(),
            api_pid: e.api_pid.map(|p| p.to_string()).unwrap_or_default(),
            core_pid: e.core.pid.to_string(),
            namespace: pod(|p| &p.namespace),
            pod: pod(|p| &p.pod),
            container: pod(|p| &p.container),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateL {
    pub engine: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RankL {
    pub engine: String,
    pub rank: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleL {
    pub engine: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityL {
    pub engine: String,
    pub rank: String,
    pub activity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorL {
    pub collector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindL {
    pub engine: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceL {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingL {
    pub engine: String,
    pub code: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuL {
    pub gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuStateL {
    pub gpu: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XidL {
    pub gpu: String,
    pub xid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionL {
    pub version: String,
    pub commit: String,
}
