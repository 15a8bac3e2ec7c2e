//! `hangwatch run`: the tick loop (collect → judge → tell) on its own thread, bundle
//! writing on another, the HTTP server on the async runtime.

pub mod agent;
pub mod capture;
pub mod evidence;
pub mod watchdog;

use crate::clock::now_ms;
use crate::config::alerts::{Receiver, Secret};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server;
use crate::shared::Shared;
use agent::Agent;
use anyhow::Context as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What start-up read and checked before the agent runs: receivers with their secrets,
/// the capture token, the TLS acceptor.
pub struct Ready {
    pub receivers: Vec<Receiver>,
    pub capture_token: Option<Secret>,
    /// The token the agents of a deployment across nodes share (none: peers off).
    pub peer_token: Option<Secret>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub fn run(cfg: Config, ready: Ready) -> anyhow::Result<()> {
    let Ready {
        receivers,
        capture_token,
        peer_token,
        tls,
    } = ready;
    raise_priority();
    let open_files = crate::limits::raise_open_files();
    let (capture_tx, capture_rx) = match capture_token {
        Some(_) => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(Mutex::new(tx)), Some(rx))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        lock: Mutex::new(()),
        last_tick_ms: AtomicI64::new(0),
        interval: cfg.interval,
        status: Default::default(),
        captures: capture_tx,
        capture_token,
        capture_calls: Default::default(),
        capture_denials: Default::default(),
        peers: peer_token.map(|t| {
            let leader = cfg.peers.leader_agent.clone();
            let every = cfg.peers.report_interval.as_millis() as hangwatch_rules::Millis;
            Arc::new(crate::peers::PeerDesk::new(
                t,
                leader,
                cfg.listen.port(),
                every,
            ))
        }),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut helpers_early = Vec::new();
    if let Some(desk) = &shared.peers {
        let client = crate::peers::spawn_client(desk.clone(), stop.clone())
            .context("starting the peers thread")?;
        helpers_early.push(client);
    }
    let (agent, mut helpers) = Agent::new(&cfg, receivers, capture_rx, shared.clone())?;
    helpers.append(&mut helpers_early);
    let ticker =
        spawn_ticker(agent, stop.clone(), cfg.interval).context("starting the tick thread")?;
    watchdog::spawn_guard(shared.clone(), now_ms).context("starting the watchdog thread")?;
    watchdog::ready();

    tracing::info!(
        listen = %cfg.listen,
        bundle_dir = %cfg.bundle_dir.display(),
        interval = ?cfg.interval,
        version = crate::version::VERSION,
        commit = crate::version::COMMIT,
        "hangwatch running"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cap = crate::limits::connection_cap(cfg.http.max_connections, open_files);
    let served = rt.block_on(server::serve(cfg.listen, shared.clone(), tls, cap));
    stop.store(true, Ordering::Relaxed);
    // The agent (and with it the outputs' senders) is dropped when the tick thread ends;
    // then the bundle thread drains its queue and the receivers' threads end (what they
    // have not delivered stays in their queues on disk).
    let _ = ticker.join();
    for h in helpers.drain(..) {
        let _ = h.join();
    }
    served
}

/// The tick loop on a thread of its own, one tick every `interval` until `stop`. A tick
/// that panics ends the process: a watchdog that stopped watching must not look alive,
/// so systemd or Kubernetes starts a fresh one.
fn spawn_ticker(
    mut agent: Agent,
    stop: Arc<AtomicBool>,
    interval: std::time::Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tick".into())
        .spawn(move || {
            let panic_at = injected("HANGWATCH_TEST_PANIC_AT_TICK");
            let stall_at = injected("HANGWATCH_TEST_STALL_AT_TICK");
            let mut ticks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                ticks += 1;
                let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if panic_at == Some(ticks) {
                        panic!("injected panic (HANGWATCH_TEST_PANIC_AT_TICK)");
                    }
                    if stall_at == Some(ticks) {
                        tracing::warn!("injected stall (HANGWATCH_TEST_STALL_AT_TICK)");
                        loop {
                            std::thread::park();
                        }
                    }
                    agent.tick(now_ms())
                }));
                if tick.is_err() {
                    tracing::error!("the tick panicked: exiting so that hangwatch is restarted");
                    std::process::exit(70);
                }
                watchdog::pet();
                let spent = started.elapsed();
                if spent < interval {
                    std::thread::sleep(interval - spent);
                }
            }
            agent.finish();
        })
}

/// Test-only: `HANGWATCH_TEST_PANIC_AT_TICK=N` makes tick N panic and
/// `HANGWATCH_TEST_STALL_AT_TICK=N` makes it hang, so the suite can prove that a broken
/// tick loop ends the process instead of leaving a zombie.
fn injected(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// A watchdog must not be starved by what it watches (`docs/vllm.md`, "A saturated
/// node": a CPU vLLM engine starved other sessions' processes for 10 s). Raise our
/// priority when allowed.
fn raise_priority() {
    let autogroup = std::fs::write("/proc/self/autogroup", "-10");
    // SAFETY: setpriority on our own process with constant arguments.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
    match (autogroup.is_ok(), nice == 0) {
        (true, true) => tracing::info!("raised own scheduling priority (autogroup nice -10, nice -10)"),
        (a, n) => tracing::info!(
            autogroup = a,
            nice = n,
            "could not fully raise own scheduling priority (needs root or CAP_SYS_NICE); a saturated node may delay detection"
        ),
    }
}
