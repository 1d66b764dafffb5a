//! The probe client (`lb-lab probe`): one HTTP GET over TCP or one UDP datagram, with errors
//! named the way a person reads them ("connection refused", "timed out").

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Largest HTTP response the probe accepts.
const MAX_RESPONSE: u64 = 64 * 1024;

/// TCP (an HTTP GET) or UDP (one datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// HTTP path (TCP).
    pub path: String,
    /// Datagram text (UDP).
    pub msg: String,
    /// Source port to bind; `None` lets the kernel choose.
    pub src_port: Option<u16>,
    /// For connecting and for the whole answer.
    pub timeout: Duration,
}

/// The probe's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl ProbeRequest {
    /// `GET path` over TCP.
    pub fn tcp(addr: SocketAddr, path: &str) -> Self {
        Self {
            transport: Transport::Tcp,
            addr,
            path: path.to_string(),
            msg: String::new(),
            src_port: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Datagram `msg` over UDP.
    pub fn udp(addr: SocketAddr, msg: &str) -> Self {
        Self {
            transport: Transport::Udp,
            msg: msg.to_string(),
            path: String::new(),
            ..Self::tcp(addr, "")
        }
    }

    /// The same request from source port `port`.
    pub fn from_port(mut self, port: Option<u16>) -> Self {
        self.src_port = port;
        self
    }

    /// The same request with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused")]
    Refused,
    #[error("timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("connection reset")]
    Reset,
    #[error("no route to host")]
    NoRoute,
    #[error("network unreachable")]
    NetworkUnreachable,
    #[error("source port {0} is in use")]
    SourcePortInUse(u16),
    #[error("HTTP {0}")]
    Http(String),
    #[error("bad response: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Io(io::Error),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

impl ProbeError {
    /// The error a `lb-lab probe` process reported on stderr (`probe ADDR: <error>`), read
    /// back from its message, so a probe run as a separate process (inside a node's cgroup)
    /// fails the same way an in-process one does.
    pub fn from_message(stderr: &str, req: &ProbeRequest) -> Self {
        let line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        let msg = line.split_once(": ").map_or(line, |(_, m)| m).trim();
        match msg {
            "connection refused" => Self::Refused,
            "connection reset" => Self::Reset,
            "no route to host" => Self::NoRoute,
            "network unreachable" => Self::NetworkUnreachable,
            _ if msg.starts_with("timed out after") => Self::TimedOut(req.timeout),
            _ if msg.starts_with("source port") => Self::SourcePortInUse(req.src_port.unwrap_or(0)),
            _ => match msg.strip_prefix("HTTP ") {
                Some(status) => Self::Http(status.to_string()),
                None => Self::Io(io::Error::other(line.trim().to_string())),
            },
        }
    }

    fn from_io(e: io::Error, req: &ProbeRequest) -> Self {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::Refused,
            K::TimedOut | K::WouldBlock => Self::TimedOut(req.timeout),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Self::Reset,
            K::HostUnreachable => Self::NoRoute,
            K::NetworkUnreachable => Self::NetworkUnreachable,
            K::AddrInUse => Self::SourcePortInUse(req.src_port.unwrap_or(0)),
            _ => Self::Io(e),
        }
    }
}

/// Makes the request and returns the answer (an HTTP body, or the reply datagram), without
/// trailing newline.
///
/// # Errors
/// A [`ProbeError`] naming what went wrong.
pub fn probe(req: &ProbeRequest) -> Result<String, ProbeError> {
    probe_with_peer(req).map(|(_, answer)| answer)
}

/// As [`probe`], also returning the socket's peer address as getpeername(2) reports it once
/// connected (with socket-level load balancing, the service address rather than the backend).
///
/// # Errors
/// A [`ProbeError`] naming what went wrong.
pub fn probe_with_peer(req: &ProbeRequest) -> Result<(SocketAddr, String), ProbeError> {
    let io = |e| ProbeError::from_io(e, req);
    match req.transport {
        Transport::Tcp => {
            let stream = connect_tcp(req).map_err(io)?;
            let peer = stream.peer_addr().map_err(io)?;
            Ok((peer, http_get(stream, req)?))
        }
        Transport::Udp => {
            let socket = UdpSocket::bind(bind_addr(req)).map_err(io)?;
            socket.connect(req.addr).map_err(io)?;
            socket.set_read_timeout(Some(req.timeout)).map_err(io)?;
            socket.send(req.msg.as_bytes()).map_err(io)?;
            let mut buf = [0u8; 2048];
            let n = socket.recv(&mut buf).map_err(io)?;
            let peer = socket.peer_addr().map_err(io)?;
            Ok((
                peer,
                String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
            ))
        }
    }
}

fn bind_addr(req: &ProbeRequest) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, req.src_port.unwrap_or(0)))
}

