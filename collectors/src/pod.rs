//! Which Kubernetes pod and container a process runs in, without the Kubernetes API
//! (the agent must work when the API server is the thing that is down):
//! the pod UID and container id from the process's cgroup path, the pod's namespace
//! and name from the kubelet's log folder `/var/log/pods/<namespace>_<pod>_<uid>/`
//! (docs/containers.md), else from `POD_NAMESPACE`/`POD_NAME` in its environment.

use hangwatch_rules::facts::PodFacts;
use std::collections::BTreeMap;
use std::path::Path;

/// Pod UID and container id from `/proc/<pid>/cgroup`. Both cgroup drivers:
/// systemd (`…/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`)
/// and cgroupfs (`/kubepods/burstable/pod<uid>/<id>`).
pub fn from_cgroup(text: &str) -> Option<(String, Option<String>)> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        if !path.contains("kubepods") {
            continue;
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some(uid_at) = segs.iter().rposition(|s| uid_of(s).is_some()) else {
            continue;
        };
        let uid = uid_of(segs[uid_at])?;
        let container = segs.get(uid_at + 1).and_then(|s| container_id_of(s));
        return Some((uid, container));
    }
    None
}

fn uid_of(seg: &str) -> Option<String> {
    let s = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = s.rfind("pod")?;
    let uid = s[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && uid.matches('-').count() == 4;
    ok.then_some(uid)
}

fn container_id_of(seg: &str) -> Option<String> {
    let s = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = s.rsplit('-').next().unwrap_or(s);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Namespace, pod name and (when the pod has one container folder) container name for a
/// pod UID, from the kubelet's log folder.
pub fn from_log_dir(dir: &Path, uid: &str) -> Option<(String, String, Option<String>)> {
    let suffix = format!("_{uid}");
    for entry in std::fs::read_dir(dir).ok()?.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_suffix(&suffix) else {
            continue;
        };
        let (ns, pod) = rest.split_once('_')?;
        let containers: Vec<String> = std::fs::read_dir(entry.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        let container = (containers.len() == 1).then(|| containers[0].clone());
        return Some((ns.to_string(), pod.to_string(), container));
    }
    None
}

/// Everything known of the process's pod; `None` outside Kubernetes.
pub fn pod_of(cgroup: &str, log_dir: &Path, env: &BTreeMap<String, String>) -> Option<PodFacts> {
    let (uid, container_id) = match from_cgroup(cgroup) {
        Some(x) => x,
        None if env.contains_key("POD_NAME") => (String::new(), None),
        None => return None,
    };
    let found = (!uid.is_empty())
        .then(|| from_log_dir(log_dir, &uid))
        .flatten();
    let (namespace, pod, container) = match found {
        Some((ns, pod, c)) => (Some(ns), Some(pod), c),
        None => (
            env.get("POD_NAMESPACE").cloned(),
            env.get("POD_NAME").cloned(),
            None,
        ),
    };
    Some(PodFacts {
        namespace,
        pod,
        container,
        uid: (!uid.is_empty()).then_some(uid),
        container_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b0c7d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4";

    #[test]
    fn both_cgroup_drivers() {
        let systemd = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(
            from_cgroup(&systemd),
            Some((
                "0a1b2c3d-4e5f-6789-abcd-ef0123456789".into(),
                Some(ID.into())
            ))
        );
        let cgroupfs = format!(
            "12:memory:/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{ID}\n"
        );
        assert_eq!(
            from_cgroup(&cgroupfs),
            Some((
                "0a1b2c3d-4e5f-6789-abcd-ef0123456789".into(),
                Some(ID.into())
            ))
        );
        assert_eq!(
            from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(from_cgroup("0::/kubepods/podnot-a-uid/x\n"), None);
    }

    #[test]
    fn names_from_the_kubelet_log_folder_else_the_environment() {
        let d = tempfile::tempdir().expect("tmp");
        let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        std::fs::create_dir_all(d.path().join(format!("llm_vllm-70b-0_{uid}/vllm")))
            .expect("mkdir");
        let cg = format!("0::/kubepods/pod{uid}/{ID}\n");
        let p = pod_of(&cg, d.path(), &BTreeMap::new()).expect("pod");
        assert_eq!(p.namespace.as_deref(), Some("llm"));
        assert_eq!(p.pod.as_deref(), Some("vllm-70b-0"));
        assert_eq!(p.container.as_deref(), Some("vllm"));
        assert_eq!(p.container_id.as_deref(), Some(ID));
        let env: BTreeMap<String, String> = [
            ("POD_NAME".to_string(), "p".to_string()),
            ("POD_NAMESPACE".to_string(), "n".to_string()),
        ]
        .into();
        let p = pod_of("0::/\n", d.path(), &env).expect("from the environment");
        assert_eq!(
            (p.namespace.as_deref(), p.pod.as_deref()),
            (Some("n"), Some("p"))
        );
        assert_eq!(pod_of("0::/\n", d.path(), &BTreeMap::new()), None);
    }
}
