//! Whose line is it: a line with vLLM's prefix is charged to an engine only when the pid
//! in the prefix is, in the source's own PID namespace, the process of that engine with
//! the role the prefix names. A pid alone proves nothing across pods (every pod has its
//! own pid 1, 7, 42…), so the source decides where the pid is looked up: a file found
//! through an engine's own descriptors or configured for one engine speaks for that
//! engine only; a file in a pod's log folder for the engines of that pod; the journal
//! for the engine whose process wrote to it (journald's own `_PID`, which the writer
//! cannot forge); any other file for host pids only.

use super::parse::Speaker;
use hangwatch_rules::{EngineFacts, Millis};
use std::collections::BTreeMap;

/// One process of an engine, as the logs know it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    engine: String,
    speaker: Speaker,
    /// The pid is the host's (false: as seen inside the engine's PID namespace).
    host: bool,
    pod_uid: Option<String>,
    seen_ms: Millis,
}

/// Where a line's pid is looked up.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// A source of one engine (its stdout/stderr file, or configured `engine = …`).
    Engine(&'a str),
    /// A file in the kubelet's folder of the pod with this UID.
    Pod(&'a str),
    /// The journal: journald says which host process wrote the line.
    Journal(Option<u32>),
    /// Any other file: host pids only.
    Host,
}

/// Every pid of every engine seen lately: a dying engine's last lines are read after its
/// processes are gone, and must still be told apart from lines naming a pid no engine
/// ever had.
#[derive(Default)]
pub struct Owners {
    by_pid: BTreeMap<u32, Vec<Owner>>,
    /// Host pids that may write an engine's journal stream (its processes and the API
    /// server's parent, which holds the stream when vLLM was started through a shell).
    writers: BTreeMap<u32, (String, Millis)>,
}

impl Owners {
    /// Records this tick's engines and lets go of pids not seen for `keep_ms`.
    pub fn update(&mut self, engines: &[EngineFacts], now_ms: Millis, keep_ms: Millis) {
        for e in engines {
            let uid = e.pod.as_ref().and_then(|p| p.uid.clone());
            let mut add = |pid: u32, ns: Option<u32>, speaker: Speaker| {
                self.writers.insert(pid, (e.id.clone(), now_ms));
                let mut put = |pid: u32, host: bool| {
                    let list = self.by_pid.entry(pid).or_default();
                    list.retain(|o| !(o.engine == e.id && o.speaker == speaker && o.host == host));
                    list.push(Owner {
                        engine: e.id.clone(),
                        speaker,
                        host,
                        pod_uid: uid.clone(),
                        seen_ms: now_ms,
                    });
                };
                put(pid, true);
                if let Some(ns) = ns.filter(|n| *n != pid) {
                    put(ns, false);
                }
            };
            add(e.core.pid, e.core.ns_pid, Speaker::EngineCore);
            for r in &e.ranks {
                add(r.process.pid, r.process.ns_pid, Speaker::Worker);
            }
            if let Some(api) = e.api_pid {
                add(api, e.api_ns_pid, Speaker::ApiServer);
            }
            if let Some(parent) = e.api_parent_pid.filter(|p| *p > 1) {
                self.writers.insert(parent, (e.id.clone(), now_ms));
            }
        }
        for list in self.by_pid.values_mut() {
            list.retain(|o| now_ms - o.seen_ms <= keep_ms);
        }
        self.by_pid.retain(|_, l| !l.is_empty());
        self.writers
            .retain(|_, (_, seen)| now_ms - *seen <= keep_ms);
    }

    /// The engine a line written by `pid` as `speaker` belongs to, read from `scope`;
    /// none when no engine had that process there, or when the pid is ambiguous.
    pub fn owner(&self, pid: u32, speaker: Speaker, scope: Scope<'_>) -> Option<String> {
        let list = self.by_pid.get(&pid)?;
        let fits = |o: &&Owner| {
            o.speaker == speaker
                && match scope {
                    Scope::Engine(id) => o.engine == id,
                    Scope::Pod(uid) => o.pod_uid.as_deref() == Some(uid),
                    Scope::Journal(writer) => {
                        o.host
                            && writer
                                .and_then(|w| self.writers.get(&w))
                                .is_some_and(|(id, _)| *id == o.engine)
                    }
                    Scope::Host => o.host,
                }
        };
        let mut found = list.iter().filter(fits).map(|o| &o.engine);
        let first = found.next()?;
        // Two engines with this pid in this scope: nobody can say whose line it is.
        found.all(|e| e == first).then(|| first.clone())
    }

    /// Whether journald's writer of a line is one of the engine's processes.
    pub fn wrote_for(&self, writer: Option<u32>, engine: &str) -> bool {
        writer
            .and_then(|w| self.writers.get(&w))
            .is_some_and(|(id, _)| id == engine)
    }
}

/// The pod UID of a file in the kubelet's log folder
/// (`…/pods/<namespace>_<pod>_<uid>/<container>/0.log`).
pub fn pod_uid_of_path(path: &std::path::Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let (_, uid) = name.rsplit_once('_')?;
        let ok = uid.len() == 36
            && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && uid.matches('-').count() == 4;
        ok.then(|| uid.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(id: &str, core: (u32, Option<u32>), uid: Option<&str>) -> EngineFacts {
        let mut e: EngineFacts = serde_json::from_value(serde_json::json!({
            "id": id, "model": null, "port": null, "api_pid": null,
            "core": {"pid": core.0, "ns_pid": core.1, "state": "sleeping"},
            "tp": 1, "pp": 1, "dp": 1, "dp_rank": 0, "output_rank": 0,
            "execute_timeout_seconds": 300.0, "ranks": []
        }))
        .expect("engine facts");
        e.pod = uid.map(|u| hangwatch_rules::facts::PodFacts {
            uid: Some(u.to_string()),
            ..Default::default()
        });
        e
    }

    const UID_A: &str = "0a1b2c3d-0000-4000-8000-000000000001";
    const UID_B: &str = "0a1b2c3d-0000-4000-8000-000000000002";

    /// Two pods whose engine cores are both pid 7 inside their namespaces: a line with
    /// pid 7 in pod A's folder is A's, in pod B's folder B's, and in a file of neither
    /// nobody's; the host pid is only good where host pids are meant.
    #[test]
    fn a_pid_is_looked_up_where_the_line_was_written() {
        let mut o = Owners::default();
        let engines = [
            engine("a", (1001, Some(7)), Some(UID_A)),
            engine("b", (2002, Some(7)), Some(UID_B)),
        ];
        o.update(&engines, 1_000, 60_000);
        let core = Speaker::EngineCore;
        assert_eq!(o.owner(7, core, Scope::Pod(UID_A)).as_deref(), Some("a"));
        assert_eq!(o.owner(7, core, Scope::Pod(UID_B)).as_deref(), Some("b"));
        assert_eq!(o.owner(7, core, Scope::Host), None);
        assert_eq!(o.owner(1001, core, Scope::Host).as_deref(), Some("a"));
        assert_eq!(o.owner(1001, core, Scope::Engine("b")), None);
        assert_eq!(o.owner(7, Speaker::ApiServer, Scope::Pod(UID_A)), None);
        // The journal: only when journald says one of the engine's processes wrote it.
        assert_eq!(o.owner(1001, core, Scope::Journal(Some(4242))), None);
        assert_eq!(o.owner(1001, core, Scope::Journal(None)), None);
        assert_eq!(
            o.owner(1001, core, Scope::Journal(Some(1001))).as_deref(),
            Some("a")
        );
        // Forgotten once not seen for longer than kept.
        o.update(&[], 100_000, 60_000);
        assert_eq!(o.owner(1001, core, Scope::Host), None);
    }

    #[test]
    fn pod_uid_from_the_kubelet_folder() {
        let p = std::path::Path::new(
            "/var/log/pods/ml_vllm-0_0a1b2c3d-0000-4000-8000-000000000001/vllm/0.log",
        );
        assert_eq!(pod_uid_of_path(p).as_deref(), Some(UID_A));
        assert_eq!(
            pod_uid_of_path(std::path::Path::new("/var/log/vllm.log")),
            None
        );
    }
}
