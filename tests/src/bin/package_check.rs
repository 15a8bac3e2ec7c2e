//! Proves what `scripts/package.sh` built, as an operator would use it (issue 26):
//! - the Debian package, in a booted minimal Debian (`tests/src/nspawn.rs`): `dpkg -i`
//!   enables and starts nothing; `systemctl start hangwatch` works; the agent names a
//!   simulated engine's stopped rank; `dpkg --purge` removes everything but the bundles;
//! - the container image, with Debian's podman (runc) the way the DaemonSet runs it
//!   (host PID namespace, only the manifests' capabilities, read-only root): it names the
//!   stopped rank of a simulated engine on the host.
//!
//! `package-check --deb FILE --image NAME --binary FILE`; prints what it saw, exits 1 on
//! the first thing that is not as it should be.

use hangwatch_tests::nspawn::{debian_root, Container};
use hangwatch_tests::{
    arg_value, free_port, http_get, output_text, repo_root, wait_for, Sim, RANK_1_STOPS,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT: &str = "hangwatch.service";

type Check = Result<(), String>;

fn ensure(ok: bool, what: String) -> Check {
    if ok {
        println!("ok   {what}");
        Ok(())
    } else {
        Err(what)
    }
}

fn version_of(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn package(deb: &Path, version: &str) -> Check {
    let c = Container::boot(
        &debian_root(),
        &[
            (deb.to_path_buf(), "/root/hangwatch.deb"),
            (repo_root().join("tests/fakevllm"), "/opt/fakevllm"),
        ],
    );
    let t = Instant::now();
    let out = c.run(&["dpkg", "-i", "/root/hangwatch.deb"]);
    let took = t.elapsed().as_secs_f64();
    ensure(
        out.status.success(),
        format!("dpkg -i in {took:.1} s: {}", output_text(&out).trim()),
    )?;
    let enabled = c.text(&["systemctl", "is-enabled", UNIT]);
    let active = c.text(&["systemctl", "is-active", UNIT]);
    ensure(
        enabled.trim() == "disabled" && active.trim() == "inactive",
        format!(
            "installed, not enabled ({}) nor started ({})",
            enabled.trim(),
            active.trim()
        ),
    )?;
    let inside = c.text(&["hangwatch", "--version"]);
    ensure(
        inside.trim() == version,
        format!("the package's binary says {:?}", inside.trim()),
    )?;
    let out = c.run(&["systemctl", "start", UNIT]);
    ensure(
        out.status.success() && c.unit_property(UNIT, "SubState") == "running",
        format!(
            "systemctl start hangwatch: {}",
            c.unit_property(UNIT, "SubState")
        ),
    )?;
    c.start_sim("rank=1,after=6,mode=stop");
    let named = c.incident_naming(1, Duration::from_secs(40));
    ensure(
        named.is_some(),
        format!(
            "the packaged agent names the stopped rank 1 ({:.1} s after the fault)",
            named.as_ref().map(|n| n.1).unwrap_or(f64::NAN)
        ),
    )
    .map_err(|e| format!("{e}\n{}", c.journal(UNIT)))?;
    let bundles = "/var/lib/private/hangwatch/bundles";
    wait_for(Duration::from_secs(20), || {
        (!c.text(&["ls", bundles]).trim().is_empty()).then_some(())
    });
    let out = c.run(&["dpkg", "--purge", "hangwatch"]);
    ensure(
        out.status.success(),
        format!("dpkg --purge: {}", output_text(&out).trim()),
    )?;
    let gone = [
        "/usr/bin/hangwatch",
        "/etc/hangwatch",
        "/lib/systemd/system/hangwatch.service",
        "/usr/share/hangwatch",
        "/usr/share/doc/hangwatch",
        "/usr/share/man/man1/hangwatch.1.gz",
    ];
    let left: Vec<&str> = gone
        .iter()
        .copied()
        .filter(|p| c.run(&["test", "-e", p]).status.success())
        .collect();
    ensure(
        left.is_empty(),
        format!("purge removed {gone:?} (left: {left:?})"),
    )?;
    let kept = c.text(&["ls", bundles]);
    ensure(
        !kept.trim().is_empty(),
        format!("purge kept the bundles: {}", kept.trim().replace('\n', " ")),
    )
}

fn image(image: &str, version: &str) -> Check {
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(["--runtime", "runc"]).args(args.iter().take(1));
        // This machine's hybrid cgroups refuse podman's default limits (crun fails at
        // once, runc at the rlimit): lower ones, as a DaemonSet's runtime would set.
        if args.first() == Some(&"run") {
            c.args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ]);
        }
        c.args(args.iter().skip(1));
        c
    };
    let said = version_of(&mut podman(&["run", "--rm", image, "--version"]));
    ensure(said == version, format!("the image's binary says {said:?}"))?;
    let label = "{{index .Labels \"org.opencontainers.image.revision\"}}";
    let revision = version_of(&mut podman(&["image", "inspect", "--format", label, image]));
    ensure(
        !revision.is_empty() && version.contains(&format!("(commit {revision})")),
        format!("the image's revision label is {revision:?}"),
    )?;
    let listen = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let engine = format!("vllm-{port}");
    let bundles = tempfile::tempdir().map_err(|e| e.to_string())?;
    let name = format!("hangwatch-check-{}", std::process::id());
    let volume = format!("{}:/var/lib/hangwatch", bundles.path().display());
    let out = podman(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--pid=host",
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--cap-add=SYS_PTRACE,DAC_READ_SEARCH,SYS_NICE,SYS_ADMIN",
        "--env",
        &format!("HANGWATCH_ENGINES={engine}"),
        "-v",
        &volume,
        image,
        "run",
        "--config",
        "/etc/hangwatch/hangwatch.toml",
        "--listen",
        &listen,
    ])
    .output()
    .map_err(|e| e.to_string())?;
    ensure(
        out.status.success(),
        format!("podman run -d: {}", output_text(&out).trim()),
    )?;
    let logs = || {
        output_text(
            &podman(&["logs", &name])
                .output()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let result = names_the_stopped_rank(&listen, port, bundles.path());
    let log = logs();
    let _ = podman(&["rm", "-f", &name]).output();
    result.map_err(|e| format!("{e}\n{log}"))
}

/// With the image's agent up on `listen`: a simulated engine on the host (port `port`)
/// whose rank 1 stops is named, and its bundle, with the other ranks' stacks, lands on
/// the host volume `bundles`. The engine lives until the stack round is written.
fn names_the_stopped_rank(listen: &str, port: u16, bundles: &Path) -> Check {
    let up = wait_for(Duration::from_secs(20), || {
        http_get(listen, "/healthz").filter(|(c, _)| *c == 200)
    });
    ensure(
        up.is_some(),
        format!("the image's agent answers /healthz on {listen}"),
    )?;
    let engine = format!("vllm-{port}");
    let sim = Sim::start_on(port, &RANK_1_STOPS, &[]);
    let fault = sim.wait_event("fault", Duration::from_secs(20));
    let named = wait_for(Duration::from_secs(30), || {
        let (_, body) = http_get(listen, "/status")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let i = v["incidents"]
            .as_array()?
            .iter()
            .find(|i| i["engine"] == engine.as_str())?;
        (i["suspects"][0]["rank"] == 1).then(|| i["opened_ms"].as_f64().unwrap_or(0.0))
    });
    let at = fault.and_then(|f| f["at"].as_f64()).unwrap_or(0.0) * 1000.0;
    ensure(
        named.is_some(),
        format!(
            "the image's agent names the stopped rank 1 of {engine} ({:.1} s after the fault)",
            named.map(|o| (o - at) / 1000.0).unwrap_or(f64::NAN)
        ),
    )?;
    // The others' stacks (waiting in all_reduce) in the bundle, once its stack round is
    // written: py-spy works from the scratch image, through /proc/<pid>/root, with the
    // manifests' capabilities.
    let read = || {
        walk_summaries(bundles)
            .first()
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    let summary = wait_for(Duration::from_secs(30), || {
        read().filter(|s| s.contains("all_reduce"))
    })
    .or_else(read)
    .unwrap_or_default();
    drop(sim);
    ensure(
        summary.contains("all_reduce"),
        format!(
            "a bundle with the ranks' stacks on the host volume: {:?}",
            walk_summaries(bundles)
        ),
    )
    .map_err(|e| format!("{e}\n{summary}"))
}

fn walk_summaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(walk_summaries(&p));
        } else if p.file_name().is_some_and(|n| n == "summary.txt") {
            found.push(p);
        }
    }
    found
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(deb), Some(img), Some(bin)) = (
        arg_value(&args, "--deb"),
        arg_value(&args, "--image"),
        arg_value(&args, "--binary"),
    ) else {
        eprintln!("usage: package-check --deb FILE --image NAME --binary FILE");
        std::process::exit(2);
    };
    let version = version_of(Command::new(&bin).arg("--version"));
    println!("binary: {version}");
    let checks = package(&PathBuf::from(&deb), &version).and_then(|_| image(&img, &version));
    if let Err(e) = checks {
        eprintln!("FAILED {e}");
        std::process::exit(1);
    }
    println!("package-check: all passed");
}
