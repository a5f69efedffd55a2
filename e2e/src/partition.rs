//! A TCP forwarder on loopback that a test can cut: a network partition between one process and the
//! API server, without touching the others.
//!
//! ```text
//!   controller ──> 127.0.0.1:<port> (Partition) ──> API server
//!                        cut(): every connection stalls (no byte moves either way, nothing is closed:
//!                               the client sees a half-open connection, like a dropped link)
//!                        heal(): stalled connections are dropped unforwarded (what sat in them never
//!                               arrives, as after a partition longer than TCP's retries); new ones flow
//! ```

use anyhow::Result;
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A cuttable forwarder to `upstream`. Stops when dropped.
#[derive(Debug)]
pub struct Partition {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// `cut` state: odd while cut; each cut or heal bumps it, so a connection knows whether it lived
/// through a cut.
fn is_cut(v: u64) -> bool {
    v % 2 == 1
}

impl Partition {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let _ = forward(down, upstream, rx).await;
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// Stops every byte, both ways, on every connection, old and new.
    pub fn cut(&self) {
        self.cut.send_modify(|v| {
            if !is_cut(*v) {
                *v += 1;
            }
        });
    }

    /// Drops the connections that lived through the cut, unforwarded; new connections flow again.
    pub fn heal(&self) {
        self.cut.send_modify(|v| {
            if is_cut(*v) {
                *v += 1;
            }
        });
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut down: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<u64>) -> Result<()> {
    // A connection made during a cut waits (SYN answered, nothing else) until the heal.
    let born = loop {
        let v = *cut.borrow_and_update();
        if !is_cut(v) {
            break v;
        }
        cut.changed().await?;
    };
    let mut up = TcpStream::connect(upstream).await?;
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.split();
    let mut a = vec![0u8; 64 * 1024];
    let mut b = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = dr.read(&mut a) => {
                let n = n?;
                if n == 0 { return Ok(()); }
                if *cut.borrow() != born { break; }
                uw.write_all(&a[..n]).await?;
            }
            n = ur.read(&mut b) => {
                let n = n?;
                if n == 0 { return Ok(()); }
                if *cut.borrow() != born { break; }
                dw.write_all(&b[..n]).await?;
            }
            r = cut.changed() => { r?; if *cut.borrow() != born { break; } }
        }
    }
    // Cut: hold both sockets open, move nothing, until the heal; then drop them.
    while is_cut(*cut.borrow_and_update()) {
        cut.changed().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_stalls_and_a_heal_drops_what_lived_through_it() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let p = Partition::start(upstream).await.expect("start");
        let mut c = TcpStream::connect(p.addr).await.expect("connect");
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await.expect("write");
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");

        p.cut();
        c.write_all(b"lost").await.expect("write into the cut");
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(stalled.is_err(), "nothing comes back through a cut");
        p.heal();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the old connection is dropped at the heal")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed, and what was sent into the cut never came back");

        let mut c2 = TcpStream::connect(p.addr).await.expect("connect");
        c2.write_all(b"pong").await.expect("write");
        c2.read_exact(&mut buf).await.expect("echo after the heal");
        assert_eq!(&buf, b"pong");
    }
}
