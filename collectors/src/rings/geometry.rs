//! A vLLM ring's geometry from its exact file size, and its role from who maps it.
//!
//! Layout (see docs/vllm.md): `K` chunks of `C` bytes of data, then `K` flag groups of
//! `1 + n` bytes (written, read by reader 0..n). Size = `(C + 1 + n) · K`. vLLM's chunk
//! sizes are whole MiB, so `C` is the largest whole MiB not above `size / K`.

use hangwatch_rules::RingRole;

const MIB: u64 = 1 << 20;
/// Chunk counts vLLM uses: RPC and reply rings 10, TP broadcaster 6; 8 seen elsewhere.
const CHUNK_COUNTS: [u64; 3] = [10, 6, 8];
const MAX_READERS: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub chunk_bytes: u64,
    pub chunks: u32,
    pub readers: u32,
}

impl Geometry {
    pub fn flags_offset(&self) -> u64 {
        self.chunk_bytes * u64::from(self.chunks)
    }

    pub fn flags_len(&self) -> usize {
        (1 + self.readers as usize) * self.chunks as usize
    }

    pub fn size(&self) -> u64 {
        (self.chunk_bytes + 1 + u64::from(self.readers)) * u64::from(self.chunks)
    }
}

/// Every geometry the size allows. `mappers`, when known, is the number of processes
/// that map the segment (readers + writer) and picks among candidates.
pub fn geometry_from_size(size: u64, mappers: Option<usize>) -> Option<Geometry> {
    let candidates: Vec<Geometry> = CHUNK_COUNTS
        .iter()
        .filter(|&&k| size.is_multiple_of(k))
        .filter_map(|&k| {
            let per = size / k;
            let c = (per / MIB) * MIB;
            if c == 0 {
                return None;
            }
            let n = per.checked_sub(c + 1)?;
            (1..=MAX_READERS).contains(&n).then_some(Geometry {
                chunk_bytes: c,
                chunks: k as u32,
                readers: n as u32,
            })
        })
        .collect();
    match mappers {
        Some(m) => candidates
            .iter()
            .find(|g| g.readers as usize + 1 == m)
            .copied(),
        None => candidates.first().copied(),
    }
}

/// Who maps a segment, by what they are to the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mappers {
    pub engine_core: bool,
    /// Ranks of the workers that map it, sorted.
    pub ranks: Vec<u32>,
}

/// A ring's role and which rank each reader is, or why it is not one of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub role: RingRole,
    pub writer_rank: Option<u32>,
    pub reader_ranks: Vec<Option<u32>>,
}

/// Engine core + all workers → RPC ring (reader index = rank); engine core + one worker
/// → that worker's reply ring (reader 0 = engine core); workers only → TP broadcaster
/// (writer = lowest rank of the group, readers the others in order).
pub fn classify(geo: &Geometry, m: &Mappers, world: u32) -> Result<Classified, String> {
    let n = geo.readers as usize;
    if m.engine_core && m.ranks.len() == world as usize && n == world as usize {
        return Ok(Classified {
            role: RingRole::Rpc,
            writer_rank: None,
            reader_ranks: (0..world).map(Some).collect(),
        });
    }
    if m.engine_core && m.ranks.len() == 1 && n == 1 {
        return Ok(Classified {
            role: RingRole::Reply { rank: m.ranks[0] },
            writer_rank: Some(m.ranks[0]),
            reader_ranks: vec![None],
        });
    }
    if !m.engine_core && m.ranks.len() == n + 1 && n >= 1 {
        return Ok(Classified {
            role: RingRole::TpBroadcast,
            writer_rank: Some(m.ranks[0]),
            reader_ranks: m.ranks[1..].iter().copied().map(Some).collect(),
        });
    }
    Err(format!(
        "{} readers mapped by {} (engine core: {}) fits no vLLM ring",
        n,
        m.ranks.len() + usize::from(m.engine_core),
        m.engine_core
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_vllm_sizes() {
        let rpc2 = geometry_from_size(167_772_190, Some(3)).unwrap();
        assert_eq!(
            (rpc2.chunk_bytes, rpc2.chunks, rpc2.readers),
            (16 * MIB, 10, 2)
        );
        let rpc8 = geometry_from_size(167_772_250, Some(9)).unwrap();
        assert_eq!(
            (rpc8.chunk_bytes, rpc8.chunks, rpc8.readers),
            (16 * MIB, 10, 8)
        );
        let reply = geometry_from_size(251_658_260, Some(2)).unwrap();
        assert_eq!(
            (reply.chunk_bytes, reply.chunks, reply.readers),
            (24 * MIB, 10, 1)
        );
        let tp2 = geometry_from_size(25_165_836, Some(2)).unwrap();
        assert_eq!((tp2.chunk_bytes, tp2.chunks, tp2.readers), (4 * MIB, 6, 1));
        let tp8 = geometry_from_size(25_165_872, Some(8)).unwrap();
        assert_eq!((tp8.chunk_bytes, tp8.chunks, tp8.readers), (4 * MIB, 6, 7));
        assert_eq!(rpc2.size(), 167_772_190);
        assert_eq!(rpc2.flags_offset(), 167_772_160);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(geometry_from_size(32, None), None);
        assert_eq!(geometry_from_size(4_194_560, None), None); // cpushm buffer
        assert_eq!(geometry_from_size(10 * MIB * 10, None), None); // n = -1
        assert_eq!(geometry_from_size(167_772_190, Some(5)), None); // mapper count disagrees
    }

    #[test]
    fn roles_by_mappers() {
        let g = |n| Geometry {
            chunk_bytes: MIB,
            chunks: 10,
            readers: n,
        };
        let rpc = classify(
            &g(4),
            &Mappers {
                engine_core: true,
                ranks: vec![0, 1, 2, 3],
            },
            4,
        )
        .unwrap();
        assert_eq!(rpc.role, RingRole::Rpc);
        assert_eq!(rpc.reader_ranks, vec![Some(0), Some(1), Some(2), Some(3)]);
        let reply = classify(
            &g(1),
            &Mappers {
                engine_core: true,
                ranks: vec![2],
            },
            4,
        )
        .unwrap();
        assert_eq!(reply.role, RingRole::Reply { rank: 2 });
        let tp = classify(
            &g(3),
            &Mappers {
                engine_core: false,
                ranks: vec![4, 5, 6, 7],
            },
            8,
        )
        .unwrap();
        assert_eq!(tp.role, RingRole::TpBroadcast);
        assert_eq!(tp.writer_rank, Some(4));
        assert_eq!(tp.reader_ranks, vec![Some(5), Some(6), Some(7)]);
        assert!(classify(
            &g(2),
            &Mappers {
                engine_core: true,
                ranks: vec![0]
            },
            4
        )
        .is_err());
    }
}
