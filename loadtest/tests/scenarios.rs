//! Small, fast runs of the storm-engine scenarios against the built
//! `wsrelay` binary: zero loss and zero duplicates at a low rate, every
//! report field present, and `--find-max` ends with an answer.
//! Correctness only; speed is never asserted here.

use std::process::Command;

/// Both drivers where the kernel has io_uring, epoll alone where not.
fn drivers() -> (&'static str, Vec<&'static str>) {
    match wsrelay::probe_uring() {
        Ok(()) => ("both", vec!["epoll", "uring"]),
        Err(_) => ("epoll", vec!["epoll"]),
    }
}

/// Runs the harness with `args`, returns its JSON report.
fn run(name: &str, args: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn check_runs(report: &serde_json::Value, expect_drivers: &[&str], expected_each: u64) {
    let runs = report["runs"].as_array().unwrap();
    let drivers: Vec<&str> = runs.iter().map(|r| r["io"].as_str().unwrap()).collect();
    assert_eq!(drivers, expect_drivers);
    for r in runs {
        for key in [
            "scenario",
            "io",
            "jobs",
            "viewers",
            "watchers",
            "status_every",
            "subscribers",
            "size",
            "rate",
            "duration",
            "workers",
            "deliveries_per_sec",
            "events_per_sec",
            "latency_us",
            "expected",
            "received",
            "lost",
            "duplicates",
            "server_cpu_percent",
            "server_rss_bytes",
            "syscalls_per_delivery",
            "uring_submissions_per_delivery",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["latency_us"][q].as_u64().unwrap() > 0, "{r}");
        }
        // The machine's own reading: the run itself kept it above idle,
        // and no share can pass the whole machine.
        let host = r["host_cpu_percent"].as_f64().expect("host_cpu_percent");
        let steal = r["host_steal_percent"]
            .as_f64()
            .expect("host_steal_percent");
        assert!(host > 0.0 && host <= 100.0 && steal <= host, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicates"], 0, "{r}");
        assert_eq!(r["expected"], expected_each, "{r}");
        assert_eq!(r["received"], expected_each, "{r}");
    }
}

#[test]
fn fanout_is_lossless_and_reports_every_field() {
    let (io, expect) = drivers();
    let report = run(
        "fanout",
        &[
            "fanout",
            "--subscribers",
            "20",
            "--size",
            "300",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            io,
        ],
    );
    // 200 events/s for 1 s to 20 subscribers.
    check_runs(&report, &expect, 4000);
}

#[test]
fn storm_is_lossless_for_viewers_and_status_watchers() {
    let (io, expect) = drivers();
    let report = run(
        "storm",
        &[
            "storm",
            "--jobs",
            "10",
            "--viewers",
            "2",
            "--watchers",
            "5",
            "--status-every",
            "10",
            "--rate",
            "500",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            io,
        ],
    );
    // 500 job events to 2 viewers each, and 50 status changes to 5 watchers.
    check_runs(&report, &expect, 500 * 2 + 50 * 5);
}

#[test]
fn find_max_terminates_with_the_highest_clean_rate() {
    let report = run(
        "findmax",
        &[
            "fanout",
            "--subscribers",
            "5",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            "epoll",
            "--find-max",
            "--max-steps",
            "3",
        ],
    );
    let found = &report["find_max"][0];
    assert_eq!(found["io"], "epoll");
    // At these rates nothing is lost: every step was clean, so the answer
    // is the last step's rate (100 -> 150 -> 225).
    assert_eq!(found["max_clean_rate"], 225, "{report}");
    assert_eq!(found["stopped_by"], "max steps", "{report}");
    assert_eq!(found["node_ceiling"], false, "{report}");
    assert_eq!(report["runs"].as_array().unwrap().len(), 3);
}

#[test]
fn connections_are_all_live_and_memory_is_reported() {
    let io = if wsrelay::probe_uring().is_ok() {
        "uring"
    } else {
        "epoll"
    };
    let report = run(
        "connections",
        &[
            "connections",
            "--clients",
            "300",
            "--groups",
            "30",
            "--io",
            io,
        ],
    );
    for key in [
        "scenario",
        "target",
        "io",
        "workers",
        "clients",
        "groups",
        "connect_secs",
        "rss_idle_bytes",
        "rss_connected_bytes",
        "rss_bytes_per_connection",
        "probe_expected",
        "probe_received",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["probe_received"], 300, "{report}");
    assert!(report["rss_connected_bytes"].as_u64() >= report["rss_idle_bytes"].as_u64());
}

#[test]
fn connections_against_the_awx_reference_are_all_live() {
    let report = run(
        "connections-ref",
        &[
            "connections",
            "--clients",
            "60",
            "--groups",
            "6",
            "--concurrency",
            "16",
            "--target",
            "awx-reference",
        ],
    );
    assert_eq!(report["target"], "awx-reference", "{report}");
    assert_eq!(report["io"], "daphne", "{report}");
    // Every probe went through channels_redis to the right client.
    assert_eq!(report["probe_received"], 60, "{report}");
}

#[test]
fn the_awx_reference_and_the_channels_redis_producer_work() {
    // The same small storm through AWX's producer format, against the AWX
    // reference reproduction (daphne) and against wsrelay's Redis ingest.
    let args = |target: &str| -> Vec<String> {
        [
            "storm",
            "--jobs",
            "4",
            "--viewers",
            "2",
            "--watchers",
            "3",
            "--status-every",
            "5",
            "--rate",
            "20",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            "epoll",
            "--producer",
            "channels-redis",
            "--target",
            target,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    for (target, driver) in [("awx-reference", "daphne"), ("wsrelay", "epoll")] {
        let a = args(target);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let report = run(&format!("ref-{target}"), &a);
        // 20 job events to 2 viewers each, 4 status changes to 3 watchers.
        check_runs(&report, &[driver], 20 * 2 + 4 * 3);
    }
}

#[test]
fn ingest_delivers_everything_in_order_on_both_paths() {
    let report = run(
        "ingest",
        &[
            "ingest",
            "--events",
            "3000",
            "--size",
            "512",
            "--batches",
            "1,64",
            "--hold-ms",
            "1500",
        ],
    );
    let rows = report.as_array().unwrap();
    let combos: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["batch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        combos,
        [
            ("channels_redis", 1),
            ("channels_redis", 64),
            ("stream", 1),
            ("stream", 64)
        ]
        .map(|(p, b)| (p.to_owned(), b))
    );
    // The harness itself fails on a missing or out-of-order event; here, the
    // report's shape.
    for r in rows {
        for key in [
            "scenario",
            "events",
            "size",
            "seconds",
            "events_per_sec",
            "node_cpu_percent",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert_eq!(r["events"], 3000);
        assert!(r["events_per_sec"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn soak_reports_a_timeline_drift_and_a_chart() {
    let dir = std::env::temp_dir().join(format!("loadtest-soak-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("soak.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let report = run(
        "soak",
        &[
            "soak",
            "--seconds",
            "3",
            "--jobs",
            "5",
            "--viewers",
            "2",
            "--watchers",
            "2",
            "--rate",
            "200",
            "--warmup",
            "0",
            "--io",
            "epoll",
            "--svg",
            &svg_arg,
        ],
    );
    let r = &report["runs"][0];
    assert_eq!(r["scenario"], "soak");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 3, "one sample per second");
    for s in timeline {
        for key in ["t", "deliveries_per_sec", "p50_us", "p99_us", "rss_bytes"] {
            assert!(s.get(key).is_some(), "missing {key} in {s}");
        }
        assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    }
    for key in [
        "rss_growth_bytes",
        "p99_first_us",
        "p99_last_us",
        "deliveries_per_sec_first",
    ] {
        assert!(r["drift"].get(key).is_some(), "missing drift {key} in {r}");
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert_eq!(
        chart.matches("<polyline").count(),
        3,
        "rate, p99 and p50 lines"
    );
}

#[test]
fn the_stream_and_in_process_producers_work() {
    for producer in ["stream", "inproc"] {
        let report = run(
            &format!("producer-{producer}"),
            &[
                "storm",
                "--jobs",
                "4",
                "--viewers",
                "2",
                "--watchers",
                "3",
                "--status-every",
                "5",
                "--rate",
                "100",
                "--duration",
                "1",
                "--warmup",
                "0",
                "--io",
                "epoll",
                "--producer",
                producer,
            ],
        );
        // 100 job events to 2 viewers each, 20 status changes to 3 watchers.
        check_runs(&report, &["epoll"], 100 * 2 + 20 * 3);
    }
}

#[test]
fn cluster_is_lossless_across_the_backplane_in_both_protocols() {
    for protocol in ["native", "awx-2022"] {
        let report = run(
            &format!("cluster-{protocol}"),
            &[
                "cluster",
                "--nodes",
                "3",
                "--jobs",
                "2",
                "--viewers",
                "4",
                "--watchers",
                "2",
                "--status-every",
                "10",
                "--peer-protocol",
                protocol,
                "--rate",
                "300",
                "--duration",
                "1",
                "--warmup",
                "0",
                "--io",
                "epoll",
            ],
        );
        // 300 job events to 4 viewers each, 30 status changes to 2 watchers;
        // every client sits on a node other than the emitting one.
        check_runs(&report, &["epoll"], 300 * 4 + 30 * 2);
        let r = &report["runs"][0];
        assert_eq!(r["nodes"], 3, "{r}");
        // One close count per node, the emitting node first; a clean run
        // closed nobody anywhere.
        assert_eq!(
            r["node_losses"]["slow_consumer_closes_by_node"],
            serde_json::json!([0, 0, 0]),
            "{r}"
        );
        assert_eq!(r["peer_protocol"], protocol, "{r}");
        assert!(r["backplane_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["backplane_bytes_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        // Messages are counted: at 300 events/s each batch frame carries a
        // few, not the whole second's (what an uncounted frame would show).
        let per = r["backplane_events_per_message"].as_f64().unwrap();
        assert!((1.0..50.0).contains(&per), "{per} events/message: {r}");
    }
}

#[test]
fn viewers_on_every_node_put_clients_on_the_emitting_node_too() {
    // Two nodes, one viewer: with the flag it sits on the emitting node (the
    // first client goes to the first node), so the backplane has nothing
    // to carry (links send only what a peer's clients hold); without it the
    // viewer is on the other node and every event crosses. All delivered
    // either way.
    let one = |viewers: &str, every: bool| {
        let mut args = vec![
            "cluster",
            "--nodes",
            "2",
            "--viewers",
            viewers,
            "--rate",
            "300",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            "epoll",
        ];
        if every {
            args.push("--viewers-on-every-node");
        }
        run(&format!("cluster-every-{viewers}-{every}"), &args)
    };
    let alone = one("1", true);
    check_runs(&alone, &["epoll"], 300);
    let r = &alone["runs"][0];
    assert_eq!(r["viewers_on_every_node"], true, "{r}");
    assert_eq!(r["backplane_events_per_sec"].as_f64().unwrap(), 0.0, "{r}");
    let across = one("1", false);
    check_runs(&across, &["epoll"], 300);
    let r = &across["runs"][0];
    assert!(r["backplane_events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn cluster_over_a_nats_broker_is_lossless_and_sends_each_event_once() {
    // With JetStream (the default), and on core NATS (a replay window of
    // 0: no stream, publishes flushed rather than acknowledged, and the
    // harness waits for the connection instead of the stream).
    for (name, extra) in [
        ("cluster-nats", None),
        (
            "cluster-core-nats",
            Some("--node-arg=--broker-replay-window-s=0"),
        ),
    ] {
        let mut args = vec![
            "cluster",
            "--backplane",
            "nats",
            "--nodes",
            "3",
            "--jobs",
            "2",
            "--viewers",
            "4",
            "--rate",
            "300",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--io",
            "epoll",
        ];
        args.extend(extra);
        let report = run(name, &args);
        check_runs(&report, &["epoll"], 300 * 4);
        let r = &report["runs"][0];
        assert_eq!(r["backplane"], "nats", "{name}: {r}");
        // The emitting node sent each event once (to the broker), not once
        // per other node as the mesh does: about the offered rate.
        let sent = r["backplane_events_per_sec"].as_f64().unwrap();
        let offered = r["achieved_rate"].as_f64().unwrap();
        assert!(
            sent > 0.5 * offered && sent < 1.5 * offered,
            "{name}: {sent} sent for {offered} offered: {r}"
        );
        let per = r["backplane_events_per_message"].as_f64().unwrap();
        assert!(
            (1.0..50.0).contains(&per),
            "{name}: {per} events/message: {r}"
        );
        // The broker's side of the time, from the node's own histogram: a
        // publish takes some time (no bucket under 0.1 ms is below every
        // one), and the median is not past the tail.
        let publish = &r["broker_publish_ms"];
        let (p50, p99) = (
            publish["p50_at_most"].as_f64().unwrap(),
            publish["p99_at_most"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{name}: publish {publish}: {r}");
    }
}

#[test]
fn connects_through_awx_api_cost_one_call_per_session() {
    let io = if wsrelay::probe_uring().is_ok() {
        "uring"
    } else {
        "epoll"
    };
    // A cold cache: 300 connects over 30 sessions, 100 at once.
    let cold = run(
        "connects-cold",
        &[
            "connects",
            "--auth",
            "session",
            "--clients",
            "300",
            "--sessions",
            "30",
            "--concurrency",
            "100",
            "--io",
            io,
        ],
    );
    assert_eq!(cold["refused"], 0, "{cold}");
    assert_eq!(cold["api_calls"], 30, "{cold}");
    for key in [
        "connects_per_sec",
        "p50_ms",
        "p99_ms",
        "node_cpu_pct",
        "api_cpu_pct",
        "generator_cpu_pct",
        "saturated",
    ] {
        assert!(!cold[key].is_null(), "{key} missing in {cold}");
    }
    // Warm: no call at all.
    let warm = run(
        "connects-warm",
        &[
            "connects",
            "--auth",
            "session",
            "--clients",
            "200",
            "--sessions",
            "20",
            "--warm",
            "--io",
            io,
        ],
    );
    assert_eq!(
        (warm["refused"].as_u64(), warm["api_calls"].as_u64()),
        (Some(0), Some(0)),
        "{warm}"
    );
    let jwt = run(
        "connects-jwt",
        &["connects", "--auth", "jwt", "--clients", "200", "--io", io],
    );
    assert_eq!(jwt["refused"], 0, "{jwt}");
}

#[test]
fn subscribe_reports_latency_with_many_groups_held() {
    let io = if wsrelay::probe_uring().is_ok() {
        "uring"
    } else {
        "epoll"
    };
    let r = run(
        "subscribe",
        &[
            "subscribe",
            "--held",
            "3000",
            "--per-connection",
            "1000",
            "--samples",
            "20",
            "--churn",
            "1",
            "--peer",
            "--io",
            io,
        ],
    );
    for key in ["p50_ms", "p99_ms", "max_ms", "churn_sets", "node_rss_bytes"] {
        assert!(!r[key].is_null(), "{key} missing in {r}");
    }
    assert!(r["churn_sets"].as_u64().unwrap() > 0, "{r}");
}
