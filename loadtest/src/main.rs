//! The load-test harness: runs a scenario against a real `wsrelay` node
//! (the built binary, started here on a loopback port) and reports rates,
//! latency, loss and the server's cost.
//!
//! Scenarios so far: `fanout` (one group, many subscribers). The storm,
//! cluster, connections and soak scenarios arrive with the load-test issue.

mod fanout;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Fanout(opts) => fanout::run(&opts),
    }
}
