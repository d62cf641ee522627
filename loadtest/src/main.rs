//! The load-test harness for wsrelay (issue: playbook event storms). This
//! first increment has the crate in the workspace; scenarios arrive with
//! the load-test issue.

fn main() {
    eprintln!(
        "loadtest: no scenarios yet; run `cargo run --release -- demo` for a storm on one node"
    );
    std::process::exit(2);
}
