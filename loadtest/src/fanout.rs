//! `fanout`: one group, S subscribers, the storm engine with one job and no
//! status watchers. Per I/O driver: deliveries/s, latency, loss,
//! duplicates, the server's CPU, and its syscalls (and io_uring
//! submissions) per delivered frame when perf can count them.

use crate::storm::{run_scenario, RunOptions, Shape};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Subscribers of the one group
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[command(flatten)]
    pub run: RunOptions,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let shape = Shape {
        jobs: 1,
        viewers: opts.subscribers,
        watchers: 0,
        status_every: 0,
    };
    run_scenario("fanout", shape, &opts.run, 1000)
}
