//! The status page in a real browser: Debian's chromium, headless, driven
//! by playwright-core (`tests/browser/status.mjs`) while a storm runs on
//! the node. The page must be refused without the admin key, show moving
//! rates and charts, and follow one group in its live tail. The screenshot
//! is kept in `target/test-artifacts/status-page.png`.
//!
//! `./scripts/test` installs chromium and playwright-core; without them
//! this test fails and says how to get them.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::*;

const KEY: &str = "browser-admin-key-0123456789abcdef";
const JOBS: usize = 5;
const RATE: u64 = 2_000;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_storm_live_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: ./scripts/test installs Debian's chromium"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: ./scripts/test runs `npm ci` in tests/browser"
    );
    let n = start(|c| {
        c.node_id = "status-page-node".into();
        c.admin_key = Some(KEY.into());
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let admin = n.node.admin_addr().unwrap();

    // Viewers reading their jobs, as the AWX UI would.
    for job in 1..=JOBS {
        let mut ws = connect(n.addr, &token(job as u64)).await;
        subscribe(&mut ws, json!({"job_events": [job]})).await;
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    // The storm: AWX-shaped job events at RATE a second, until the browser
    // is done (and at most four minutes).
    let done = Arc::new(AtomicBool::new(false));
    let storm = {
        let (emitter, done) = (n.node.emitter(), done.clone());
        tokio::spawn(async move {
            let mut counters = [0u64; JOBS];
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for _ in 0..24_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                let batch: Vec<(String, String)> = (0..RATE / 100)
                    .map(|i| {
                        let job = (i as usize) % JOBS;
                        counters[job] += 1;
                        let payload = wsrelay::payload::job_event(
                            job + 1,
                            counters[job],
                            wsrelay::payload::now_ns(),
                            // Under the 2,000 characters the page shows whole.
                            300,
                        );
                        (format!("job_events-{}", job + 1), payload)
                    })
                    .collect();
                emitter
                    .emit_many(batch.iter().map(|(g, p)| (g.as_str(), p.as_str())))
                    .await
                    .unwrap();
            }
        })
    };

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let run = tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .arg("status.mjs")
        .arg(format!("http://{admin}"))
        .arg(KEY)
        .arg("job_events-1")
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser finished in time")
        .expect("node runs");
    done.store(true, Ordering::Relaxed);
    let _ = storm.await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    eprintln!("the browser saw: {seen:#}");

    assert_eq!(seen["without_key_status"], 401, "{seen}");
    assert!(
        seen["without_key_text"]
            .as_str()
            .unwrap()
            .contains("the admin key is required"),
        "{seen}"
    );
    assert_eq!(seen["node"], "status-page-node");
    assert!(
        seen["facts"]
            .as_str()
            .unwrap()
            .contains(&format!("io {}", io_name())),
        "{seen}"
    );
    for when in ["rates_first", "rates_later"] {
        let r = &seen[when];
        assert!(r["events_in"].as_f64().unwrap() > 0.0, "{when}: {seen}");
        assert!(r["deliveries"].as_f64().unwrap() > 0.0, "{when}: {seen}");
    }
    assert_eq!(seen["chart_moved"], true, "the charts moved");
    assert_eq!(
        seen["connections"], JOBS as f64,
        "the viewers, not the page's tail"
    );
    assert_eq!(seen["tail_state"], "following job_events-1");
    assert!(seen["tail_lines"].as_u64().unwrap() >= 5, "{seen}");
    assert!(seen["tail_count"].as_f64().unwrap() >= 10.0, "{seen}");
    assert_eq!(seen["tail_newest_changed"], true, "the tail kept moving");
    assert_eq!(
        seen["tail_sample"]["event"], "runner_on_ok",
        "an AWX job event: {seen}"
    );
    assert_eq!(
        seen["tail_sample"]["job"], 1,
        "of the followed job only: {seen}"
    );
    assert_eq!(seen["console_errors"], json!([]), "the page ran clean");
    assert_eq!(
        seen["failed_responses"],
        json!([]),
        "every resource of the page loaded"
    );
    // The refusal was a real 401 on the page itself.
    let refused = seen["refusal_failed_responses"].as_array().expect("list");
    assert!(
        refused.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with("401 ") && r.ends_with("/status"))),
        "{seen}"
    );
    assert_eq!(
        seen["requests_elsewhere"],
        json!([]),
        "nothing loaded from elsewhere"
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
