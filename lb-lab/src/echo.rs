//! The pods' echo server (`lb-lab echo`): minimal HTTP/1.1 over TCP and a datagram echo over
//! UDP on the same port, answering with the pod's name and the client address it saw (like
//! agnhost netexec).
//!
//! A TCP client that sends `STREAM` and a blank line instead of an HTTP request gets a
//! long-lived line echo instead (`OK`, then one answer per line), for tests that need a
//! connection to outlive agent restarts.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// Longest request head the server reads; anything longer is answered with 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a connection may take to send its request or receive the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where pods serve: every address, port 8080.
pub const POD_BIND: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    crate::plan::ECHO_PORT,
);

/// Serves TCP and UDP on `addr` as pod `name`, until the process is killed.
///
/// # Errors
/// If either socket cannot be bound.
pub fn serve(name: &str, addr: SocketAddr) -> Result<()> {
    // UDP before TCP: whoever sees the TCP port accept knows UDP is ready too.
    let udp = UdpSocket::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
    let tcp = TcpListener::bind(addr).with_context(|| format!("cannot bind TCP {addr}"))?;
    println!("echo: {name} serving HTTP over TCP and UDP on {addr}");
    let udp_name = name.to_string();
    thread::Builder::new()
        .name("udp".into())
        .spawn(move || serve_udp(&udp, &udp_name))
        .context("cannot start the UDP thread")?;
    serve_tcp(&tcp, name);
    Ok(())
}

/// What the server answers to a request for `what` (an HTTP path or a datagram's text) from
/// `peer`; `None` for an unknown HTTP path.
pub fn answer(name: &str, what: &str, peer: SocketAddr, http: bool) -> Option<String> {
    match what {
        "hostname" | "/hostname" => Some(name.to_string()),
        "clientip" | "/clientip" => Some(peer.to_string()),
        "/" => Some(format!("{name} {peer}")),
        // Sequence-numbered probes of long-lived flows are echoed, so losses show.
        seq if seq.starts_with("seq ") => Some(format!("{name} {seq}")),
        _ if http => None,
        _ => Some(format!("{name} {peer}")),
    }
}

fn serve_tcp(listener: &TcpListener, name: &str) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(stream) => stream,
            // Transient (e.g. EMFILE or a connection reset before accept): keep serving.
            Err(e) => {
                eprintln!("echo: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let name = name.to_string();
        let spawned = thread::Builder::new().name("http".into()).spawn(move || {
            if let Err(e) = handle_http(stream, &name) {
                eprintln!("echo: connection: {e}");
            }
        });
        if let Err(e) = spawned {
            // Out of threads: dropping the stream refuses this client, the server lives on.
            eprintln!("echo: cannot start a connection thread: {e}");
        }
    }
}

fn handle_http(mut stream: TcpStream, name: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_request_head(&mut stream)?;
    if head
        .as_deref()
        .is_some_and(|h| h.trim_start().starts_with("STREAM"))
    {
        return stream_lines(stream, name, peer);
    }
    let (status, body) = match head {
        None => (
            "431 Request Header Fields Too Large",
            "request too large".to_string(),
        ),
        Some(head) => respond(&head, name, peer),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    // Errors here only mean the client already left.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// The long-lived mode: `OK`, then an answer for every line until the client closes.
fn stream_lines(stream: TcpStream, name: &str, peer: SocketAddr) -> io::Result<()> {
    use std::io::BufRead;
    // Flows in tests pause while agents restart; a minute of silence is still alive.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(b"OK\n")?;
    for line in io::BufReader::new(stream).lines() {
        let line = line?;
        let reply = answer(name, line.trim(), peer, false).unwrap_or_default();
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
    Ok(())
}

/// Reads up to the blank line ending the request head; `None` if it is too long.
fn read_request_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn respond(head: &str, name: &str, peer: SocketAddr) -> (&'static str, String) {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", "bad request".to_string());
    };
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET".to_string());
    }
    let path = target.split('?').next().unwrap_or(target);
    match answer(name, path, peer, true) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", format!("no such path {path}")),
    }
}

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            // E.g. ECONNREFUSED left over from an earlier reply: not fatal for a server.
            Err(e) => {
                eprintln!("echo: udp receive: {e}");
                continue;
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        // Tolerate `echo hostname | nc -u`.
        let reply = answer(name, text.trim(), peer, false).unwrap_or_default();
        if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
            eprintln!("echo: udp reply to {peer}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.244.1.4:40000".parse().unwrap()
    }

    #[test]
    fn http_paths_answer_like_netexec() {
        assert_eq!(
            respond("GET /hostname HTTP/1.1\r\n\r\n", "p", peer()),
            ("200 OK", "p".into())
        );
        assert_eq!(
            respond("GET /clientip?x=1 HTTP/1.1\r\n\r\n", "p", peer()),
            ("200 OK", "10.244.1.4:40000".into())
        );
        assert_eq!(
            respond("GET / HTTP/1.1\r\n\r\n", "p", peer()),
            ("200 OK", "p 10.244.1.4:40000".into())
        );
        assert_eq!(
            respond("GET /nope HTTP/1.1\r\n\r\n", "p", peer()).0,
            "404 Not Found"
        );
        assert_eq!(
            respond("POST / HTTP/1.1\r\n\r\n", "p", peer()).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("\r\n\r\n", "p", peer()).0, "400 Bad Request");
    }

    #[test]
    fn datagrams_answer_hostname_clientip_or_both() {
        assert_eq!(answer("p", "hostname", peer(), false).unwrap(), "p");
        assert_eq!(
            answer("p", "clientip", peer(), false).unwrap(),
            "10.244.1.4:40000"
        );
        assert_eq!(
            answer("p", "hi", peer(), false).unwrap(),
            "p 10.244.1.4:40000"
        );
        assert_eq!(answer("p", "seq 7", peer(), false).unwrap(), "p seq 7");
    }

    #[test]
    fn server_answers_tcp_and_udp_on_loopback() {
        // Port 0 would give TCP and UDP different ports, so find one free for both.
        let port = (20000..30000)
            .find(|p| {
                TcpListener::bind(("127.0.0.1", *p)).is_ok()
                    && UdpSocket::bind(("127.0.0.1", *p)).is_ok()
            })
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        thread::spawn(move || serve("loop", addr));
        let tcp = crate::probe::ProbeRequest::tcp(addr, "/hostname");
        let udp = crate::probe::ProbeRequest::udp(addr, "hostname");
        let mut ok = false;
        for _ in 0..50 {
            if crate::probe::probe(&tcp).is_ok() {
                ok = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(ok, "echo server did not come up");
        assert_eq!(crate::probe::probe(&tcp).unwrap(), "loop");
        assert_eq!(crate::probe::probe(&udp).unwrap(), "loop");
    }
}
