//! vLLM's process titles and command lines, parsed.
//!
//! `comm` is cut to 15 bytes (`VLLM::Worker_TP`), so ranks come from the full title in
//! `/proc/PID/cmdline`. The prefix `VLLM` can be changed with `VLLM_PROCESS_NAME_PREFIX`,
//! so titles are matched as `<prefix>::<role>` with any prefix.

/// What a process is to vLLM, judged from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    /// `vllm serve …`: the API server, keeper of the deployment's environment.
    ApiServer(ServeArgs),
    /// `VLLM::EngineCore` or `VLLM::EngineCore_DP<i>`.
    EngineCore {
        dp_rank: u32,
    },
    Worker(WorkerTitle),
    Other,
}

/// Ranks parsed from a worker title such as `VLLM::Worker_DP1_PP0_TP3`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WorkerTitle {
    pub dp: Option<u32>,
    pub pp: Option<u32>,
    pub pcp: Option<u32>,
    pub tp: Option<u32>,
    pub dcp: Option<u32>,
    pub ep: Option<u32>,
}

/// What the API server's command line says about the deployment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServeArgs {
    pub model: Option<String>,
    pub served_model_name: Option<String>,
    pub port: Option<u16>,
    pub tp: Option<u32>,
    pub pp: Option<u32>,
    pub dp: Option<u32>,
    /// `--enable-expert-parallel`: data-parallel replicas step in lockstep.
    pub expert_parallel: bool,
    /// `--headless`: a follower node's part of a deployment; no API server, no port.
    pub headless: bool,
    /// `--nnodes`, `--node-rank`: the multiprocessing executor across nodes.
    pub nnodes: Option<u32>,
    pub node_rank: Option<u32>,
    /// `--master-addr`, `--master-port`: where every node of the deployment meets.
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
    /// `--data-parallel-size-local`, `--data-parallel-start-rank`: this node's replicas.
    pub dp_local: Option<u32>,
    pub dp_start_rank: Option<u32>,
    /// `--data-parallel-address`, `--data-parallel-rpc-port`: a DP deployment's meeting
    /// point across nodes.
    pub dp_address: Option<String>,
    pub dp_rpc_port: Option<u16>,
}

/// Flags of `vllm serve` that take no value: the word after one is not its value.
const BOOLEAN_FLAGS: [&str; 6] = [
    "--headless",
    "--enable-expert-parallel",
    "-ep",
    "--enforce-eager",
    "--trust-remote-code",
    "--enable-log-requests",
];

/// vLLM's default API port, used when the command line names none.
pub const DEFAULT_PORT: u16 = 8000;

pub fn classify(cmdline: &[String]) -> ProcessKind {
    if let Some(args) = serve_args(cmdline) {
        return ProcessKind::ApiServer(args);
    }
    // Titles set by setproctitle arrive as one argument (sometimes padded with spaces).
    let Some(first) = cmdline.first() else {
        return ProcessKind::Other;
    };
    let title = first.trim();
    let Some((_prefix, role)) = title.split_once("::") else {
        return ProcessKind::Other;
    };
    if role.contains(' ') {
        return ProcessKind::Other;
    }
    if let Some(rest) = role.strip_prefix("EngineCore") {
        if rest.is_empty() {
            return ProcessKind::EngineCore { dp_rank: 0 };
        }
        if let Some(n) = rest.strip_prefix("_DP").and_then(|n| n.parse().ok()) {
            return ProcessKind::EngineCore { dp_rank: n };
        }
        return ProcessKind::Other;
    }
    if let Some(rest) = role.strip_prefix("Worker") {
        return match parse_worker_suffix(rest) {
            Some(w) => ProcessKind::Worker(w),
            None => ProcessKind::Other,
        };
    }
    ProcessKind::Other
}

/// `_DP1_PP0_TP3` → ranks; empty (plain `Worker`, before device init) → all `None`.
fn parse_worker_suffix(rest: &str) -> Option<WorkerTitle> {
    let mut w = WorkerTitle::default();
    if rest.is_empty() {
        return Some(w);
    }
    let rest = rest.strip_prefix('_')?;
    for part in rest.split('_') {
        let split = part.find(|c: char| c.is_ascii_digit())?;
        let (name, num) = part.split_at(split);
        let n: u32 = num.parse().ok()?;
        let slot = match name {
            "DP" => &mut w.dp,
            "PP" => &mut w.pp,
            "PCP" => &mut w.pcp,
            "TP" => &mut w.tp,
            "DCP" => &mut w.dcp,
            "EP" => &mut w.ep,
            _ => return None,
        };
        *slot = Some(n);
    }
    Some(w)
}

