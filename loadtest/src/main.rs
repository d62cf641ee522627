//! The load-test harness: runs a scenario against a real `wsrelay` node
//! (the built binary, started here on a loopback port) and reports rates,
//! latency, loss and the server's cost.
//!
//! Scenarios so far: `fanout` (one group, many subscribers) and `ingest`
//! (Redis into the fan-out). The storm, cluster, connections and soak
//! scenarios arrive with the load-test issue.

mod fanout;
mod ingest;
mod node;
mod stamp;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load tests for wsrelay (loopback only)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One group, many subscribers, open-loop producer over HTTP emit
    Fanout(fanout::Options),
    /// Redis into the fan-out: both ingest paths, swept over batch sizes
    Ingest(ingest::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Fanout(opts) => fanout::run(&opts),
        Scenario::Ingest(opts) => ingest::run(&opts),
    }
}
