//! Generations over the network: a registry served over gRPC on a real socket (`hch registry
//! serve`'s server), copied into another directory (a worker's cache) by the mirror. The copy is
//! made only of a promoted generation, byte for byte, verified; a corrupted source is refused
//! and leaves the copy as it was.

use std::path::{Path, PathBuf};

use hch::registry::service::{mirror_once, MirrorError};
use hch::registry::{NewGeneration, Registry, RegistryError};
use hch::rpc::pb;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Publishes a generation whose weights are `bytes` (the registry does not look inside).
fn publish(registry: &Registry, parent: Option<u64>, bytes: &[u8]) -> u64 {
    let new = NewGeneration {
        domain: "wildcard".into(),
        parent,
        config: serde_json::json!({"preset": "test"}),
        training_steps: 1,
        record: serde_json::json!({}),
        note: "made by the test".into(),
    };
    registry
        .publish(new, |path: &Path| std::fs::write(path, bytes))
        .unwrap()
        .generation
}

/// Weights of `len` bytes, different for each `seed`, spanning several streamed chunks.
fn weights(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn weights_of(root: &Path, generation: u64) -> Vec<u8> {
    let registry = Registry::open(root).unwrap();
    let loaded = registry.load(generation).unwrap();
    std::fs::read(loaded.weights_path).unwrap()
}

/// Entries of the copy's `generations/` directory (staging directories included).
fn entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_generations_are_copied_verified_and_corruption_is_refused() {
    let source_dir = temp_dir("registry-source");
    let copy_dir = temp_dir("registry-copy");
    let source = Registry::open(&source_dir).unwrap();

    let (mut client, url) = serve(&source_dir).await;

    // Nothing promoted yet: nothing to copy, and the copy stays empty.
    let g0 = publish(&source, None, &weights(2_500_000, 0));
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        None
    );
    assert!(Registry::open(&copy_dir)
        .unwrap()
        .current()
        .unwrap()
        .is_none());

    // Promoted: copied byte for byte (three chunks), and current in the copy.
    source.promote(g0).unwrap();
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        Some(g0)
    );
    let copy = Registry::open(&copy_dir).unwrap();
    assert_eq!(copy.current().unwrap(), Some(g0));
    assert_eq!(weights_of(&copy_dir, g0), weights_of(&source_dir, g0));
    assert_eq!(copy.manifest(g0).unwrap().1, source.manifest(g0).unwrap().1);
    // Asking again changes nothing.
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        Some(g0)
    );

    // The next generation, promoted: copied and made current.
    let g1 = publish(&source, Some(g0), &weights(1_000_001, 1));
    source.promote(g1).unwrap();
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        Some(g1)
    );
    assert_eq!(copy.current().unwrap(), Some(g1));
    assert_eq!(weights_of(&copy_dir, g1), weights_of(&source_dir, g1));

    // A generation whose weights were damaged on the source after promotion: refused, with
    // the error naming the mismatch; the copy keeps g1 current and keeps nothing of g2.
    let g2 = publish(&source, Some(g1), &weights(1_500_000, 2));
    source.promote(g2).unwrap();
    let damaged = source.load(g2).unwrap().weights_path;
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[1_234_567] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    match mirror_once(&mut client, &url, &copy_dir).await {
        Err(MirrorError::Local(RegistryError::WeightsCorrupted { .. })) => {}
        other => panic!("expected the damaged weights to be refused, got {other:?}"),
    }
    assert_eq!(copy.current().unwrap(), Some(g1));
    assert_eq!(
        entries(&copy_dir),
        ["g000000", "g000001"],
        "nothing of g2 is left"
    );

    // A truncated source is refused as well (the size, before the hash).
    bytes.truncate(1_000_000);
    std::fs::write(&damaged, &bytes).unwrap();
    match mirror_once(&mut client, &url, &copy_dir).await {
        Err(MirrorError::Local(RegistryError::WeightsSize { .. })) => {}
        other => panic!("expected the truncated weights to be refused, got {other:?}"),
    }
    assert_eq!(entries(&copy_dir), ["g000000", "g000001"]);

    // A generation the source does not have is NOT_FOUND, named.
    let missing = client
        .fetch(pb::FetchRequest { generation: 99 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    std::fs::remove_dir_all(source_dir).unwrap();
    std::fs::remove_dir_all(copy_dir).unwrap();
}

/// Serves the registry at `root` on a fresh port; returns a client and its URL.
async fn serve(
    root: &Path,
) -> (
    pb::registry_client::RegistryClient<tonic::transport::Channel>,
    String,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(hch::server::serve_registry(
        listener,
        None,
        root.to_path_buf(),
        None,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        pb::registry_client::RegistryClient::new(channel)
            .max_decoding_message_size(2 * hch::registry::service::CHUNK_BYTES),
        url,
    )
}

/// A source that started over (a trainer whose run was recreated numbers its generations from 0
/// again): the copy's own generation 0, from the old source, is replaced by the new one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_follows_a_source_that_started_over() {
    let (old_dir, new_dir, copy_dir) = (
        temp_dir("registry-old"),
        temp_dir("registry-new"),
        temp_dir("registry-follows"),
    );
    let (old, new) = (
        Registry::open(&old_dir).unwrap(),
        Registry::open(&new_dir).unwrap(),
    );
    let g = publish(&old, None, &weights(300_000, 7));
    old.promote(g).unwrap();
    let (mut client, url) = serve(&old_dir).await;
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        Some(0)
    );

    let g = publish(&new, None, &weights(200_000, 8));
    new.promote(g).unwrap();
    let (mut client, url) = serve(&new_dir).await;
    assert_eq!(
        mirror_once(&mut client, &url, &copy_dir).await.unwrap(),
        Some(0)
    );
    assert_eq!(weights_of(&copy_dir, 0), weights_of(&new_dir, 0));
    assert_eq!(
        Registry::open(&copy_dir).unwrap().manifest(0).unwrap().1,
        new.manifest(0).unwrap().1
    );
    assert_eq!(
        entries(&copy_dir),
        ["g000000"],
        "no staging directory is left"
    );
    for dir in [old_dir, new_dir, copy_dir] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_an_error_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect_lazy();
    let mut client = pb::registry_client::RegistryClient::new(channel);
    let copy_dir = temp_dir("registry-unreachable");
    let error = mirror_once(&mut client, &url, &copy_dir).await.unwrap_err();
    assert!(matches!(error, MirrorError::Call { .. }), "{error:?}");
    assert!(error.to_string().contains(&url), "{error}");
}
