//! `hch train` killed (SIGKILL) in the middle of a round resumes from the last published
//! generation, keeps every target it had committed and writes none twice; and, with the optimiser,
//! the teacher and the sampler restored from the checkpoint, it ends with the very weights of a
//! run that was never interrupted.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use hch::train::store::TargetStore;

const PARTS_PER_ROUND: u32 = 4;
const ROUNDS: u64 = 4;

fn train(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["train", "--local", "-d", "permutation", "--size", "6"])
        .args([
            "--start-size",
            "6",
            "--roots",
            "128",
            "--roots-per-part",
            "32",
        ])
        .args([
            "--steps",
            "40",
            "--heldout",
            "64",
            "--batch",
            "32",
            "--seed",
            "3",
            "--ema-horizon",
            "50",
            "--reproducible",
        ])
        .args(["--rounds", &ROUNDS.to_string()])
        .arg("--run")
        .arg(dir)
        // Bit for bit needs the CPU, even where a GPU is present.
        .env("HCH_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hch starts")
}

/// (round, part, sha256) of every committed shard, read from the manifest as it is on disk.
fn committed(dir: &Path) -> Vec<(u64, u32, String)> {
    #[derive(serde::Deserialize)]
    struct Shard {
        round: u64,
        part: u32,
        sha256: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        shards: Vec<Shard>,
    }
    match std::fs::read(dir.join("targets/manifest.json")) {
        // The manifest is replaced atomically, so a read sees a whole one.
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
            .expect("the manifest is whole")
            .shards
            .into_iter()
            .map(|s| (s.round, s.part, s.sha256))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_killed_run_resumes_without_losing_or_duplicating_targets() {
    let dir = std::env::temp_dir().join(format!("hch-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Kill the trainer once round 1 has committed some of its target parts but not all: in the
    // middle of amplification, with round 0's generation published.
    let mut child = train(&dir);
    let before_kill = loop {
        let shards = committed(&dir);
        let round1 = shards.iter().filter(|s| s.0 == 1).count() as u32;
        if round1 >= 1 {
            child.kill().unwrap();
            child.wait().unwrap();
            break committed(&dir);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hch train exited ({status}) before round 1 committed targets");
        }
        std::thread::yield_now();
    };
    let round1_before = before_kill.iter().filter(|s| s.0 == 1).count() as u32;
    assert!(round1_before >= 1);
    eprintln!("killed with {round1_before} of {PARTS_PER_ROUND} parts of round 1 committed");

    // Resume with the same command and let it finish.
    let resumed = train(&dir).wait_with_output().unwrap();
    assert!(
        resumed.status.success(),
        "resumed run failed: {}",
        String::from_utf8_lossy(&resumed.stderr)
    );

    // Nothing committed before the kill was lost or rewritten.
    let after = committed(&dir);
    for shard in &before_kill {
        assert!(after.contains(shard), "{shard:?} was lost or rewritten");
    }
    // Every part of every round exactly once.
    for round in 0..ROUNDS {
        let mut parts: Vec<u32> = after.iter().filter(|s| s.0 == round).map(|s| s.1).collect();
        parts.sort_unstable();
        assert_eq!(
            parts,
            (0..PARTS_PER_ROUND).collect::<Vec<_>>(),
            "round {round}"
        );
    }
    // Every row verifies on read and appears once.
    let store = TargetStore::open(dir.join("targets"), "permutation").unwrap();
    let rows = store.all().unwrap();
    let mut keys: Vec<_> = rows.iter().map(|r| (r.round, r.index)).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicated targets");
    // One generation per round after the random one, each trained by its round.
    let registry = hch::registry::Registry::open(dir.join("registry")).unwrap();
    let manifests = registry.list().unwrap();
    assert_eq!(manifests.len() as u64, ROUNDS + 1);
    for m in &manifests[1..] {
        let record = hch::train::RoundRecord::from_manifest(m).unwrap();
        assert_eq!(record.round, Some(m.generation - 1));
    }

    // The same command, never interrupted, publishes the same weights in every generation: Adam's
    // moments, the teacher's average and the minibatch sampler continued exactly.
    let straight = dir.with_extension("straight");
    let _ = std::fs::remove_dir_all(&straight);
    let uninterrupted = train(&straight).wait_with_output().unwrap();
    assert!(
        uninterrupted.status.success(),
        "uninterrupted run failed: {}",
        String::from_utf8_lossy(&uninterrupted.stderr)
    );
    let weights = |dir: &Path| -> Vec<String> {
        hch::registry::Registry::open(dir.join("registry"))
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.weights_sha256)
            .collect()
    };
    assert_eq!(weights(&dir), weights(&straight));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&straight).unwrap();
}
