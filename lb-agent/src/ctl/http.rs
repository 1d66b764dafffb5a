//! A minimal blocking HTTP/1.1 GET over plain TCP, for reading the agent's local state
//! endpoint. The agent serves it on the node without TLS, so this is all `lbctl diff`
//! needs; a full client would only add dependencies.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

/// A larger answer is not the agent's state.
const MAX_RESPONSE: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// URL with a host")]
    BadUrl(String),
    #[error("cannot resolve {host}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {addr}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("talking to {addr} failed")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr} did not answer with valid HTTP: {reason}")]
    BadResponse { addr: SocketAddr, reason: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// The parts of an `http://host[:port][/path]` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Option<Url<'_>> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // `[::1]:10249` or `host:10249` or `host`.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(Url { host, port, path })
}

/// GETs `url` and returns the body of a 200 answer.
pub fn get(url: &str, timeout: Duration) -> Result<Vec<u8>, HttpError> {
    let u = parse_url(url).ok_or_else(|| HttpError::BadUrl(url.to_owned()))?;
    let addrs: Vec<SocketAddr> = (u.host, u.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            host: u.host.to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some((s, addr));
                break;
            }
            Err(source) => last = Some(HttpError::Connect { addr, source }),
        }
    }
    let Some((mut stream, addr)) = stream else {
        return Err(last.unwrap_or_else(|| HttpError::Resolve {
            host: u.host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }));
    };
    let io_err = |source| HttpError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let host_header = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nUser-Agent: lbctl\r\nConnection: close\r\n\r\n",
        u.path
    )
    .map_err(io_err)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io_err)?;
    let response =
        parse_response(&raw).map_err(|reason| HttpError::BadResponse { addr, reason })?;
    if response.status != 200 {
        let body = String::from_utf8_lossy(&response.body);
        return Err(HttpError::Status {
            url: url.to_owned(),
            status: response.status,
            body: body.trim().chars().take(200).collect(),
        });
    }
    Ok(response.body)
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Parses a whole response read until the server closed the connection.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("body shorter than its Content-Length {n}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body (RFC 9112 section 7.1), ignoring extensions and trailers.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::{net::TcpListener, thread};

    /// Serves `response` (raw bytes) to every connection on a local port, for tests; returns
    /// the base URL.
    pub fn serve(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // Read the request head before answering, as a real server does.
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(&response);
            }
        });
        format!("http://{addr}")
    }

    pub fn ok_json(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:10249/state"),
            Some(Url {
                host: "127.0.0.1",
                port: 10249,
                path: "/state"
            })
        );
        assert_eq!(
            parse_url("http://localhost"),
            Some(Url {
                host: "localhost",
                port: 80,
                path: "/"
            })
        );
        assert_eq!(
            parse_url("http://[::1]:8080/x"),
            Some(Url {
                host: "::1",
                port: 8080,
                path: "/x"
            })
        );
        assert_eq!(parse_url("https://x/"), None);
        assert_eq!(parse_url("http://:80/"), None);
        assert_eq!(parse_url("http://h:notaport/"), None);
    }

    #[test]
    fn bodies_are_read_by_length_chunks_or_until_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot synced").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"not synced"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_local_server_is_read_and_errors_name_the_status() {
        let url = serve(ok_json("{}"));
        let body = get(&format!("{url}/state"), Duration::from_secs(5)).expect("get");
        assert_eq!(body, b"{}");
        let url = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec());
        let e = get(&format!("{url}/state"), Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{url}/state answered 404: not found")
        );
    }

    #[test]
    fn a_closed_port_is_a_connect_error() {
        // Bind then drop, so the port is very likely closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let e = get(&format!("http://{addr}/state"), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }
}
