//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same target bodies the fuzzer runs (`wsrelay::fuzzing`), on stable Rust:
//! an input that once crashed a target, kept in its corpus, stays fixed.

use std::path::PathBuf;

#[test]
fn every_corpus_replays_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in wsrelay::fuzzing::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a seed corpus)", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // A panic names the input through the test's output.
            eprintln!("{name}: {}", path.display());
            target(&data);
            n += 1;
        }
        assert!(n > 0, "{name} has an empty corpus");
        replayed += n;
    }
    assert!(replayed >= wsrelay::fuzzing::TARGETS.len());
}
