//! Opening what other parties make — log files, shared-memory segments — so that it can
//! never hang or mislead the agent: non-blocking (a FIFO put where a log was expected
//! would block `open` until a writer comes), never through a symbolic link at the last
//! step (a link swapped in would redirect a root daemon's reads), closed on exec, and
//! only regular files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                io::Error::new(io::ErrorKind::InvalidInput, "is a symbolic link: refused")
            }
            _ => e,
        })?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (a FIFO, socket or device): refused",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_links_and_devices_are_refused_without_blocking() {
        let d = tempfile::tempdir().expect("dir");
        let fifo = d.path().join("fifo.log");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("c path");
        // SAFETY: mkfifo on a path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).expect_err("fifo");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let file = d.path().join("real.log");
        std::fs::write(&file, "x\n").expect("write");
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(&file, &link).expect("link");
        let e = open_regular(&link).expect_err("link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_regular(Path::new("/dev/zero")).is_err());
        assert!(open_regular(&file).is_ok());
    }
}
