//! A small `ingest` run: both Redis paths deliver every event, in order,
//! and the report has every field. Correctness only.

#[test]
fn small_ingest_run_delivers_everything_in_order() {
    let dir = std::env::temp_dir().join(format!("loadtest-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "ingest",
            "--events",
            "3000",
            "--size",
            "512",
            "--batches",
            "1,64",
        ])
        .args(["--hold-ms", "1500", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
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
