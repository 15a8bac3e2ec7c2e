//! Whether a process really listens on a TCP port: any local user can start a process
//! whose command line claims `--port 8000`, but only one process holds the listening
//! socket. Read from the process's own network namespace (`/proc/<pid>/net/tcp`,
//! `tcp6`: the socket's inode in state LISTEN) and its descriptors
//! (`/proc/<pid>/fd/* → socket:[inode]`), both capped.

use std::path::Path;

/// Enough for the socket tables of a busy node.
const TABLE_CAP: u64 = 8 * 1024 * 1024;
/// Descriptors looked at, at most.
const FDS_CAP: usize = 65_536;

/// Inodes of sockets listening on `port` in one `/proc/net/tcp`-format table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let state = f.get(3)?;
            let inode = f.get(9)?.parse::<u64>().ok()?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *state == "0A").then_some(inode)
        })
        .collect()
}

/// A socket table, at most `TABLE_CAP` bytes of it (empty when unreadable).
fn table(path: &Path) -> String {
    crate::capped::read_capped(path, TABLE_CAP)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn listens_on(proc_root: &Path, pid: u32, port: u16) -> bool {
    let dir = proc_root.join(pid.to_string());
    let mut inodes = listening_inodes(&table(&dir.join("net/tcp")), port);
    inodes.extend(listening_inodes(&table(&dir.join("net/tcp6")), port));
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    fds.flatten().take(FDS_CAP).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_listening_sockets_on_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n   2: garbage\n";
        assert_eq!(listening_inodes(table, 8000), vec![4242]);
        assert!(listening_inodes(table, 8001).is_empty());
    }

    #[test]
    fn this_process_listens_where_it_bound() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = std::process::id();
        assert!(listens_on(Path::new("/proc"), me, port));
        assert!(!listens_on(Path::new("/proc"), me, port.wrapping_add(1)));
    }
}
