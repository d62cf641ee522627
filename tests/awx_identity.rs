//! AWX's own identity: clients authenticated by asking a real Django + DRF
//! app shaped like AWX's API (`tests/python/awx_api.py`) with their session
//! cookie or token, per-object access asked of its object URLs, the cache
//! and coalescing counted by the app itself, and the API going away.

mod support;

use std::time::Duration;

use serde_json::json;
use support::awx_api::{connect_as, session_cookie, AwxApi};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A node that authenticates with JWTs first and AWX's API second.
fn node_for(api: &AwxApi, tune: impl FnOnce(&mut wsrelay::Config)) -> TestNode {
    let me = api.me_url();
    start(move |c| {
        c.auth_url = Some(me);
        tune(c);
    })
}

async fn refused_with(ws: &mut Ws, reason: &str) {
    assert_eq!(next_json(ws).await, json!({"close": true}));
    assert_eq!(next_close(ws).await, (CloseCode::Policy, reason.to_owned()));
}

#[tokio::test]
async fn sessions_and_tokens_are_accepted_as_awx_users() {
    let api = AwxApi::start();
    let n = node_for(&api, |_| {});
    let (alice, bob) = (api.user("alice"), api.user("bob"));

    // The browser: session cookie (and csrftoken).
    let (_a, first) = connect_as(n.addr, "", &[("cookie", &session_cookie(&alice))]).await;
    assert_eq!(first, json!({"accept": true, "user": alice.id}));
    // An API client: Authorization: Bearer <AWX token>.
    let bearer = format!("Bearer {}", bob.token);
    let (_b, first) = connect_as(n.addr, "", &[("authorization", &bearer)]).await;
    assert_eq!(first, json!({"accept": true, "user": bob.id}));
    // The seed's way: ?token=<AWX token>, forwarded as a bearer token.
    let (_c, first) = connect_as(n.addr, &format!("?token={}", bob.token), &[]).await;
    assert_eq!(first, json!({"accept": true, "user": bob.id}));
    // JWTs still work beside the API, and are checked first (no API call).
    let (_d, first) = connect_as(n.addr, &format!("?token={}", token(77)), &[]).await;
    assert_eq!(first, json!({"accept": true, "user": 77}));
    let calls = api.take_calls().await;
    assert_eq!(calls.get("/api/v2/me/"), Some(&2), "{calls:?}");
    wait_metric(n.addr, "wsrelay_clients_accepted_total 4").await;
}

#[tokio::test]
async fn bad_and_expired_credentials_get_close_1008() {
    let api = AwxApi::start();
    let n = node_for(&api, |c| {
        c.auth_cache_ttl_secs = 1;
        c.auth_refusal_ttl_secs = 1;
    });
    let failed = "authentication failed: invalid or expired credentials";
    let mut ws = support::awx_api::upgrade(n.addr, "", &[("cookie", "sessionid=made-up")]).await;
    refused_with(&mut ws, failed).await;
    let mut ws = support::awx_api::upgrade(n.addr, "", &[("authorization", "Bearer nope")]).await;
    refused_with(&mut ws, failed).await;
    let mut ws = support::awx_api::upgrade(n.addr, "", &[]).await;
    refused_with(
        &mut ws,
        "authentication failed: missing credentials: no session cookie or token",
    )
    .await;

    // A session that worked, then expired on AWX's side: once the cached
    // answer is past its TTL, the next connection is refused.
    let alice = api.user("alice");
    let cookie = format!("sessionid={}", alice.sessionid);
    let (_ok, first) = connect_as(n.addr, "", &[("cookie", &cookie)]).await;
    assert_eq!(first["accept"], true);
    api.expire(&alice.sessionid).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ws = support::awx_api::upgrade(n.addr, "", &[("cookie", &cookie)]).await;
    refused_with(&mut ws, failed).await;
    wait_metric(
        n.addr,
        "wsrelay_clients_refused_total{reason=\"auth_failed\"} 4",
    )
    .await;
}

#[tokio::test]
async fn xrftoken_is_required_when_the_cookie_carries_csrftoken() {
    let api = AwxApi::start();
    let n = node_for(&api, |_| {});
    let alice = api.user("alice");
    let (mut ws, _) = connect_as(n.addr, "", &[("cookie", &session_cookie(&alice))]).await;
    for msg in [
        json!({"groups": {"jobs": ["status_changed"]}}),
        json!({"groups": {"jobs": ["status_changed"]}, "xrftoken": "wrong"}),
    ] {
        send(&mut ws, &msg.to_string()).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"error": "access denied to channel"})
        );
    }
    let ok = json!({"groups": {"jobs": ["status_changed"]}, "xrftoken": alice.csrftoken});
    send(&mut ws, &ok.to_string()).await;
    assert_eq!(
        sorted(next_json(&mut ws).await),
        json!({"groups_current": ["jobs-status_changed"], "groups_left": [], "groups_joined": ["jobs-status_changed"]})
    );
    // A token client carries no ambient credential and needs no xrftoken.
    let (mut t, _) = connect_as(n.addr, &format!("?token={}", alice.token), &[]).await;
    let reply = subscribe(&mut t, json!({"jobs": ["status_changed"]})).await;
    assert_eq!(reply["groups_current"], json!(["jobs-status_changed"]));
}

