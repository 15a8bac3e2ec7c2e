//! An engine's front: its API server's (or headless launcher's) allowlisted settings
//! and its pod, read once per process and kept while the process lives.

use super::Discovery;
use crate::settings::deployment_settings;
use hangwatch_rules::facts::PodFacts;
use hangwatch_rules::ProcFacts;
use std::collections::BTreeMap;

impl Discovery {
    /// The deployment's settings and pod, read from its API server (the core without
    /// one). An API server that exited keeps what was read of it while it lived.
    pub(super) fn front_of(
        &mut self,
        api: Option<&ProcFacts>,
        core: &ProcFacts,
        problems: &mut Vec<String>,
    ) -> (BTreeMap<String, String>, Option<PodFacts>) {
        if let Some(f) = api.filter(|f| !f.state.is_alive()) {
            let settings = self.settings.get(&f.pid).map(|(_, s)| s.clone());
            let pod = self.pods.get(&f.pid).and_then(|(_, p)| p.clone());
            return (settings.unwrap_or_default(), pod);
        }
        let settings = match api {
            Some(f) => self.settings_of(f, problems),
            None => BTreeMap::new(),
        };
        let pod = self.pod_of(api.unwrap_or(core), &settings);
        (settings, pod)
    }

    /// The API server's allowlisted environment, read once per process (pid + start time).
    fn settings_of(
        &mut self,
        p: &ProcFacts,
        problems: &mut Vec<String>,
    ) -> BTreeMap<String, String> {
        let (pid, started) = (p.pid, p.started_at_ms);
        if let Some((at, s)) = self.settings.get(&pid) {
            if *at == started {
                return s.clone();
            }
        }
        match crate::capped::environ(&self.proc.root, pid) {
            Ok(env) => {
                let s = deployment_settings(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                self.settings.insert(pid, (started, s.clone()));
                s
            }
            Err(_) => {
                problems.push(format!(
                    "cannot read the environment of API server {pid}: settings unknown"
                ));
                BTreeMap::new()
            }
        }
    }

    /// The process's pod (cgroup, kubelet log folder, environment), once per process.
    fn pod_of(&mut self, p: &ProcFacts, env: &BTreeMap<String, String>) -> Option<PodFacts> {
        let (pid, started) = (p.pid, p.started_at_ms);
        if let Some((at, p)) = self.pods.get(&pid) {
            if *at == started {
                return p.clone();
            }
        }
        let path = self.proc.root.join(pid.to_string()).join("cgroup");
        let cgroup = crate::capped::read_capped(&path, 64 * 1024).unwrap_or_default();
        let pod = crate::pod::pod_of(&String::from_utf8_lossy(&cgroup), &self.pod_log_dir, env);
        self.pods.insert(pid, (started, pod.clone()));
        pod
    }
}