/// Recognises `… vllm serve <model> …` (the console script, `python -m vllm.entrypoints.cli.main serve`
/// is rare and also accepted) and reads the flags that matter to us.
pub fn serve_args(cmdline: &[String]) -> Option<ServeArgs> {
    let serve_at = cmdline.iter().enumerate().find_map(|(i, a)| {
        let base = a.rsplit('/').next().unwrap_or(a);
        let is_vllm = base == "vllm" || a == "vllm.entrypoints.cli.main";
        (is_vllm && cmdline.get(i + 1).map(String::as_str) == Some("serve")).then_some(i + 1)
    })?;
    let args = &cmdline[serve_at + 1..];
    let mut out = ServeArgs::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let takes_value = flag.starts_with('-') && !BOOLEAN_FLAGS.contains(&flag);
        let value = || inline.clone().or_else(|| args.get(i + 1).cloned());
        match flag {
            "--port" => out.port = value().and_then(|v| v.parse().ok()),
            "--model" => out.model = value(),
            "--served-model-name" => out.served_model_name = value(),
            "--tensor-parallel-size" | "-tp" => out.tp = value().and_then(|v| v.parse().ok()),
            "--pipeline-parallel-size" | "-pp" => out.pp = value().and_then(|v| v.parse().ok()),
            "--data-parallel-size" | "-dp" => out.dp = value().and_then(|v| v.parse().ok()),
            "--enable-expert-parallel" | "-ep" => out.expert_parallel = true,
            "--headless" => out.headless = true,
            "--nnodes" => out.nnodes = value().and_then(|v| v.parse().ok()),
            "--node-rank" => out.node_rank = value().and_then(|v| v.parse().ok()),
            "--master-addr" => out.master_addr = value(),
            "--master-port" => out.master_port = value().and_then(|v| v.parse().ok()),
            "--data-parallel-size-local" | "-dpl" => {
                out.dp_local = value().and_then(|v| v.parse().ok())
            }
            "--data-parallel-start-rank" | "-dpr" => {
                out.dp_start_rank = value().and_then(|v| v.parse().ok())
            }
            "--data-parallel-address" | "-dpa" => out.dp_address = value(),
            "--data-parallel-rpc-port" | "-dpp" => {
                out.dp_rpc_port = value().and_then(|v| v.parse().ok())
            }
            _ => {
                if !takes_value && out.model.is_none() && i == 0 {
                    out.model = Some(a.clone());
                }
            }
        }
        // Skip the value of a `--flag value` pair (not of boolean flags we cannot know;
        // a positional model only ever comes first).
        if takes_value && inline.is_none() && args.get(i + 1).is_some_and(|v| !v.starts_with('-')) {
            i += 1;
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn worker_titles() {
        assert_eq!(
            classify(&v("VLLM::Worker_TP1")),
            ProcessKind::Worker(WorkerTitle {
                tp: Some(1),
                ..Default::default()
            })
        );
        assert_eq!(
            classify(&["VLLM::Worker_DP1_PP2_TP3".to_string()]),
            ProcessKind::Worker(WorkerTitle {
                dp: Some(1),
                pp: Some(2),
                tp: Some(3),
                ..Default::default()
            })
        );
        assert_eq!(
            classify(&["MYPREFIX::Worker_TP12".to_string()]),
            ProcessKind::Worker(WorkerTitle {
                tp: Some(12),
                ..Default::default()
            })
        );
        assert_eq!(
            classify(&["VLLM::Worker".to_string()]),
            ProcessKind::Worker(WorkerTitle::default())
        );
        assert_eq!(
            classify(&["VLLM::Worker_XX1".to_string()]),
            ProcessKind::Other
        );
        assert_eq!(
            classify(&["VLLM::DPCoordinator".to_string()]),
            ProcessKind::Other
        );
    }

    #[test]
    fn engine_core_titles() {
        assert_eq!(
            classify(&["VLLM::EngineCore".to_string()]),
            ProcessKind::EngineCore { dp_rank: 0 }
        );
        assert_eq!(
            classify(&["VLLM::EngineCore_DP3   ".to_string()]),
            ProcessKind::EngineCore { dp_rank: 3 }
        );
    }

    #[test]
    fn serve_command_line_from_the_real_recording() {
        let c = v("/opt/vllm-venv/bin/python3 /opt/vllm-venv/bin/vllm serve /models/tiny-llama --served-model-name tiny --tensor-parallel-size 2 --distributed-executor-backend mp --port 8123 --enforce-eager");
        let ProcessKind::ApiServer(a) = classify(&c) else {
            panic!("not an API server")
        };
        assert_eq!(a.model.as_deref(), Some("/models/tiny-llama"));
        assert_eq!(a.served_model_name.as_deref(), Some("tiny"));
        assert_eq!(a.tp, Some(2));
        assert_eq!(a.port, Some(8123));
        let c = v("vllm serve --model m --port=9000 -tp 8");
        let a = serve_args(&c).unwrap();
        assert_eq!(
            (a.model.as_deref(), a.port, a.tp),
            (Some("m"), Some(9000), Some(8))
        );
        assert!(serve_args(&v(
            "python3 -c from multiprocessing.resource_tracker import main;main(32)"
        ))
        .is_none());
        assert!(serve_args(&v("/usr/bin/vllm bench serve")).is_none());
    }

    #[test]
    fn multi_node_flags() {
        let a = serve_args(&v("vllm serve /m --tensor-parallel-size 2 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29501 --headless --distributed-executor-backend mp")).unwrap();
        assert!(a.headless);
        assert_eq!((a.nnodes, a.node_rank), (Some(2), Some(1)));
        assert_eq!(a.master_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.master_port, Some(29501));
        assert_eq!(a.model.as_deref(), Some("/m"));
        // A boolean flag does not swallow the model that follows it.
        let a = serve_args(&v(
            "vllm serve --headless /m -dpl 1 -dpr 1 -dpa 10.0.0.1 -dpp 13345 -dp 2",
        ))
        .unwrap();
        assert!(a.headless);
        assert_eq!(
            a.model.as_deref(),
            None,
            "a model after a flag is --model's"
        );
        assert_eq!(
            (a.dp, a.dp_local, a.dp_start_rank),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(
            (a.dp_address.as_deref(), a.dp_rpc_port),
            (Some("10.0.0.1"), Some(13345))
        );
    }
}
