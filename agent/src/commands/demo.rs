//! `hangwatch demo`: the one-minute tour. Starts the vLLM simulator (TP=4, steady load,
//! rank 2 stuck in Python sleep after 15 s) and the agent beside it, and shows the
//! verdicts, the incident and the bundle as they happen.

use anyhow::{bail, Context};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 4)]
    pub tp: u32,
    /// The rank that hangs.
    #[arg(long, default_value_t = 2)]
    pub rank: u32,
    /// stop, sleep, spin, native, exit or collective.
    #[arg(long, default_value = "sleep")]
    pub mode: String,
    /// Seconds of healthy load before the hang.
    #[arg(long, default_value_t = 15)]
    pub after: u32,
    /// The simulator script (tests/fakevllm/fakevllm.py of the source tree).
    #[arg(long, env = "HANGWATCH_SIMULATOR")]
    pub simulator: Option<PathBuf>,
    /// Keep bundles here instead of a temporary directory.
    #[arg(long)]
    pub bundle_dir: Option<PathBuf>,
    /// Python interpreter with setproctitle installed.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            // SIGTERM lets the simulator remove its shared-memory segments.
            // SAFETY: kill(2) on a child we started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn simulator_path(a: &DemoArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &a.simulator {
        return Ok(p.clone());
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fakevllm/fakevllm.py");
    if built_in.is_file() {
        return Ok(built_in);
    }
    bail!("cannot find the simulator: pass --simulator PATH/tests/fakevllm/fakevllm.py")
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let sim = simulator_path(&a)?;
    let tmp = std::env::temp_dir().join(format!("hangwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).context("creating the demo directory")?;
    let bundles = a.bundle_dir.clone().unwrap_or_else(|| tmp.join("bundles"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|x| x.port())
        .context("finding a free port")?;
    let mut reaper = Reaper(Vec::new());
    println!(
        "demo: starting the vLLM simulator: TP={}, steady load, rank {} will hang ({}) after {} s",
        a.tp, a.rank, a.mode, a.after
    );
    let fault = format!("rank={},after={},mode={}", a.rank, a.after, a.mode);
    let events = tmp.join("events.jsonl");
    reaper.0.push(
        Command::new(&a.python)
            .arg(&sim)
            .args([
                "--tp",
                &a.tp.to_string(),
                "--load",
                "steady",
                "--fault",
                &fault,
            ])
            .arg("--log")
            .arg(tmp.join("vllm.log"))
            .arg("--events")
            .arg(&events)
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} {}", a.python, sim.display()))?,
    );
    let listen = format!("127.0.0.1:{}", port.saturating_add(1));
    reaper.0.push(start_agent(&listen, &tmp, &bundles, port)?);

    let started = Instant::now();
    let limit = Duration::from_secs(u64::from(a.after) + 60);
    let bundle = loop {
        if started.elapsed() > limit {
            bail!(
                "no incident within {} s: see {}",
                limit.as_secs(),
                tmp.display()
            );
        }
        if let Some(b) = first_bundle(&bundles, &format!("vllm-{port}-")) {
            break b;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the stacks of the next seconds land in the bundle's time line.
    std::thread::sleep(Duration::from_secs(2));
    println!();
    println!("demo: bundle written: {}", bundle.display());
    println!("----- summary.txt -----");
    print!(
        "{}",
        std::fs::read_to_string(bundle.join("summary.txt")).unwrap_or_default()
    );
    println!("-----------------------");
    println!("demo: done; stopping the simulator and the agent");
    drop(reaper);
    Ok(ExitCode::SUCCESS)
}

/// The demo's agent, watching only the demo's simulator (not other engines on the
/// node), its log lines shown with a prefix.
fn start_agent(
    listen: &str,
    tmp: &Path,
    bundles: &Path,
    port: u16,
) -> anyhow::Result<std::process::Child> {
    println!(
        "demo: starting hangwatch beside it (metrics on http://{listen}/metrics, bundles in {})",
        bundles.display()
    );
    let exe = std::env::current_exe().context("locating hangwatch")?;
    std::fs::write(
        tmp.join("demo.toml"),
        format!("engines = [\"vllm-{port}\"]\n"),
    )
    .context("writing the demo config")?;
    let mut agent = Command::new(exe)
        .args(["run", "--listen", listen, "--interval", "1s"])
        .arg("--config")
        .arg(tmp.join("demo.toml"))
        .arg("--bundle-dir")
        .arg(bundles)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .context("starting the agent")?;
    if let Some(err) = agent.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("  hangwatch | {line}");
            }
        });
    }
    Ok(agent)
}

fn first_bundle(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                && p.join("manifest.json").is_file()
        })
}
