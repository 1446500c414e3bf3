//! `hch ask --addr`: a gRPC client of the coordinator.

use std::io::Write as _;

use anyhow::{Context, Result};

use super::AskArgs;
use crate::eval::Budget;
use crate::rpc::coordinator::{AskQuery, AskReply, InstanceSpec};
use crate::rpc::{pb, ServiceError};

pub async fn ask(args: AskArgs) -> Result<()> {
    let addr = args.addr.clone().unwrap_or_default();
    let channel = args
        .tls
        .connect(&addr)
        .await
        .context("reaching the coordinator")?;
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let instance = match (&args.instance.instance, &args.instance.instance_file) {
        (Some(text), _) => InstanceSpec::Text(text.clone()),
        (None, Some(path)) => InstanceSpec::Text(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading instance file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => InstanceSpec::Generated {
            size: args.instance.size as u32,
            seed: args.instance.seed,
        },
    };
    let query = AskQuery {
        domain: args.instance.domain,
        instance,
        question: args.question.clone(),
        mode: args.mode,
        budget: Budget {
            max_depth: args.max_depth,
            max_nodes: args.max_nodes,
            deadline: args.deadline_ms.map(std::time::Duration::from_millis),
        },
        want_trace: args.tree,
    };
    let failed = |e: ServiceError| anyhow::anyhow!("{} ({:?})", e.message(), e.code());
    let mut request = tonic::Request::new(query.encode());
    crate::coordinator::auth::attach(&mut request, args.token.as_deref());
    let response = client.ask(request).await.map_err(|s| failed(s.into()))?;
    let reply = AskReply::decode(response.into_inner()).map_err(failed)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} = {}",
        args.instance.domain, args.question, reply.answer
    )?;
    writeln!(
        out,
        "tree {}, mode {}, {} nodes, {} memo hits, {} answerer queries ({}), {:?}{}",
        reply.tree_id,
        args.mode,
        reply.stats.nodes,
        reply.stats.memo_hits,
        reply.stats.answerer_queries,
        reply.answerer.as_deref().unwrap_or("none"),
        reply.elapsed,
        reply
            .exhausted
            .map(|e| format!(", degraded by {}", e.name()))
            .unwrap_or_default()
    )?;
    if let Some(trace) = reply.trace {
        out.write_all(trace.render().as_bytes())?;
    }
    Ok(())
}
