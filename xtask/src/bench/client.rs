//! The bench's traffic clients. Each runs on a thread that has entered a client pod's network
//! namespace (`lb_lab::netns::run_in`), so its sockets live in the pod and its packets cross
//! the pod's veth, the node and (for remote backends) the "kind" network, as a pod's would.
//! In-process rather than a spawned program: no process start-up in the timings.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// What a connection sends: the echo server answers with its pod name and closes first, so
/// the client never holds TIME_WAIT and can open connections back to back.
const REQUEST: &[u8] = b"GET /hostname HTTP/1.1\r\nHost: bench\r\n\r\n";

/// A small xorshift: targets are picked at random but reproducibly, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One short exchange: connect (timed), request, read the whole answer. The connect time,
/// or why the exchange failed.
fn exchange(target: SocketAddr, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to {target}"))?;
    let connected = started.elapsed();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(REQUEST)?;
    let mut answer = Vec::with_capacity(256);
    stream.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("{target} answered {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(connected)
}

/// Connect times of `count` exchanges with targets picked at random; and the failures.
pub fn connect_latency(
    targets: &[SocketAddr],
    count: usize,
    seed: u64,
) -> (Vec<Duration>, Vec<String>) {
    let mut rng = Rng::new(seed);
    let mut samples = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for _ in 0..count {
        let target = targets[rng.below(targets.len())];
        match exchange(target, Duration::from_secs(2)) {
            Ok(t) => samples.push(t),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    (samples, failures)
}

/// Exchanges completed per second by `threads` clients in a closed loop for `duration`, each
/// with a new connection to a random target; and how many failed.
pub fn conn_rate(
    targets: &[SocketAddr],
    threads: usize,
    duration: Duration,
    seed: u64,
) -> (f64, u64) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let started = Instant::now();
    // Threads spawned here inherit the namespace of this (already moved) thread.
    std::thread::scope(|s| {
        for t in 0..threads {
            let (done, failed) = (&done, &failed);
            s.spawn(move || {
                let mut rng = Rng::new(seed.wrapping_add(t as u64 * 7919));
                while started.elapsed() < duration {
                    let target = targets[rng.below(targets.len())];
                    match exchange(target, Duration::from_secs(2)) {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

/// Round trips of one line each on one established connection (the echo server's `STREAM`
/// mode): the datapath cost of an established flow, without connection set-up.
pub fn rr_latency(target: SocketAddr, count: usize) -> Result<Vec<Duration>> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"STREAM\r\n\r\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "OK" {
        bail!("{target} did not enter stream mode: {line:?}");
    }
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        line.clear();
        let t = Instant::now();
        writer.write_all(format!("seq {i}\n").as_bytes())?;
        reader.read_line(&mut line)?;
        samples.push(t.elapsed());
        if !line.contains(&format!("seq {i}")) {
            bail!("round trip {i}: unexpected answer {line:?}");
        }
    }
    Ok(samples)
}

/// What a paced UDP stream did.
pub struct UdpStream {
    pub sent: u64,
    pub received: u64,
}

/// Sends `rate` datagrams per second of `size` bytes to `target` for `duration`, and counts
/// the echo server's answers (so both directions cross the datapath).
pub fn udp_stream(
    target: SocketAddr,
    rate: u64,
    size: usize,
    duration: Duration,
) -> Result<UdpStream> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let receiver = socket.try_clone()?;
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let mut sent = 0u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if receiver.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Paced in 1 ms slices: exact enough for a fixed offered load, and cheap.
        while started.elapsed() < duration {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                // A full socket buffer is a drop like any other; the rate is what was offered.
                let _ = socket.send(&payload);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    Ok(UdpStream {
        sent,
        received: received.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stays_below_its_bound_and_covers_it() {
        let mut rng = Rng::new(42);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
