//! A TCP proxy that a test can cut, as a network partition would.
//!
//! Clients connect to the proxy instead of the server. [`TcpProxy::cut`]
//! drops every open connection and refuses new ones (accepted, then closed
//! at once) until [`TcpProxy::restore`]: the server hears nothing from those
//! clients, so for ZooKeeper their sessions time out exactly as they would
//! behind a real partition, with no race against the client's reconnects.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// A proxy on a free port of 127.0.0.1 to one target; stops when dropped.
pub struct TcpProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every open connection, to shut them down on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub fn start(target: &str) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: target.to_owned(),
            cut: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        thread::Builder::new()
            .name("tcp-proxy".into())
            .spawn(move || accept(listener, accepting))?;
        Ok(TcpProxy { address, shared })
    }

    /// The address clients connect to (`127.0.0.1:port`).
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Drops every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Lets clients through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wakes the accepting thread so that it sees the stop.
        let _ = TcpStream::connect(self.address);
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: the client sees its connection closed
        }
        let Ok(server) = TcpStream::connect(&shared.target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        {
            let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
            // A cut that came while connecting must not miss this pair.
            if shared.cut.load(Ordering::SeqCst) {
                continue;
            }
            open.retain(|stream| stream.peer_addr().is_ok());
            open.extend([client_copy, server_copy]);
        }
        pipe(client.try_clone(), server.try_clone());
        pipe(server.try_clone(), client.try_clone());
    }
}

/// Copies `from` into `to` on a thread of its own; when either side ends,
/// both are shut down so the peer sees the close.
fn pipe(from: io::Result<TcpStream>, to: io::Result<TcpStream>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    let _ = thread::Builder::new()
        .name("tcp-proxy-pipe".into())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let _ = io::copy(&mut reader, &mut stream);
                });
            }
        });
        address
    }

    fn round_trip(address: &str) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer)?;
        Ok(answer.to_vec())
    }

    #[test]
    fn forwards_until_cut_and_again_after_restore() {
        let proxy = TcpProxy::start(&echo_server().to_string()).unwrap();
        let mut before = TcpStream::connect(proxy.address()).unwrap();
        before.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        before.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"ping");

        proxy.cut();
        // The open connection is closed: a read sees the end.
        let mut rest = Vec::new();
        before
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(before.read_to_end(&mut rest).unwrap(), 0);
        // New connections are closed before any byte goes through.
        assert!(round_trip(&proxy.address()).is_err());

        proxy.restore();
        assert_eq!(round_trip(&proxy.address()).unwrap(), b"ping");
    }
}
