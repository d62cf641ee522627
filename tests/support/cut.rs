//! A TCP relay on loopback that a test can cut: every connection through
//! it is dropped at once and new ones are refused until it is healed. It
//! stands for a network failure between one node and a server while the
//! rest of the cluster keeps its own connections. It can also *hold* one
//! direction or both: bytes then wait unread (TCP's flow control stops the
//! sender), as on a link that stalls without breaking.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which way a relay stops passing bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Nothing,
    /// Upstream to the dialer (the answers) waits.
    Back,
    /// Both ways wait.
    Both,
}

pub struct Cuttable {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped by each cut: connections of an older generation end.
    cuts: watch::Sender<u64>,
    hold: watch::Sender<Hold>,
}

impl Cuttable {
    /// Relays to `upstream` from a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (hold, _) = watch::channel(Hold::Nothing);
        let cuts_rx = cuts.subscribe();
        let hold_rx = hold.subscribe();
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if !is_open.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let mut cut = cuts_rx.clone();
                cut.borrow_and_update();
                let hold = hold_rx.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (down_r, down_w) = down.into_split();
                    let (up_r, up_w) = up.into_split();
                    let gen = *cut.borrow();
                    let (c1, c2) = (cut.clone(), cut.clone());
                    tokio::select! {
                        _ = pipe(down_r, up_w, hold.clone(), false, (c1, gen)) => {}
                        _ = pipe(up_r, down_w, hold, true, (c2, gen)) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cuttable {
            addr,
            open,
            cuts,
            hold,
        }
    }

    /// Drops every connection through the relay and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn heal(&self) {
        self.open.store(true, Ordering::Release);
    }

    /// Holds bytes in the given direction(s) (`Hold::Nothing` lets them go).
    pub fn hold(&self, hold: Hold) {
        self.hold.send_replace(hold);
    }
}

/// Copies `from` to `to` except while held: what was read when a hold
/// began waits with the rest, and a cut (of generation `gen` or later)
/// drops it, even when the hold ends at the same moment.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut hold: watch::Receiver<Hold>,
    back: bool,
    (cut, gen): (watch::Receiver<u64>, u64),
) {
    let held = move |h: &Hold| *h == Hold::Both || (back && *h == Hold::Back);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if hold.wait_for(|h| !held(h)).await.is_err() || *cut.borrow() != gen {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
