//! Load from inside a lab namespace, with every failure counted by its cause: many short
//! HTTP connections (one after the other, or from several threads at once), and many
//! long-lived connections held open and exercised together.
//!
//! Sockets are made in the namespace (a socket belongs to the namespace it was created in):
//! each worker thread enters it once and then connects as fast as it can.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns;

/// How long one connect or answer may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What a load run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub ok: u64,
    /// Failures by cause (an error kind, or what was wrong with the answer).
    pub failures: BTreeMap<String, u64>,
    /// Successful exchanges that took [`SLOW`] or more: a packet was lost and retransmitted
    /// (TCP's first retransmission comes after a second).
    pub slow: u64,
    /// The longest successful exchange.
    pub longest: Duration,
    pub elapsed: Duration,
    /// How long each successful exchange took, in µs (for percentiles), in no order.
    pub latencies_us: Vec<u32>,
}

/// An exchange this slow had a packet retransmitted.
pub const SLOW: Duration = Duration::from_millis(500);

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Successful exchanges a second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0.99 for p99) of the successful exchanges' durations, nearest
    /// rank; zero without any.
    pub fn percentile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).saturating_sub(1);
        Duration::from_micros(u64::from(sorted[rank.min(last)]))
    }

    fn succeeded(&mut self, took: Duration) {
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        self.ok += 1;
        self.slow += u64::from(took >= SLOW);
        self.longest = self.longest.max(took);
    }

    fn fail(&mut self, cause: impl Into<String>) {
        *self.failures.entry(cause.into()).or_default() += 1;
    }

    /// Adds `other`'s counts (not its elapsed time).
    pub fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.slow += other.slow;
        self.longest = self.longest.max(other.longest);
        self.latencies_us.extend(other.latencies_us);
        for (cause, n) in other.failures {
            *self.failures.entry(cause).or_default() += n;
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed in {:.1?} ({:.0}/s)",
            self.ok,
            self.failed(),
            self.elapsed,
            self.rate()
        )?;
        if self.ok > 0 {
            write!(
                f,
                ", {} took {SLOW:?} or more (longest {:.1?})",
                self.slow, self.longest
            )?;
        }
        for (cause, n) in &self.failures {
            write!(f, "; {n}x {cause}")?;
        }
        Ok(())
    }
}

/// Raises this process's open-file limit to its hard limit: thousands of sockets at once do
/// not fit the usual soft limit of 1024.
pub fn raise_fd_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    Ok(hard)
}

/// `n` short connections from namespace `ns` to `addr`, spread over `threads` threads that
/// each make theirs one after the other: connect, `GET /hostname`, read the answer to the
/// server's close, close.
pub fn short_tcp(ns: &str, addr: SocketAddr, n: u64, threads: u64) -> Result<LoadReport> {
    let threads = threads.clamp(1, n.max(1));
    on_threads(ns, threads, |t| {
        sequential(addr, n / threads + u64::from(t < n % threads))
    })
}

/// Short connections as [`short_tcp`] makes them, from `threads` threads for `duration`.
pub fn short_tcp_for(
    ns: &str,
    addr: SocketAddr,
    duration: Duration,
    threads: u64,
) -> Result<LoadReport> {
    let deadline = Instant::now() + duration;
    on_threads(ns, threads.max(1), |_| until(addr, deadline))
}

/// Runs `work(t)` for t in 0..threads, each on a thread of its own inside `ns`, and adds
/// up what they saw.
fn on_threads(
    ns: &str,
    threads: u64,
    work: impl Fn(u64) -> LoadReport + Sync,
) -> Result<LoadReport> {
    let start = Instant::now();
    let work = &work;
    let reports: Vec<Result<LoadReport, netns::NetnsError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || netns::run_in(ns, || work(t))))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("load thread"))
            .collect()
    });
    let mut total = LoadReport::default();
    for r in reports {
        total.merge(r.with_context(|| format!("entering {ns}"))?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

fn until(addr: SocketAddr, deadline: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    while Instant::now() < deadline {
        exchange_once(addr, &mut report);
    }
    report
}

fn exchange_once(addr: SocketAddr, report: &mut LoadReport) {
    let start = Instant::now();
    match one_request(addr) {
        Ok(()) => report.succeeded(start.elapsed()),
        Err(cause) => report.fail(cause),
    }
}

fn sequential(addr: SocketAddr, n: u64) -> LoadReport {
    let mut report = LoadReport::default();
    for _ in 0..n {
        exchange_once(addr, &mut report);
    }
    report
}

/// One connection's whole life; the error names what went wrong.
fn one_request(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {}", kind(&e)))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("socket: {e}"))?;
    stream
        .write_all(b"GET /hostname HTTP/1.1\r\nHost: lab\r\n\r\n")
        .map_err(|e| format!("send: {}", kind(&e)))?;
    let mut answer = Vec::with_capacity(256);
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {}", kind(&e)))?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "bad answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ));
    }
    Ok(())
}

fn kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_string(),
        None => format!("{:?}", e.kind()),
    }
}

/// Long-lived connections (the echo server's STREAM mode), all open at once.
pub struct Held {
    conns: Vec<(SocketAddr, BufReader<TcpStream>, TcpStream)>,
    /// Connections that could not be opened, by cause.
    pub open_failures: BTreeMap<String, u64>,
}

