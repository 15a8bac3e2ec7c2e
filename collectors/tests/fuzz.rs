//! Every parser of what other parties write is total: arbitrary input, and real lines
//! (`testdata/fuzz/`) cut and sprinkled with arbitrary characters, never panic. Bounded:
//! proptest's default 256 cases per property (`PROPTEST_CASES` to run more); the
//! numbers run are in docs/results/fuzz.md.

use hangwatch_collectors::logs::cri::Joiner;
use hangwatch_collectors::logs::parse::{classify, parse_prefix};
use hangwatch_collectors::nccl_ras::parse_status;
use hangwatch_collectors::rings::geometry::geometry_from_size;
use hangwatch_collectors::rings::reader::method_name;
use hangwatch_collectors::title::{classify as classify_title, serve_args};
use hangwatch_collectors::vllm_metrics::parse as parse_metrics;
use hangwatch_rules::ChunkFlags;
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz/log-lines.txt");
    let mut lines: Vec<String> = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect();
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vllm/tp2-rank1-stopped-until-timeout.serve.log");
    let text = std::fs::read(real).expect("real log");
    lines.extend(
        String::from_utf8_lossy(&text)
            .lines()
            .take(300)
            .map(String::from),
    );
    lines
}

/// A corpus line, cut at a random place and with random characters put in.
fn mutated() -> impl Strategy<Value = String> {
    let lines = corpus();
    (
        0..lines.len(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..6),
    )
        .prop_map(move |(i, cut, inserts)| {
            let mut l = lines[i].clone();
            let cuts: Vec<usize> = l.char_indices().map(|(b, _)| b).chain([l.len()]).collect();
            l.truncate(cuts[cut.index(cuts.len())]);
            for (at, ch) in inserts {
                let spots: Vec<usize> = l.char_indices().map(|(b, _)| b).chain([l.len()]).collect();
                l.insert(spots[at.index(spots.len())], ch);
            }
            l
        })
}

proptest! {
    #[test]
    fn log_lines(line in mutated()) {
        let _ = classify(&line);
        let _ = parse_prefix(&line);
        let mut j = Joiner::default();
        let _ = j.push(&line);
        let _ = j.push(&line);
    }

    #[test]
    fn arbitrary_text(s in any::<String>()) {
        let _ = classify(&s);
        let _ = parse_metrics(&s);
        let _ = parse_status(&s);
        let _ = s.parse::<ChunkFlags>();
        let mut j = Joiner::default();
        let _ = j.push(&s);
    }

    #[test]
    fn chunk_heads_and_sizes(head in prop::collection::vec(any::<u8>(), 0..96), size in any::<u64>(), mappers in any::<Option<usize>>()) {
        let _ = method_name(&head);
        let _ = geometry_from_size(size, mappers);
    }

    #[test]
    fn metrics_and_ras_lines(lines in prop::collection::vec("[a-z:_{}=\"\\\\ ,.0-9e+-]{0,60}", 0..20)) {
        let text = lines.join("\n");
        let _ = parse_metrics(&text);
        let _ = parse_status(&format!("{{{text}}}"));
    }

    #[test]
    fn proc_files(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("7");
        std::fs::create_dir(&p).expect("dir");
        std::fs::write(p.join("cmdline"), &bytes).expect("write");
        std::fs::write(p.join("environ"), &bytes).expect("write");
        let _ = hangwatch_collectors::capped::cmdline(d.path(), 7);
        let _ = hangwatch_collectors::capped::environ(d.path(), 7);
        for b in &bytes {
            let _ = hangwatch_rules::ProcState::from_char(char::from(*b));
        }
    }

    #[test]
    fn command_lines(args in prop::collection::vec(any::<String>(), 0..8)) {
        let _ = classify_title(&args);
        let _ = serve_args(&args);
    }
}
