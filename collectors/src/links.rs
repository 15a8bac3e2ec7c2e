//! A follower node's tie to the rest of its deployment: the established TCP
//! connections of its workers (ZMQ to the leader's engine core, the collectives' store
//! and peers). Measured on vLLM 0.32 (TP=2 over two nodes): 9 established while the
//! leader lives, none 0.5 s after the leader was killed, and the worker lives on
//! (`docs/multi-node.md`, "Orphans").

use crate::capped::read_capped;
use crate::process::ProcRoot;
use std::collections::HashSet;

/// Descriptors looked at per process: a worker has hundreds, never this many.
const MAX_FDS: usize = 65_536;
/// A TCP table larger than this is not read (a node with that many sockets still
/// reads its first 8 MB: the count is then a lower bound, which is all `> 0` needs).
const MAX_TABLE: u64 = 8 * 1024 * 1024;

/// Established TCP connections of these processes, all together; none when nothing
/// could be read (not "zero": an unreadable process says nothing).
pub fn established(proc: &ProcRoot, pids: &[u32]) -> Option<u32> {
    let mut inodes: HashSet<String> = HashSet::new();
    let mut read_any = false;
    for pid in pids {
        let dir = proc.root.join(pid.to_string()).join("fd");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        read_any = true;
        for e in rd.flatten().take(MAX_FDS) {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let first = pids.first()?;
    if !read_any {
        return None;
    }
    let mut n = 0u32;
    for table in ["tcp", "tcp6"] {
        let path = proc.root.join(first.to_string()).join("net").join(table);
        let Ok(bytes) = read_capped(&path, MAX_TABLE) else {
            continue;
        };
        n += count(&String::from_utf8_lossy(&bytes), &inodes);
    }
    Some(n)
}

/// Lines of a `/proc/net/tcp` table in state `01` (established) whose inode is ours.
fn count(table: &str, inodes: &HashSet<String>) -> u32 {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&"01") && f.get(9).is_some_and(|i| inodes.contains(*i))
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_our_established_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0100007F:9C42 0100007F:1F90 08 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1
garbage line
";
        let ours: HashSet<String> = ["111", "222", "444"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(count(table, &ours), 1);
        assert_eq!(count("", &ours), 0);
    }

    #[test]
    fn this_process_is_readable() {
        let proc = ProcRoot::new("/proc");
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        let (_s, _) = listener.accept().expect("accept");
        // Both ends are ours: two established lines at least (other tests of this
        // process may have connections of their own open meanwhile).
        let n = established(&proc, &[me]).unwrap_or(0);
        assert!(n >= 2, "{n}");
        assert_eq!(established(&proc, &[u32::MAX]), None);
    }
}