#[tokio::test]
async fn per_object_access_follows_awx_permissions() {
    let api = AwxApi::start();
    let n = node_for(&api, |_| {});
    let alice = api.user("alice");
    let (mut ws, _) = connect_as(n.addr, &format!("?token={}", alice.token), &[]).await;
    let msg = json!({"groups": {
        "job_events": [1, 2, 3],
        "workflow_events": [5],
        "ad_hoc_command_events": [6],
        "jobs": ["status_changed"],
        "control": [format!("limit_reached_{}", alice.id), "limit_reached_999"],
        "broadcast": ["group_send"],
    }});
    send(&mut ws, &msg.to_string()).await;
    // One error reply for the message, listing every denial.
    let denied = next_json(&mut ws).await;
    let mut errors: Vec<String> = denied["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{denied}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    errors.sort();
    let reply = sorted(next_json(&mut ws).await);
    assert_eq!(
        errors,
        [
            "access denied to channel broadcast for resource id group_send",
            "access denied to channel control for resource id limit_reached_999",
            // 403: bob's job; 404: no such job.
            "access denied to channel job_events for resource id 2",
            "access denied to channel job_events for resource id 3",
        ]
    );
    let held = json!([
        "ad_hoc_command_events-6",
        format!("control-limit_reached_{}", alice.id),
        "job_events-1",
        "jobs-status_changed",
        "workflow_events-5",
    ]);
    assert_eq!(reply["groups_current"], held);
    // Events follow the subscription that was applied.
    emit_one(n.addr, "job_events-2", r#"{"secret": "bob's"}"#).await;
    emit_one(n.addr, "job_events-1", r#"{"counter": 1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"counter": 1}"#);
    let calls = api.take_calls().await;
    for path in ["/api/v2/jobs/1/", "/api/v2/jobs/2/", "/api/v2/jobs/3/"] {
        assert_eq!(calls.get(path), Some(&1), "{path}: {calls:?}");
    }
    // Asked again: the answers come from the cache.
    send(&mut ws, &msg.to_string()).await;
    assert_eq!(
        next_json(&mut ws).await["errors"].as_array().map(Vec::len),
        Some(4)
    );
    let reply = sorted(next_json(&mut ws).await);
    assert_eq!(reply["groups_current"], held);
    let calls = api.take_calls().await;
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn one_session_on_a_thousand_connections_costs_at_most_two_calls() {
    let api = AwxApi::start();
    let n = node_for(&api, |_| {});
    let alice = api.user("alice");
    let cookie = format!("sessionid={}", alice.sessionid);
    let connects = (0..1000).map(|_| {
        let cookie = cookie.clone();
        let addr = n.addr;
        tokio::spawn(async move {
            let (mut ws, first) = connect_as(addr, "", &[("cookie", &cookie)]).await;
            assert_eq!(first["accept"], true, "{first}");
            let reply = subscribe(&mut ws, json!({"job_events": [1]})).await;
            assert_eq!(reply["groups_current"], json!(["job_events-1"]));
            ws
        })
    });
    let clients = futures_util::future::join_all(connects).await;
    assert_eq!(clients.len(), 1000);
    let calls = api.take_calls().await;
    let me = calls.get("/api/v2/me/").copied().unwrap_or(0);
    let job = calls.get("/api/v2/jobs/1/").copied().unwrap_or(0);
    assert!((1..=2).contains(&me), "identity calls: {calls:?}");
    assert!((1..=2).contains(&job), "access calls: {calls:?}");
    let misses = metric(
        n.addr,
        "wsrelay_auth_lookups_total{kind=\"identity\",result=\"miss\"}",
    )
    .await;
    assert_eq!(misses, me);
}

#[tokio::test]
async fn api_outage_refuses_new_clients_and_keeps_the_connected_ones() {
    let mut api = AwxApi::start();
    let n = node_for(&api, |c| c.auth_timeout = Duration::from_millis(400));
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    let (mut watching, _) = connect_as(n.addr, &format!("?token={}", alice.token), &[]).await;
    subscribe(&mut watching, json!({"jobs": ["status_changed"]})).await;

    // Slow: past the timeout, a new client is refused with the reason.
    api.set_delay(1500).await;
    let mut ws = support::awx_api::upgrade(n.addr, &format!("?token={}", bob.token), &[]).await;
    refused_with(&mut ws, "authentication unavailable").await;
    wait_metric(
        n.addr,
        "wsrelay_auth_unavailable_total{reason=\"timeout\"} 1",
    )
    .await;

    // Down: the same, at once.
    api.stop();
    let mut ws = support::awx_api::upgrade(n.addr, &format!("?token={}", bob.token), &[]).await;
    refused_with(&mut ws, "authentication unavailable").await;
    wait_metric(
        n.addr,
        "wsrelay_auth_unavailable_total{reason=\"connect\"} 1",
    )
    .await;
    wait_metric(
        n.addr,
        "wsrelay_clients_refused_total{reason=\"auth_unavailable\"} 2",
    )
    .await;
    // The connected client streams on through the outage.
    for i in 0..100 {
        emit_one(n.addr, "jobs-status_changed", &format!(r#"{{"i": {i}}}"#)).await;
    }
    for i in 0..100 {
        assert_eq!(next_text(&mut watching).await, format!(r#"{{"i": {i}}}"#));
    }
    // An object check that cannot be made leaves the group out, with the
    // reason; the rest of the message applies.
    send(
        &mut watching,
        &json!({"groups": {"job_events": [1], "jobs": ["status_changed"]}}).to_string(),
    )
    .await;
    assert_eq!(
        next_json(&mut watching).await,
        json!({"error": "access check unavailable for channel job_events resource id 1: cannot connect to the API"})
    );
    assert_eq!(
        sorted(next_json(&mut watching).await)["groups_current"],
        json!(["jobs-status_changed"])
    );
}
