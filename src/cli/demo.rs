//! `hch demo`: the main job. An embedded coordinator and workers train a model from random weights
//! by amplification alone, then answer held-out questions in every mode through the cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::train::{finish_report, train_run, EngineArgs, ProgressView, RunArgs};
use crate::domain::{Domain, DomainKind};
use crate::eval::{Budget, Mode};
use crate::model::config::Preset;
use crate::rpc::coordinator::{AskQuery, AskReply, InstanceSpec};
use crate::rpc::{pb, ServiceError};
use crate::server::Cluster;
use crate::train::report::RunSummary;
use crate::train::{Run, StopAt, RUN_FILE};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The demo's run directory; an earlier demo there is replaced.
    #[arg(long, default_value = "runs/demo")]
    pub dir: PathBuf,
    /// Continue the demo run in --dir instead of starting afresh.
    #[arg(long)]
    pub resume: bool,
    /// Stop training after this many minutes (the goal is 95% within 5).
    #[arg(long, default_value_t = 5.0)]
    pub max_minutes: f64,
    /// Embedded workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// The demo's settings: union-find on instances of 6 variables, a tiny model, an EMA teacher over
/// 100 steps. No difficulty curriculum: union-find's difficulty (a depth in the forest) takes a
/// solver to know, and nothing the loop decides may consult one. (Measured on 2 cores, through the
/// embedded cluster, four runs: 95% after 6 200 to 10 300 steps, 97 to 153 s of training.)
fn demo_settings() -> RunArgs {
    RunArgs {
        domain: DomainKind::UnionFind,
        supervised: false,
        size: 6,
        start_size: Some(6),
        size_step: Some(1),
        advance_at: 0.85,
        difficulty_curriculum: false,
        roots: 512,
        questions_per_instance: 4,
        ema_horizon: 100,
        reproducible: false,
        descent: 16,
        roots_per_part: 256,
        steps: 100,
        heldout: 256,
        tolerance: 0.05,
        model: Preset::Tiny,
        abstain_below: 0.5,
        learning_rate: 1e-3,
        batch: 64,
        replay_window: 4096,
        seed: 1,
    }
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let dir = args.dir.clone();
    if dir.exists() && !args.resume {
        if !dir.join(RUN_FILE).exists() {
            bail!(
                "{} exists but does not hold a run: refusing to replace it (pick another --dir)",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
        eprintln!("replaced the previous demo in {}", dir.display());
    }
    let settings = demo_settings();
    let domain = crate::domain::union_find::UnionFind;
    let config = settings.config(&domain);
    eprintln!(
        "hch demo: iterated amplification on union-find (equalities), from random weights.\n  \
         H answers a variable's value or depth by finding its parent (from the facts, or by \
         checking X's guess) and asking about the parent; X (a {}-parameter transformer) is \
         distilled from Amplify(H, X) alone, on instances of {} variables. Every decision \
         (promote a generation, move the curriculum on) reads agreements with amplified \
         answers; the truth only fills the report's columns.\n  Goal: 95% held-out accuracy \
         within {} minutes. Run directory: {}\n",
        crate::model::Model::new(domain, config.model.clone(), tch::Device::Cpu, 0)?.parameters(),
        config.target_size,
        args.max_minutes,
        dir.display()
    );
    let mut run = Run::open(domain, &dir, config)?;
    let mut view = ProgressView::new();
    let engine = EngineArgs {
        workers: args.workers,
        coordinator: None,
        token: None,
        tls: Default::default(),
        local: false,
    };
    let stop = StopAt {
        rounds: None,
        accuracy: Some(0.95),
        wall: Some(Duration::from_secs_f64(args.max_minutes * 60.0)),
    };
    let (_, cluster) = train_run(domain, &mut run, &engine, stop, &mut view).await?;
    let cluster = cluster.expect("the demo starts an embedded cluster");
    let summary = RunSummary::read(&dir)?;
    eprintln!();
    match summary.reached(0.95) {
        Some(r) => eprintln!(
            "reached {:.1}% held-out accuracy at size {} with generation g{} after {} steps, \
             {:.0} s of training.",
            100.0 * r.accuracy_target,
            summary.config.target_size,
            r.generation,
            r.steps,
            r.wall_seconds
        ),
        None => eprintln!(
            "did not reach 95% within {} minutes; the best generation is in the table above.",
            args.max_minutes
        ),
    }
    let result = ask_examples(&cluster, domain, summary.config.target_size).await;
    cluster.stop().await;
    result?;
    finish_report(std::slice::from_ref(&dir), 0.95, None)?;
    println!(
        "run directory: {} (registry/, targets/, report.svg)",
        dir.display()
    );
    Ok(())
}

/// A few held-out questions in each mode through the coordinator, then one tree.
async fn ask_examples<D: Domain + Copy>(cluster: &Cluster, domain: D, size: usize) -> Result<()> {
    let addr = format!("http://{}", cluster.coordinator.addr);
    let mut client = pb::coordinator_client::CoordinatorClient::connect(addr).await?;
    println!(
        "\nAsking the cluster (X = the promoted generation; truth from the oracle, for show):"
    );
    let mut rng = crate::rng::Rng::new(0x0de);
    for i in 0..3u64 {
        let seed = (1 << 61) + i;
        let instance = crate::domain::Instance::generate(&domain, size, seed)?;
        let question = domain.sample_question(instance.facts(), &mut rng);
        let truth = domain.print_answer(&domain.truth(instance.facts(), &question));
        println!(
            "  {}  {}  (true answer {truth})",
            domain.print_facts(instance.facts()),
            domain.print_question(&question)
        );
        let modes: &[Mode] = if D::WELL_FOUNDED {
            &[Mode::Distilled, Mode::Amplified, Mode::Hch(2), Mode::Exact]
        } else {
            &[Mode::Distilled, Mode::Amplified, Mode::Hch(2)]
        };
        for &mode in modes {
            let query = AskQuery {
                domain: D::KIND,
                instance: InstanceSpec::Generated {
                    size: size as u32,
                    seed,
                },
                question: domain.print_question(&question),
                mode,
                budget: Budget::default(),
                want_trace: i == 0 && mode == Mode::Hch(2),
            };
            let failed = |e: ServiceError| anyhow::anyhow!("{mode}: {}", e.message());
            let response = client
                .ask(query.encode())
                .await
                .map_err(|s| failed(s.into()))?;
            let reply = AskReply::decode(response.into_inner()).map_err(failed)?;
            println!(
                "    {:<10} {:>4} {}  ({} nodes)",
                mode.to_string(),
                reply.answer,
                if reply.answer == truth { "ok" } else { "WRONG" },
                reply.stats.nodes
            );
            if let Some(trace) = reply.trace {
                println!("    the hch:2 tree:");
                for line in trace.render().lines() {
                    println!("      {line}");
                }
            }
        }
    }
    Ok(())
}
