//! The raw baseline of the oracle load test: phases of trivial unary calls, whose rate a tree
//! phase is held against (see the module docs of `loadtest`).

use std::time::Duration;

use anyhow::Result;

use super::load::{percentiles, phase, Phase};
use super::{connect, url, LoadtestArgs};
use crate::coordinator::auth::attach;
use crate::rpc::pb;
use crate::server::Cluster;

/// The raw unary rate: the best phase of trivial calls over one, two and four connections, to a
/// worker's ModelInfo (the coordinator's Status when no worker is known), and its connection count.
pub(super) async fn unary_baseline(
    args: &LoadtestArgs,
    cluster: &Option<Cluster>,
    coordinator_addr: &str,
    period: Duration,
) -> Result<(Phase, usize)> {
    let mut best: Option<(Phase, usize)> = None;
    for connections in [1, 2, 4] {
        let raw = unary_phase(args, cluster, coordinator_addr, connections, period).await?;
        println!(
            "raw unary calls:      {:>10.0} calls/s over {connections} connection(s), {:.2} cores busy, {} failed",
            raw.rate(),
            raw.cores,
            raw.failed
        );
        if best.as_ref().map_or(true, |(b, _)| raw.rate() > b.rate()) {
            best = Some((raw, connections));
        }
    }
    let (mut raw, connections) = best.expect("three raw phases ran");
    println!(
        "raw baseline:         {:>10.0} calls/s   (latency {})",
        raw.rate(),
        percentiles(std::mem::take(&mut raw.latencies))
    );
    Ok((raw, connections))
}

/// One phase of trivial unary calls over `connections` connections (see [`unary_baseline`]).
pub(super) async fn unary_phase(
    args: &LoadtestArgs,
    cluster: &Option<Cluster>,
    coordinator_addr: &str,
    connections: usize,
    period: Duration,
) -> Result<Phase> {
    let raw_target = match (cluster, &args.worker) {
        (Some(c), _) => Some(format!("http://{}", c.workers[0].0.addr)),
        (None, Some(addr)) => Some(url(addr)),
        (None, None) => None,
    };
    match &raw_target {
        Some(worker) => {
            let channels = connect(worker, connections, &args.tls).await?;
            phase(args.clients, period, |i| {
                let client =
                    pb::worker_client::WorkerClient::new(channels[i % connections].clone());
                move || {
                    let mut client = client.clone();
                    async move { client.model_info(pb::ModelInfoRequest {}).await.is_ok() }
                }
            })
            .await
        }
        None => {
            let channels = connect(coordinator_addr, connections, &args.tls).await?;
            phase(args.clients, period, |i| {
                let client = pb::coordinator_client::CoordinatorClient::new(
                    channels[i % connections].clone(),
                );
                let token = args.token.clone();
                move || {
                    let mut client = client.clone();
                    let mut request = tonic::Request::new(pb::StatusRequest {});
                    attach(&mut request, token.as_deref());
                    async move { client.status(request).await.is_ok() }
                }
            })
            .await
        }
    }
}
