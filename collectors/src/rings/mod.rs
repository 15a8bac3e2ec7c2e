//! vLLM's shared-memory rings: found once through `/proc/PID/maps`, then read every
//! tick through a read-only descriptor.

pub mod geometry;
pub mod reader;

use crate::process::ProcRoot;
use geometry::{classify, geometry_from_size, Geometry, Mappers};
use hangwatch_rules::{RingFacts, RingRole};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a ring lives and what it is; read each tick by `read_site`.
#[derive(Clone, Debug, PartialEq)]
pub struct RingSite {
    pub name: String,
    /// Path through a mapper's `/proc/PID/root`, so container paths resolve.
    pub path: PathBuf,
    pub geometry: Geometry,
    pub role: RingRole,
    pub writer_rank: Option<u32>,
    pub reader_ranks: Vec<Option<u32>>,
}

/// `psm_` segments mapped by the engine's processes, classified. Segments that fit no
/// vLLM ring are skipped with a debug line: other programs use Python shared memory too.
pub fn discover_rings(
    proc: &ProcRoot,
    core_pid: u32,
    rank_pids: &[(u32, u32)],
    world: u32,
) -> (Vec<RingSite>, Vec<String>) {
    let mut problems = Vec::new();
    // segment path (as the process sees it) → who maps it
    let mut seen: BTreeMap<String, (Mappers, u32)> = BTreeMap::new();
    let mut who: Vec<(Option<u32>, u32)> = vec![(None, core_pid)];
    who.extend(rank_pids.iter().map(|&(r, p)| (Some(r), p)));
    for (rank, pid) in who {
        let maps = match proc.process(pid).map(|p| p.maps()) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                problems.push(format!("cannot read maps of pid {pid}: {e}"));
                continue;
            }
            None => continue,
        };
        for m in maps.iter() {
            let procfs::process::MMapPath::Path(path) = &m.pathname else {
                continue;
            };
            let Some(text) = path.to_str() else { continue };
            if !is_ring_candidate(text) {
                continue;
            }
            let entry = seen
                .entry(text.to_string())
                .or_insert_with(|| (Mappers::default(), pid));
            match rank {
                None => entry.0.engine_core = true,
                Some(r) => {
                    if !entry.0.ranks.contains(&r) {
                        entry.0.ranks.push(r);
                    }
                }
            }
        }
    }
    let mut sites = Vec::new();
    for (seg, (mut mappers, via_pid)) in seen {
        mappers.ranks.sort_unstable();
        let path = proc.path_in(via_pid, &seg);
        let name = seg.rsplit('/').next().unwrap_or(&seg).to_string();
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::debug!(segment = %name, error = %e, "segment mapped but not readable");
                continue;
            }
        };
        let mapper_count = mappers.ranks.len() + usize::from(mappers.engine_core);
        let Some(geo) = geometry_from_size(size, Some(mapper_count)) else {
            tracing::debug!(segment = %name, size, mapper_count, "not a vLLM ring: size fits no geometry");
            continue;
        };
        match classify(&geo, &mappers, world) {
            Ok(c) => sites.push(RingSite {
                name,
                path,
                geometry: geo,
                role: c.role,
                writer_rank: c.writer_rank,
                reader_ranks: c.reader_ranks,
            }),
            Err(why) => tracing::debug!(segment = %name, %why, "not a vLLM ring"),
        }
    }
    sites.sort_by(|a, b| {
        role_order(&a.role)
            .cmp(&role_order(&b.role))
            .then(a.name.cmp(&b.name))
    });
    (sites, problems)
}

fn role_order(r: &RingRole) -> (u8, u32) {
    match r {
        RingRole::Rpc => (0, 0),
        RingRole::Reply { rank } => (1, *rank),
        RingRole::TpBroadcast => (2, 0),
    }
}

/// `/dev/shm/psm_<hex>`, not deleted.
fn is_ring_candidate(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/dev/shm/") else {
        return false;
    };
    name.starts_with("psm_") && !name.contains('/') && !name.ends_with("(deleted)")
}

/// One tick's look at a ring; a failure becomes `error` on the facts.
pub fn read_site(site: &RingSite) -> RingFacts {
    let mut facts = RingFacts {
        name: site.name.clone(),
        role: site.role.clone(),
        size: site.geometry.size(),
        chunk_bytes: site.geometry.chunk_bytes,
        chunks: site.geometry.chunks,
        readers: site.geometry.readers,
        writer_rank: site.writer_rank,
        reader_ranks: site.reader_ranks.clone(),
        flags: None,
        methods: BTreeMap::new(),
        fingerprint: None,
        error: None,
    };
    match reader::read_ring(&site.path, &site.geometry) {
        Ok(r) => {
            facts.flags = Some(r.flags);
            facts.methods = r.methods;
            facts.fingerprint = Some(r.fingerprint);
        }
        Err(e) => facts.error = Some(e.to_string()),
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        assert!(is_ring_candidate("/dev/shm/psm_3c72eaa0"));
        assert!(!is_ring_candidate("/dev/shm/psm_3c72eaa0 (deleted)"));
        assert!(!is_ring_candidate(
            "/dev/shm/vllm_dist_x-tp:0-[0-1]-cpushm_0"
        ));
        assert!(!is_ring_candidate("/tmp/psm_1"));
    }
}
