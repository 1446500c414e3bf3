//! `hch ask --addr`: a gRPC client of the coordinator.

use anyhow::{Context, Result};

use super::AskArgs;
use crate::rpc::pb;

pub async fn ask(args: AskArgs) -> Result<()> {
    let addr = args.addr.clone().unwrap_or_default();
    let mut client = pb::coordinator_client::CoordinatorClient::connect(addr.clone())
        .await
        .with_context(|| format!("connecting to the coordinator at {addr}"))?;
    let instance = match (&args.instance.instance, &args.instance.instance_file) {
        (Some(text), _) => pb::ask_request::Instance::InstanceText(text.clone()),
        (None, Some(path)) => pb::ask_request::Instance::InstanceText(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading instance file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => pb::ask_request::Instance::Generated(pb::GeneratedInstance {
            size: args.instance.size as u32,
            seed: args.instance.seed,
        }),
    };
    let request = pb::AskRequest {
        domain: args.instance.domain.name().to_string(),
        instance: Some(instance),
        question: args.question.clone(),
        mode: args.mode.to_string(),
        budget: Some(pb::Budget {
            max_depth: args.max_depth,
            max_nodes: args.max_nodes,
            deadline_ms: args.deadline_ms,
        }),
        want_trace: args.tree,
    };
    let response = client
        .ask(request)
        .await
        .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))?
        .into_inner();
    println!(
        "{} {} = {}",
        args.instance.domain, args.question, response.answer
    );
    let stats = response.stats.unwrap_or_default();
    println!(
        "tree {}, mode {}, {} nodes, {} memo hits, {} answerer queries ({}), {} µs{}",
        response.tree_id,
        args.mode,
        stats.nodes,
        stats.memo_hits,
        stats.answerer_queries,
        if response.answerer.is_empty() {
            "none"
        } else {
            &response.answerer
        },
        stats.elapsed_us,
        if response.exhausted.is_empty() {
            String::new()
        } else {
            format!(", degraded by {}", response.exhausted)
        }
    );
    if let Some(trace) = response.trace {
        print!("{}", render(&trace));
    }
    Ok(())
}

/// A wire trace as an indented tree, like the local `--tree` output.
pub fn render(trace: &pb::Trace) -> String {
    let mut children: std::collections::HashMap<u32, Vec<&pb::TraceNode>> = Default::default();
    let mut root = None;
    for n in &trace.nodes {
        match n.parent {
            Some(p) => children.entry(p).or_default().push(n),
            None => root = Some(n),
        }
    }
    let mut out = String::new();
    let mut stack: Vec<(&pb::TraceNode, usize)> = root.into_iter().map(|r| (r, 0)).collect();
    while let Some((n, indent)) = stack.pop() {
        let who = if n.by == "answerer" {
            trace.answerer.as_str()
        } else {
            n.by.as_str()
        };
        out.push_str(&format!(
            "{}{} = {}  [{}{}, {} µs]\n",
            "  ".repeat(indent),
            n.question,
            n.answer,
            who,
            if n.exhausted.is_empty() {
                String::new()
            } else {
                format!(", {}", n.exhausted)
            },
            n.end_us.saturating_sub(n.start_us)
        ));
        if let Some(c) = children.get(&n.id) {
            for child in c.iter().rev() {
                stack.push((child, indent + 1));
            }
        }
    }
    out
}