fn connect_tcp(req: &ProbeRequest) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(req.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if req.src_port.is_some() {
        // Repeated probes from one source port would otherwise trip over TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(bind_addr(req)))?;
    }
    socket.connect_timeout(&SockAddr::from(req.addr), req.timeout)?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(req.timeout))?;
    stream.set_write_timeout(Some(req.timeout))?;
    Ok(stream)
}

fn http_get(mut stream: TcpStream, req: &ProbeRequest) -> Result<String, ProbeError> {
    let io = |e| ProbeError::from_io(e, req);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lb-lab-probe\r\nConnection: close\r\n\r\n",
        req.path, req.addr
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    parse_http_response(&String::from_utf8_lossy(&raw))
}

/// The body of a 200 response; other statuses and malformed responses are errors.
fn parse_http_response(raw: &str) -> Result<String, ProbeError> {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| ProbeError::BadResponse(first_line(raw)))?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ProbeError::BadResponse(first_line(raw)));
    };
    if !version.starts_with("HTTP/") {
        return Err(ProbeError::BadResponse(first_line(raw)));
    }
    if code != "200" {
        let reason = parts.next().unwrap_or_default();
        return Err(ProbeError::Http(
            format!("{code} {reason}").trim().to_string(),
        ));
    }
    Ok(body.trim_end().to_string())
}

fn first_line(raw: &str) -> String {
    match raw.lines().next() {
        Some(line) if !line.is_empty() => format!("{line:?}"),
        _ => "empty response".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_body_of_a_200_is_the_answer() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\npod\n";
        assert_eq!(parse_http_response(raw).unwrap(), "pod");
    }

    #[test]
    fn other_statuses_and_garbage_are_errors() {
        let not_found = parse_http_response("HTTP/1.1 404 Not Found\r\n\r\nx").unwrap_err();
        assert_eq!(not_found.to_string(), "HTTP 404 Not Found");
        assert_eq!(
            parse_http_response("").unwrap_err().to_string(),
            "bad response: empty response"
        );
        assert!(matches!(
            parse_http_response("SSH-2.0\r\n\r\n"),
            Err(ProbeError::BadResponse(_))
        ));
    }

    #[test]
    fn refused_and_timeout_read_like_a_person_would_say_them() {
        let req = ProbeRequest::tcp("127.0.0.1:1".parse().unwrap(), "/");
        let refused = ProbeError::from_io(io::ErrorKind::ConnectionRefused.into(), &req);
        assert_eq!(refused.to_string(), "connection refused");
        let slow = ProbeError::from_io(io::ErrorKind::WouldBlock.into(), &req);
        assert_eq!(slow.to_string(), "timed out after 2000 ms");
    }

    #[test]
    fn a_probe_process_error_reads_back_as_the_same_error() {
        let req = ProbeRequest::tcp("10.96.0.1:80".parse().unwrap(), "/");
        for e in [
            ProbeError::Refused,
            ProbeError::TimedOut(req.timeout),
            ProbeError::Reset,
            ProbeError::NoRoute,
            ProbeError::Http("503 Service Unavailable".into()),
        ] {
            let stderr = format!("probe {}: {e}\n", req.addr);
            assert_eq!(
                ProbeError::from_message(&stderr, &req).to_string(),
                e.to_string()
            );
        }
        assert!(matches!(
            ProbeError::from_message("something odd", &req),
            ProbeError::Io(_)
        ));
    }

    #[test]
    fn a_closed_loopback_port_is_refused() {
        // Bind then drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let req = ProbeRequest::tcp(SocketAddr::from(([127, 0, 0, 1], port)), "/");
        assert!(matches!(probe(&req), Err(ProbeError::Refused)));
        let udp = ProbeRequest::udp(SocketAddr::from(([127, 0, 0, 1], port)), "x");
        assert!(matches!(probe(&udp), Err(ProbeError::Refused)));
    }
}
