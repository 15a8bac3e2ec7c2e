//! Reads a ring's flag bytes (and the first bytes of each chunk) without disturbing it.
//!
//! The segment is opened read-only and read with `pread`: nothing is mapped writable,
//! nothing is written, and a vanished or resized segment is an error value, not a crash.

use super::geometry::Geometry;
use hangwatch_rules::ChunkFlags;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read from the start of each chunk: enough for the framing, the pickle header
/// and a method name (vLLM's method names sit in the first ~40 bytes).
pub const HEAD_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RingReadError {
    #[error("segment {path} is gone")]
    Gone { path: String },
    #[error("cannot read segment {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {path} changed size from {expected} to {actual} bytes")]
    Resized {
        path: String,
        expected: u64,
        actual: u64,
    },
}

/// What one look at a ring gives.
#[derive(Clone, Debug, PartialEq)]
pub struct RingRead {
    pub flags: Vec<ChunkFlags>,
    pub methods: BTreeMap<u32, String>,
    pub fingerprint: u64,
}

pub fn read_ring(path: &Path, geo: &Geometry) -> Result<RingRead, RingReadError> {
    let p = || path.display().to_string();
    let file = crate::safe_open::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RingReadError::Gone { path: p() },
        _ => RingReadError::Io {
            path: p(),
            source: e,
        },
    })?;
    let actual = file
        .metadata()
        .map_err(|e| RingReadError::Io {
            path: p(),
            source: e,
        })?
        .len();
    if actual != geo.size() {
        return Err(RingReadError::Resized {
            path: p(),
            expected: geo.size(),
            actual,
        });
    }
    let mut raw = vec![0u8; geo.flags_len()];
    file.read_exact_at(&mut raw, geo.flags_offset())
        .map_err(|e| RingReadError::Io {
            path: p(),
            source: e,
        })?;
    let group = 1 + geo.readers as usize;
    let flags: Vec<ChunkFlags> = raw.chunks(group).map(ChunkFlags::from_bytes).collect();

    let mut methods = BTreeMap::new();
    let mut hash = Fnv::new();
    let mut head = [0u8; HEAD_BYTES];
    for i in 0..geo.chunks {
        let len = (geo.chunk_bytes as usize).min(HEAD_BYTES);
        let buf = &mut head[..len];
        if file
            .read_exact_at(buf, u64::from(i) * geo.chunk_bytes)
            .is_err()
        {
            continue;
        }
        hash.write(buf);
        if flags.get(i as usize).is_some_and(|f| f.written) {
            if let Some(m) = method_name(buf) {
                methods.insert(i, m);
            }
        }
    }
    Ok(RingRead {
        flags,
        methods,
        fingerprint: hash.finish(),
    })
}

/// The RPC method in a chunk's head: vLLM frames a chunk as overflow byte, u16 buffer
/// count, u32 length, then buffer 0 = pickle of `(method, args, kwargs, output_rank)`;
/// the method is the pickle's first short string. Optional evidence: `None` when the
/// head does not look like that.
pub fn method_name(head: &[u8]) -> Option<String> {
    if head.first() != Some(&0) || head.len() < 8 {
        return None;
    }
    let pickle = &head[7..];
    if pickle.first() != Some(&0x80) {
        return None;
    }
    let mut i = 2;
    if pickle.get(i) == Some(&0x95) {
        i += 9; // FRAME opcode and its u64 length
    }
    while i + 1 < pickle.len() {
        match pickle[i] {
            // SHORT_BINUNICODE: u8 length, UTF-8 bytes.
            0x8c => {
                let n = usize::from(pickle[i + 1]);
                let s = pickle.get(i + 2..i + 2 + n)?;
                let name = std::str::from_utf8(s).ok()?;
                let ident = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                return ident.then(|| name.to_string());
            }
            // MARK, EMPTY_TUPLE, MEMOIZE: skip single-byte opcodes before the string.
            0x28 | 0x29 | 0x94 => i += 1,
            _ => return None,
        }
    }
    None
}

/// FNV-1a: a stable, dependency-free hash for change detection (not security).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(method: &str) -> Vec<u8> {
        let mut p = vec![0x80, 0x05, 0x95];
        p.extend_from_slice(&100u64.to_le_bytes());
        p.push(0x8c);
        p.push(method.len() as u8);
        p.extend_from_slice(method.as_bytes());
        p.push(0x94);
        let mut c = vec![0u8];
        c.extend_from_slice(&1u16.to_be_bytes());
        c.extend_from_slice(&(p.len() as u32).to_be_bytes());
        c.extend_from_slice(&p);
        c
    }

    #[test]
    fn reads_method_names() {
        assert_eq!(
            method_name(&frame("execute_model")).as_deref(),
            Some("execute_model")
        );
        assert_eq!(method_name(&frame("vllm.v1.outputs")), None);
        let mut overflow = frame("x");
        overflow[0] = 1;
        assert_eq!(method_name(&overflow), None);
        assert_eq!(method_name(&[0, 0, 0]), None);
        assert_eq!(method_name(&[0u8; 64]), None);
    }

    #[test]
    fn reads_flags_and_refuses_resized_or_missing_segments() {
        let geo = Geometry {
            chunk_bytes: 1 << 20,
            chunks: 10,
            readers: 2,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psm_00000001");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(geo.size()).unwrap();
        let head = frame("sample_tokens");
        f.write_all_at(&head, 1 << 20).unwrap();
        let mut flags = [1u8, 1, 1].repeat(10);
        flags[3..6].copy_from_slice(&[1, 1, 0]);
        f.write_all_at(&flags, geo.flags_offset()).unwrap();
        f.flush().unwrap();
        let r = read_ring(&path, &geo).unwrap();
        assert_eq!(r.flags[1].to_string(), "1|10");
        assert_eq!(r.flags[0].to_string(), "1|11");
        assert_eq!(r.methods.get(&1).map(String::as_str), Some("sample_tokens"));
        f.write_all_at(&frame("execute_model"), 2 << 20).unwrap();
        assert_ne!(read_ring(&path, &geo).unwrap().fingerprint, r.fingerprint);
        f.set_len(10).unwrap();
        assert!(matches!(
            read_ring(&path, &geo),
            Err(RingReadError::Resized { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_ring(&path, &geo),
            Err(RingReadError::Gone { .. })
        ));
    }
}
