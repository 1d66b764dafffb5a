//! Long-lived flows for restart and outage tests: a TCP connection or a UDP socket in a pod
//! that keeps exchanging numbered requests with a service in the background, and reports
//! every request that went unanswered and every backend that answered.
//!
//! The sockets are created inside the pod's namespace (a socket belongs to the namespace it
//! was made in) and then driven from an ordinary thread.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::netns;

/// How long one exchange may take before it counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a flow saw.
#[derive(Debug, Default)]
pub struct FlowReport {
    /// Requests answered correctly.
    pub answered: u64,
    /// Requests lost or answered wrongly, with what happened.
    pub failures: Vec<String>,
    /// Pods that answered (more than one means the flow was moved).
    pub backends: BTreeSet<String>,
}

impl FlowReport {
    /// No request lost, and one backend all along.
    pub fn is_lossless(&self) -> bool {
        self.failures.is_empty() && self.backends.len() == 1 && self.answered > 0
    }
}

/// A flow running in the background.
pub struct Flow {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handle: JoinHandle<FlowReport>,
}

enum Socket {
    Tcp(BufReader<TcpStream>, TcpStream),
    Udp(UdpSocket),
}

impl Flow {
    /// A TCP connection from pod namespace `ns` to `addr` (an echo server in STREAM mode)
    /// exchanging a request every `interval`.
    pub fn tcp(ns: &str, addr: SocketAddr, interval: Duration) -> Result<Flow> {
        let stream = netns::run_in(ns, || TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT))?
            .with_context(|| format!("connecting from {ns} to {addr}"))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(b"STREAM\n\n")?;
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok)?;
        if ok.trim() != "OK" {
            bail!("{addr} did not enter stream mode: {ok:?}");
        }
        Ok(Self::start(Socket::Tcp(reader, writer), interval))
    }

    /// A UDP socket in pod namespace `ns`, bound to `src_port`, sending to `addr` every
    /// `interval` and waiting for each answer.
    pub fn udp(ns: &str, addr: SocketAddr, src_port: u16, interval: Duration) -> Result<Flow> {
        let socket = netns::run_in(ns, || -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind(("0.0.0.0", src_port))?;
            socket.connect(addr)?;
            Ok(socket)
        })?
        .with_context(|| format!("UDP socket in {ns} to {addr}"))?;
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Self::start(Socket::Udp(socket), interval))
    }

    fn start(mut socket: Socket, interval: Duration) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (stop2, answered2) = (Arc::clone(&stop), Arc::clone(&answered));
        let handle = std::thread::spawn(move || {
            let mut report = FlowReport::default();
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                seq += 1;
                match exchange(&mut socket, seq) {
                    Ok(backend) => {
                        report.answered += 1;
                        answered2.fetch_add(1, Ordering::Relaxed);
                        report.backends.insert(backend);
                    }
                    Err(e) => report.failures.push(format!("seq {seq}: {e}")),
                }
                std::thread::sleep(interval);
            }
            report
        });
        Flow {
            stop,
            answered,
            handle,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the flow and reports.
    pub fn stop(self) -> FlowReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| FlowReport {
            failures: vec!["the flow thread panicked".into()],
            ..FlowReport::default()
        })
    }
}

/// Sends request `seq` and returns the name of the pod that answered it.
fn exchange(socket: &mut Socket, seq: u64) -> Result<String> {
    let request = format!("seq {seq}");
    let answer = match socket {
        Socket::Tcp(reader, writer) => {
            writer.write_all(format!("{request}\n").as_bytes())?;
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            line
        }
        Socket::Udp(udp) => {
            udp.send(request.as_bytes())?;
            let mut buf = [0u8; 512];
            let n = udp.recv(&mut buf)?;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    match answer.trim().split_once(' ') {
        Some((backend, rest)) if rest == request => Ok(backend.to_string()),
        _ => bail!("unexpected answer {answer:?}"),
    }
}
