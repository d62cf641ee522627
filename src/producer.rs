//! Producing from scripts (`wsrelay emit`): over HTTP to a node's emit
//! endpoint, or straight into the native Redis Stream with pipelined
//! `XADD`s. Events are validated here with the same parser the node uses.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use deadpool_redis::redis;

use crate::protocol::emit;

/// Events per HTTP request or per Redis round trip.
pub const BATCH: usize = 1000;

/// One event as the producer sends it: the group and the payload's JSON.
pub type Event = (String, String);

/// Reads JSON lines, each `{"group": G, "payload": <any JSON>}`, from a
/// file or `-` (stdin). Blank lines are skipped.
pub fn read_jsonl(path: &str) -> anyhow::Result<Vec<Event>> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?,
        ))
    };
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = emit::parse(line.as_bytes(), 256, 1)
            .with_context(|| format!("{path}:{}: bad event", n + 1))?;
        let e = parsed.first().context("empty line")?;
        out.push((
            e.group.to_owned(),
            String::from_utf8_lossy(e.payload).into_owned(),
        ));
    }
    Ok(out)
}

/// POSTs events to `url` (`http://host:port`) in batches; returns how many
/// the node accepted.
pub fn http(url: &str, key: &str, events: &[Event]) -> anyhow::Result<u64> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must start with http:// (TLS is the proxy's job)");
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let mut accepted = 0;
    for chunk in events.chunks(BATCH) {
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|(g, p)| format!(
                    r#"{{"group": {}, "payload": {p}}}"#,
                    serde_json::to_string(g).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut stream =
            TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "POST /api/v1/emit HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, reply) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 200") {
            bail!("{status}: {reply}");
        }
        let v: serde_json::Value = serde_json::from_str(reply)?;
        accepted += v["accepted"].as_u64().unwrap_or(0);
    }
    Ok(accepted)
}

/// `XADD`s events to `stream` at `url`, `BATCH` per round trip; returns how
/// many were added.
pub async fn redis_stream(url: &str, stream: &str, events: &[Event]) -> anyhow::Result<u64> {
    let client = redis::Client::open(url).with_context(|| format!("bad redis url {url}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    xadd(&mut conn, stream, events).await
}

/// One open connection to a stream, for producers that send batch after
/// batch (a connection per batch would pay a handshake each time).
pub struct StreamWriter {
    conn: redis::aio::MultiplexedConnection,
    stream: String,
}

impl StreamWriter {
    pub async fn connect(url: &str, stream: &str) -> anyhow::Result<StreamWriter> {
        let client = redis::Client::open(url).with_context(|| format!("bad redis url {url}"))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        // redis-rs answers "timed out" after 500 ms by default: on a lossy
        // link two retransmissions of one reply take longer than that, and
        // a producer gave up on a batch Redis had taken.
        conn.set_response_timeout(std::time::Duration::from_secs(10));
        Ok(StreamWriter {
            conn,
            stream: stream.to_owned(),
        })
    }

    /// `XADD`s `events`; returns how many were added.
    pub async fn send(&mut self, events: &[Event]) -> anyhow::Result<u64> {
        xadd(&mut self.conn, &self.stream, events).await
    }
}

/// `XADD`s events to `stream` over an open connection, `BATCH` per round
/// trip; returns how many were added.
pub async fn xadd(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    events: &[Event],
) -> anyhow::Result<u64> {
    let mut added = 0;
    for chunk in events.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for (group, payload) in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("group")
                .arg(group)
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
        added += chunk.len() as u64;
    }
    Ok(added)
}
