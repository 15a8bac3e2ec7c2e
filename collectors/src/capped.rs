//! Reads of `/proc/<pid>/...` files with a cap, `cmdline` and `environ` among them: any local user can start a
//! process with megabytes of arguments or environment, and the agent reads every
//! process's command line every tick. A longer file is cut at the cap (the part read is
//! still used: titles and the variables hangwatch cares about come first in practice).

use std::io::Read;
use std::path::Path;

/// More than any vLLM command line needs (`vllm serve` with every flag is a few KiB).
pub const CMDLINE_CAP: u64 = 64 * 1024;
/// More than any real deployment's environment (Linux allows far more).
pub const ENVIRON_CAP: u64 = 1024 * 1024;

/// At most `cap` bytes of a file another party writes.
pub(crate) fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}

fn nul_separated(bytes: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// The process's arguments, at most `CMDLINE_CAP` bytes of them.
pub fn cmdline(proc_root: &Path, pid: u32) -> std::io::Result<Vec<String>> {
    let bytes = read_capped(
        &proc_root.join(pid.to_string()).join("cmdline"),
        CMDLINE_CAP,
    )?;
    Ok(nul_separated(&bytes))
}

/// The process's environment as `(name, value)`, at most `ENVIRON_CAP` bytes of it.
pub fn environ(proc_root: &Path, pid: u32) -> std::io::Result<Vec<(String, String)>> {
    let bytes = read_capped(
        &proc_root.join(pid.to_string()).join("environ"),
        ENVIRON_CAP,
    )?;
    Ok(nul_separated(&bytes)
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_files_are_cut_and_nuls_split() {
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("1");
        std::fs::create_dir(&p).expect("dir");
        let mut huge = b"python3\0-m\0vllm\0".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        std::fs::write(p.join("cmdline"), &huge).expect("write");
        let args = cmdline(d.path(), 1).expect("cmdline");
        assert_eq!(&args[..3], ["python3", "-m", "vllm"]);
        let total: usize = args.iter().map(|a| a.len() + 1).sum();
        assert!(total as u64 <= CMDLINE_CAP + 1, "{total}");
        std::fs::write(p.join("environ"), b"A=1\0NCCL_DEBUG=INFO\0BROKEN\0B=x=y\0").expect("write");
        let env = environ(d.path(), 1).expect("environ");
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("NCCL_DEBUG".to_string(), "INFO".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
    }
}
