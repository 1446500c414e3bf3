//! The fuzz targets' inputs, replayed on every `cargo test`: the seeds made here from valid
//! inputs, and every file of the corpora the fuzzers grew (`fuzz/corpus/<target>/`, kept in the
//! repository). A regression on an input the fuzzers once found is caught here without libFuzzer
//! or a nightly toolchain; `scripts/fuzz.sh` runs the fuzzers themselves.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` writes the seeds into the corpora
//! (the fuzz script does, before it fuzzes).

use std::path::{Path, PathBuf};

use hch::domain::{Domain, DomainKind, Instance};
use hch::rng::Rng;
use hch::rpc::pb;
use hch::with_domain;
use prost::Message;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("text", hch::fuzzing::text),
    ("coordinator_call", hch::fuzzing::coordinator_call),
    ("worker_call", hch::fuzzing::worker_call),
    ("tokens", hch::fuzzing::tokens),
    ("certificate", hch::fuzzing::certificate),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Prefixes a message with the handler targets' selector and (empty) header length.
fn call(selector: u8, message: &impl Message) -> Vec<u8> {
    let mut bytes = vec![selector, 0];
    bytes.extend(message.encode_to_vec());
    bytes
}

/// Valid inputs of each target, so the fuzzers start inside the formats.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (i, kind) in DomainKind::ALL.into_iter().enumerate() {
        with_domain!(kind, d => {
            let inst = Instance::generate(&d, 6, i as u64).unwrap();
            let facts = d.print_facts(inst.facts());
            let q = d.sample_question(inst.facts(), &mut Rng::new(i as u64));
            let question = d.print_question(&q);
            let answer = d.print_answer(&d.truth(inst.facts(), &q));
            for (which, text) in [(0u8, &facts), (1, &question), (2, &answer), (3, &answer)] {
                let mut bytes = vec![i as u8 + 8 * which];
                bytes.extend(text.as_bytes());
                seeds.push(("text", bytes));
            }
            for mode in ["amplified", "hch:2", "exact", "distilled"] {
                let ask = pb::AskRequest {
                    domain: kind.name().to_string(),
                    instance: Some(pb::ask_request::Instance::InstanceText(facts.clone())),
                    question: question.clone(),
                    mode: mode.to_string(),
                    budget: Some(pb::Budget {
                        max_depth: Some(3),
                        max_nodes: Some(100),
                        deadline_ms: Some(100),
                    }),
                    want_trace: true,
                };
                seeds.push(("coordinator_call", call(0, &ask)));
                seeds.push(("coordinator_call", call(1, &ask)));
            }
            let answer_request = pb::AnswerRequest {
                domain: kind.name().to_string(),
                instances: vec![pb::Facts {
                    id: inst.id().0.to_vec(),
                    text: facts.clone(),
                }],
                questions: format!("{question}\n"),
                question_instances: vec![0],
            };
            seeds.push(("worker_call", call(0, &answer_request)));
        });
    }
    seeds.push((
        "coordinator_call",
        call(
            2,
            &pb::GetTraceRequest {
                tree_id: "00000000000000000000000000000000".into(),
            },
        ),
    ));
    seeds.push(("coordinator_call", call(3, &pb::StatusRequest {})));
    let mut traced = call(3, &pb::StatusRequest {});
    let header = b"00-0000000000000000000000000000abcd-0000000000000012-01";
    traced[1] = header.len() as u8;
    traced.splice(2..2, header.iter().copied());
    seeds.push(("coordinator_call", traced));
    seeds.push((
        "tokens",
        br#"{"clients":[{"name":"alice","token_sha256":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","rights":["ask","status"]}]}"#
            .to_vec(),
    ));
    seeds.push(("certificate", test_certificate()));
    seeds
}

/// A real certificate's DER (made with rcgen).
fn test_certificate() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn the_seeds_pass_every_target() {
    let seeds = seeds();
    for (name, _) in TARGETS {
        assert!(seeds.iter().any(|(n, _)| *n == name), "no seed for {name}");
    }
    for (name, bytes) in &seeds {
        target(name)(bytes);
    }
    // The certificate seed is read, not just survived.
    let der = test_certificate();
    let v = hch::tls::validity(&der).expect("a real certificate's validity");
    assert!(v.not_before < v.not_after);
}

#[test]
fn the_fuzzers_corpora_replay_without_a_failure() {
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(corpus_dir(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(
                outcome.is_ok(),
                "{name}: the corpus input {} fails",
                path.display()
            );
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus inputs");
}

#[test]
#[ignore = "writes the seeds into fuzz/corpus (scripts/fuzz.sh runs it)"]
fn write_seeds() {
    for (i, (name, bytes)) in seeds().into_iter().enumerate() {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).unwrap();
    }
}
