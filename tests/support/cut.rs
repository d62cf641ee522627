//! A TCP relay on loopback that a test can cut: every connection through
//! it is dropped at once and new ones are refused until it is healed. It
//! stands for a network failure between one node and a server while the
//! rest of the cluster keeps its own connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Cuttable {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped by each cut: connections of an older generation end.
    cuts: watch::Sender<u64>,
}

impl Cuttable {
    /// Relays to `upstream` from a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let cuts_rx = cuts.subscribe();
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !is_open.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let mut cut = cuts_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cuttable { addr, open, cuts }
    }

    /// Drops every connection through the relay and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn heal(&self) {
        self.open.store(true, Ordering::Release);
    }
}
