//! Addresses for tests without the bind-then-drop race: a port picked by
//! binding port 0 and closing the socket again is free only until someone
//! else (another test, a connection's local end) takes it. Here servers
//! bind port 0 themselves and report the address they got
//! ([`addr_in_log`]), and an address that must exist before anything
//! serves on it is held by a socket bound but not listening
//! ([`ReservedAddr`]): nobody else can take the port, and a connection to
//! it is refused.

use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// A port on 127.0.0.1 held by this process but not listening: connecting
/// to it is refused, and it stays out of other hands for as long as the
/// value lives.
pub struct ReservedAddr {
    socket: Socket,
    addr: SocketAddr,
}

impl ReservedAddr {
    pub fn new() -> std::io::Result<ReservedAddr> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let addr = socket.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("not an inet address"))?;
        Ok(ReservedAddr { socket, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the reserved port: the same socket, so the port
    /// never was free in between. Blocking, as std's listeners are; set it
    /// non-blocking before handing it to tokio.
    pub fn listen(self) -> std::io::Result<std::net::TcpListener> {
        self.socket.listen(1024)?;
        Ok(self.socket.into())
    }
}

/// A port for a server that must come back on the same port after a
/// restart (a ZooKeeper, the chaos test's nodes), where binding port 0 on
/// each start cannot serve. Picked at random below the kernel's ephemeral
/// range, so no connection's local end takes it while the server is down,
/// and free when picked; another process may still pick the same one, so a
/// caller whose server then fails to bind picks again.
pub fn stable_port(rng: &mut fastrand::Rng) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    for _ in 0..100 {
        let port = rng.u16(10_000..ephemeral_low.max(10_001));
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The address in the first line of `log` that contains `message` and then
/// `key=<address>` (how the roles log where they listen, e.g. `api
/// listening addr=127.0.0.1:43125`), once the line is complete.
pub fn addr_in_log(log: &str, message: &str, key: &str) -> Option<SocketAddr> {
    let field = format!("{key}=");
    log.split_inclusive('\n').filter(|line| line.ends_with('\n')).find_map(|line| {
        let (_, after) = line.split_once(message)?;
        let (_, value) = after.split_once(&field)?;
        value.split_whitespace().next()?.trim_matches('"').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_refuses_connections_until_it_listens() {
        let reserved = ReservedAddr::new().unwrap();
        let addr = reserved.addr();
        assert_ne!(addr.port(), 0);
        let err = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(std::net::TcpListener::bind(addr).is_err(), "the port is held");
        let listener = reserved.listen().unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn addresses_are_read_from_complete_log_lines() {
        let log = "2026-12-03T10:00:00Z  INFO sluice_api: api listening addr=127.0.0.1:43125\n";
        assert_eq!(addr_in_log(log, "api listening", "addr"), Some("127.0.0.1:43125".parse().unwrap()));
        assert_eq!(addr_in_log(log, "worker started", "addr"), None);
        assert_eq!(addr_in_log("x INFO api listening addr=127.0.0.1:4", "api listening", "addr"), None, "a line still being written");
        let json = "{\"fields\":{\"message\":\"api listening\",\"addr\":\"127.0.0.1:9\"}}\n";
        assert_eq!(addr_in_log(json, "api listening", "addr"), None, "only the text format");
    }
}