impl Held {
    /// Opens `n` connections from namespace `ns`, the i-th to `targets[i % len]`, each from
    /// the port the kernel picks (`src_port` None) or from one fixed port for all (with
    /// SO_REUSEADDR, as clients that bind before connecting do).
    pub fn open(ns: &str, targets: &[SocketAddr], n: usize, src_port: Option<u16>) -> Result<Held> {
        let opened = netns::run_in(ns, || {
            (0..n)
                .map(|i| connect_stream(targets[i % targets.len()], src_port))
                .collect::<Vec<_>>()
        })
        .with_context(|| format!("entering {ns}"))?;
        let mut held = Held {
            conns: Vec::new(),
            open_failures: BTreeMap::new(),
        };
        for c in opened {
            match c {
                Ok(c) => held.conns.push(c),
                Err(cause) => *held.open_failures.entry(cause).or_default() += 1,
            }
        }
        Ok(held)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The local port of every connection.
    pub fn local_ports(&self) -> Vec<u16> {
        self.conns
            .iter()
            .filter_map(|(_, _, w)| w.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// One numbered exchange on every connection, each of which must be answered by the
    /// backend that answered its first (the answers name their pod).
    pub fn exchange(&mut self, seq: u64) -> LoadReport {
        let start = Instant::now();
        let mut report = LoadReport::default();
        for (_, _, writer) in &mut self.conns {
            if writer.write_all(format!("seq {seq}\n").as_bytes()).is_err() {
                report.fail("send");
            }
        }
        for (addr, reader, _) in &mut self.conns {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => report.fail(format!("closed by {addr}")),
                Ok(_) if line.trim_end().ends_with(&format!("seq {seq}")) => report.ok += 1,
                Ok(_) => report.fail(format!("wrong answer {:?}", line.trim_end())),
                Err(e) => report.fail(format!("read: {}", kind(&e))),
            }
        }
        report.elapsed = start.elapsed();
        report
    }
}

fn connect_stream(
    addr: SocketAddr,
    src_port: Option<u16>,
) -> Result<(SocketAddr, BufReader<TcpStream>, TcpStream), String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {}", kind(&e)))?;
    if let Some(port) = src_port {
        socket
            .set_reuse_address(true)
            .map_err(|e| format!("SO_REUSEADDR: {}", kind(&e)))?;
        socket
            .bind(&SockAddr::from(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))))
            .map_err(|e| format!("bind: {}", kind(&e)))?;
    }
    socket
        .connect_timeout(&SockAddr::from(addr), TIMEOUT)
        .map_err(|e| format!("connect: {}", kind(&e)))?;
    let stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("socket: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
    writer
        .write_all(b"STREAM\n\n")
        .map_err(|e| format!("send: {}", kind(&e)))?;
    let mut reader = BufReader::new(stream);
    let mut ok = String::new();
    match reader.read_line(&mut ok) {
        Ok(_) if ok.trim() == "OK" => Ok((addr, reader, writer)),
        Ok(_) => Err(format!("not in stream mode: {:?}", ok.trim())),
        Err(e) => Err(format!("read: {}", kind(&e))),
    }
}

/// The kernel's checksum error counters in namespace `ns` (`/proc/net/snmp`'s Tcp and Udp
/// InCsumErrors): a packet the datapath rewrote with a wrong checksum is counted here by
/// the receiver and dropped.
pub fn checksum_errors(ns: &str) -> Result<(u64, u64)> {
    let snmp = netns::run_in(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .with_context(|| format!("entering {ns}"))?
        .with_context(|| format!("reading /proc/net/snmp in {ns}"))?;
    Ok((
        snmp_field(&snmp, "Tcp:", "InCsumErrors")?,
        snmp_field(&snmp, "Udp:", "InCsumErrors")?,
    ))
}

/// Field `field` of the `proto` lines (a header line of names, then one of values).
fn snmp_field(snmp: &str, proto: &str, field: &str) -> Result<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(proto));
    let (names, values) = lines
        .next()
        .zip(lines.next())
        .with_context(|| format!("no {proto} lines in /proc/net/snmp"))?;
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no {proto} {field} in /proc/net/snmp"))?;
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no value for {proto} {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm InSegs InCsumErrors\nTcp: 1 500 3\n\
                    Udp: InDatagrams NoPorts InErrors InCsumErrors\nUdp: 10 0 0 2\n";
        assert_eq!(snmp_field(snmp, "Tcp:", "InCsumErrors").unwrap(), 3);
        assert_eq!(snmp_field(snmp, "Udp:", "InCsumErrors").unwrap(), 2);
        assert!(snmp_field(snmp, "Udp:", "Nope").is_err());
    }

    #[test]
    fn reports_count_failures_by_cause() {
        let mut r = LoadReport {
            ok: 10,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        r.fail("connect: Connection timed out");
        r.fail("connect: Connection timed out");
        assert_eq!(r.failed(), 2);
        assert_eq!(r.rate(), 5.0);
        assert!(r.to_string().contains("2x connect: Connection timed out"));
    }
}
