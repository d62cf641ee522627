//! `cluster`: the storm across several nodes. Events are emitted (over
//! HTTP) on the first node; viewers connect to the others, so every
//! delivery crossed the backplane. `--peer-protocol awx-2022` links the
//! nodes with AWX's form (one JSON frame per event) instead of the native
//! batched protocol, for comparison in one session. `--backplane nats`
//! joins the nodes through a private nats-server (JetStream on) instead of
//! the mesh; its CPU counts in the cluster's. `--broker-restart-at N`
//! kills the broker N seconds into the measured window and starts it again
//! with its store: the report then shows the loss and the nodes' resumes.
//! `--viewers-on-every-node` puts clients on the emitting node as well.

use crate::storm::{run_scenario, ClusterSpec, RunOptions, Shape};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Nodes in the mesh (events on the first, clients on the others)
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Jobs emitting playbook events
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Viewers per job, spread over the non-emitting nodes
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// Spread the clients over every node, the emitting one too (its
    /// viewers' events do not cross the backplane): "10 viewers per node"
    /// as an operator counts them
    #[arg(long)]
    pub viewers_on_every_node: bool,
    /// Clients on jobs-status_changed
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// A status change every this many job events (0: none)
    #[arg(long, default_value_t = 0)]
    pub status_every: u64,
    /// Backplane protocol: native (batched) or awx-2022 (AWX's JSON per event)
    #[arg(long, default_value = "native", value_parser = ["native", "awx-2022"])]
    pub peer_protocol: String,
    /// How the nodes are joined: a full mesh of links, or a NATS broker
    #[arg(long, default_value = "mesh", value_parser = ["mesh", "nats"])]
    pub backplane: String,
    /// `--backplane nats`: SIGKILL the broker this many seconds into the
    /// measured window and start it again with its store (0: never)
    #[arg(long, default_value_t = 0)]
    pub broker_restart_at: u64,
    /// How long the broker stays down when restarted
    #[arg(long, default_value_t = 500)]
    pub broker_down_ms: u64,
    #[command(flatten)]
    pub run: RunOptions,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let shape = Shape {
        jobs: opts.jobs,
        viewers: opts.viewers,
        watchers: opts.watchers,
        status_every: opts.status_every,
    };
    let mut run = opts.run.clone();
    run.cluster = Some(ClusterSpec {
        nodes: opts.nodes,
        protocol: opts.peer_protocol.clone(),
        backplane: opts.backplane.clone(),
        broker_restart_at: opts.broker_restart_at,
        broker_down_ms: opts.broker_down_ms,
        viewers_on_every_node: opts.viewers_on_every_node,
    });
    if opts.broker_restart_at > 0 && opts.backplane != "nats" {
        anyhow::bail!("--broker-restart-at needs --backplane nats");
    }
    if opts.broker_restart_at > opts.run.duration {
        anyhow::bail!("--broker-restart-at must fall within --duration");
    }
    run_scenario("cluster", shape, &run, 20_000)
}
