//! The load-test harness: runs a scenario against a real `wsrelay` node
//! (the built binary, started here on a loopback port) and reports rates,
//! latency, loss and the server's cost.
//!
//! Scenarios so far: `storm` (jobs x viewers + status watchers), `fanout`
//! (one group, many subscribers: a one-job storm), both with `--find-max`,
//! `ingest` (Redis into the fan-out), `connections` (idle clients, RSS per
//! connection), `connects` (authentication rate: JWT, AWX's API cold and
//! warm), `soak` (a long storm: drift) and `cluster` (the storm over
//! several nodes linked by the backplane).

#![recursion_limit = "256"]

mod chart;
mod cluster;
mod connections;
mod connects;
mod fanout;
mod ingest;
mod layer;
mod node;
mod storm;
mod subscribe;

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
    /// J jobs x V viewers + W status watchers, a status change every N events
    Storm(storm::Options),
    /// Many idle subscribed clients: the node's memory per connection
    Connections(connections::Options),
    /// New clients per second by JWT or through AWX's API (cache cold or warm), and API calls per storm
    Connects(connects::Options),
    /// A storm for a long fixed time: drift in latency and memory
    Soak(storm::SoakOptions),
    /// The storm across a mesh of nodes: emitted on one, viewed on the others
    Cluster(cluster::Options),
    /// One small subscribe's latency while the node holds many groups (and others churn)
    Subscribe(subscribe::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Fanout(opts) => fanout::run(&opts),
        Scenario::Ingest(opts) => ingest::run(&opts),
        Scenario::Storm(opts) => storm::run(&opts),
        Scenario::Connections(opts) => connections::run(&opts),
        Scenario::Connects(opts) => connects::run(&opts),
        Scenario::Soak(opts) => storm::soak(&opts),
        Scenario::Cluster(opts) => cluster::run(&opts),
        Scenario::Subscribe(opts) => subscribe::run(&opts),
    }
}
