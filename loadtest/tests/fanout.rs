//! A small, fast `fanout` run against the built `wsrelay` binary on both
//! drivers: it must see zero loss and zero duplicates and report every
//! field. Correctness only; speed is never asserted here.

#[test]
fn small_fanout_run_is_lossless_and_reports_every_field() {
    let dir = std::env::temp_dir().join(format!("loadtest-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    // Both drivers where the kernel has io_uring, epoll alone where not.
    let (io, expect_drivers): (&str, &[&str]) = match wsrelay::probe_uring() {
        Ok(()) => ("both", &["epoll", "uring"]),
        Err(_) => ("epoll", &["epoll"]),
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "fanout",
            "--subscribers",
            "20",
            "--size",
            "300",
            "--rate",
            "200",
        ])
        .args(["--duration", "1", "--warmup", "0", "--io", io, "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report.as_array().unwrap();
    let drivers: Vec<&str> = runs.iter().map(|r| r["io"].as_str().unwrap()).collect();
    assert_eq!(drivers, expect_drivers);
    for r in runs {
        for key in [
            "scenario",
            "io",
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
        for q in ["p50", "p99", "p999", "max"] {
            assert!(r["latency_us"][q].as_u64().unwrap() > 0, "{r}");
        }
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicates"], 0, "{r}");
        // 200 events/s for 1 s to 20 subscribers.
        assert_eq!(r["expected"], 4000, "{r}");
        assert_eq!(r["received"], 4000, "{r}");
    }
}
