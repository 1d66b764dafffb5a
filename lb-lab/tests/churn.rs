//! A rolling update that never stops: once a second a new backend turns ready, an old one
//! terminating, and the one that was terminating leaves the slice, for `LB_CHURN_SECONDS`
//! (30 by default; the 3 minutes with `LB_CHURN_SECONDS=180`). Meanwhile short TCP
//! connections go through the ClusterIP from a pod and through the NodePort and the LB IP
//! from the host, long-lived ones are exercised once a second, and UDP clients on one fixed
//! source port ask every 50 ms who answers.
//!
//! Goals: every short and every held connection succeeds, and every UDP answer comes from
//! a backend that was serving (ready or terminating) at most a second before it. The
//! figures (success rate, p99) are printed for the record.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use lb_lab::{
    load::{self, Held, LoadReport},
    probe::ProbeRequest,
    rollout,
    scenarios::{Failed, Scenario},
    Binaries, Lab, UpOptions,
};

const HOST_NS: &str = "lbk-host";
const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 62, 1);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 62);
const NODE_PORT: u16 = 30621;
const UDP_NODE_PORT: u16 = 30622;
const STEP: Duration = Duration::from_secs(1);
/// How long after a change a UDP flow may still answer from a backend that left.
const UDP_GRACE: Duration = Duration::from_secs(1);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn seconds() -> u64 {
    std::env::var("LB_CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// What the UDP clients heard: when, and from whom.
struct Heard {
    at: Instant,
    from: String,
}

/// A UDP client on one fixed source port, asking every 50 ms until `stop`. Returns the
/// answers, and for each lost datagram how many answers came before it.
fn udp_client(
    lab: &Lab,
    ns: &str,
    to: SocketAddr,
    port: u16,
    stop: &AtomicBool,
) -> (Vec<Heard>, Vec<usize>) {
    let (mut heard, mut lost) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let req = ProbeRequest::udp(to, "hostname")
            .from_port(Some(port))
            .with_timeout(Duration::from_millis(500));
        match lab.probe(ns, &req) {
            Ok(from) => heard.push(Heard {
                at: sent,
                from: from.trim().to_string(),
            }),
            Err(_) => lost.push(heard.len()),
        }
        thread::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed()));
    }
    (heard, lost)
}

fn a_rolling_update_every_second_loses_no_connection(lab: &Lab) -> Result<(), Failed> {
    let duration = Duration::from_secs(seconds());
    // (time of the change, who serves from then on); step 0 is applied by setup.
    let history: Mutex<Vec<(Instant, BTreeSet<&'static str>)>> =
        Mutex::new(vec![(Instant::now(), rollout::slice(lab, "churn", 0).1)]);
    let client_pod = lab.pod("worker-client").ok_or("no worker-client pod")?;
    let mut held = Held::open(HOST_NS, &[at(WORKER2_IP, NODE_PORT)], 20, None)?;
    if !held.open_failures.is_empty() {
        return Err(format!("opening held connections: {:?}", held.open_failures).into());
    }
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (short, held_report, udp, churn_err) = thread::scope(|s| {
        let tcp = [
            (
                HOST_NS,
                at(WORKER2_IP, NODE_PORT),
                "host -> NodePort via worker2",
            ),
            (HOST_NS, at(LB_IP, 80), "host -> LB IP via worker2"),
            (
                client_pod.ns.as_str(),
                at(SVC, 80),
                "worker pod -> ClusterIP",
            ),
        ]
        .map(|(ns, to, what)| {
            (
                what,
                s.spawn(move || load::short_tcp_for(ns, to, duration, 1)),
            )
        });
        let udp = [
            (
                HOST_NS,
                at(WORKER2_IP, UDP_NODE_PORT),
                40_622,
                "host -> NodePort/UDP",
            ),
            (
                client_pod.ns.as_str(),
                at(SVC, 81),
                40_623,
                "worker pod -> ClusterIP/UDP",
            ),
        ]
        .map(|(ns, to, port, what)| {
            let stop = &stop;
            (what, s.spawn(move || udp_client(lab, ns, to, port, stop)))
        });
        // The rollout, and the held connections exercised at every step.
        let mut held_report = LoadReport::default();
        let mut churn_err = None;
        let mut k = 1;
        while started.elapsed() < duration {
            thread::sleep((started + STEP * k as u32).saturating_duration_since(Instant::now()));
            let (yaml, serving) = rollout::slice(lab, "churn", k);
            // Recorded before the write: an answer is judged against the older set until a
            // second after this.
            history.lock().unwrap().push((Instant::now(), serving));
            if let Err(e) = lab.apply_yaml("churn-slice", &yaml) {
                churn_err = Some(format!("step {k}: {e:#}"));
                break;
            }
            held_report.merge(held.exchange(k as u64));
            k += 1;
        }
        stop.store(true, Ordering::Relaxed);
        held_report.elapsed = started.elapsed();
        let short: Vec<_> = tcp
            .into_iter()
            .map(|(what, h)| (what, h.join().expect("tcp load")))
            .collect();
        let udp: Vec<_> = udp
            .into_iter()
            .map(|(what, h)| (what, h.join().expect("udp client")))
            .collect();
        (short, held_report, udp, churn_err)
    });
    if let Some(e) = churn_err {
        return Err(e.into());
    }
    let history = history.into_inner().unwrap();
    let steps = history.len() - 1;
    let mut problems = Vec::new();
    for (what, report) in short {
        let report = report?;
        println!(
            "churn: {what}: {report}; success {:.3} %, p99 {:.1?}",
            100.0 * report.ok as f64 / (report.ok + report.failed()).max(1) as f64,
            report.percentile(0.99)
        );
        if report.failed() > 0 || report.ok == 0 {
            problems.push(format!("{what}: {report}"));
        }
    }
    println!(
        "churn: {} held connections, once per step: {held_report}",
        held.len()
    );
    if held_report.failed() > 0 {
        problems.push(format!("held connections: {held_report}"));
    }
    for (what, (heard, lost)) in udp {
        // Who served in the UDP_GRACE before each answer (or at it).
        let stray: Vec<String> = heard
            .iter()
            .filter(|h| {
                !history.iter().enumerate().any(|(i, (since, serving))| {
                    let until = history.get(i + 1).map(|(t, _)| *t + UDP_GRACE);
                    *since <= h.at
                        && until.is_none_or(|u| h.at <= u)
                        && serving.contains(h.from.as_str())
                })
            })
            .map(|h| format!("{} at +{:.1?}", h.from, h.at - started))
            .collect();
        // A datagram in flight when its flow's backend left the slice is lost when the agent
        // drops the flow (the lab's departed pod still answers, to a tuple no longer
        // tracked; a real one would be gone): a loss where the flow moved on is that.
        // Any other loss is a failure.
        let (at_move, lost): (Vec<usize>, Vec<usize>) = lost.into_iter().partition(|&i| {
            i > 0
                && heard
                    .get(i)
                    .is_some_and(|next| next.from != heard[i - 1].from)
        });
        let lost = lost.len();
        let backends: BTreeSet<&str> = heard.iter().map(|h| h.from.as_str()).collect();
        // Where the flow moved, for the record.
        let moves: Vec<String> = heard
            .windows(2)
            .filter(|w| w[0].from != w[1].from)
            .map(|w| format!("+{:.1?} {}", w[1].at - started, w[1].from))
            .collect();
        println!(
            "churn: {what}: moved {} times, first {:?}",
            moves.len(),
            &moves[..moves.len().min(6)]
        );
        println!(
            "churn: {what}: {} answers, {lost} lost, {} lost as the flow's backend left, {} from a backend gone for over {UDP_GRACE:?}; answered by {backends:?}",
            heard.len(),
            at_move.len(),
            stray.len()
        );
        if lost > 0 || !stray.is_empty() || heard.is_empty() {
            problems.push(format!(
                "{what}: {lost} lost, strays {:?}",
                &stray[..stray.len().min(5)]
            ));
        }
    }
    println!("churn: {steps} changes in {:.1?}", started.elapsed());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

const SCENARIOS: [(&str, Scenario); 1] = [(
    "a_rolling_update_every_second_loses_no_connection",
    a_rolling_update_every_second_loses_no_connection,
)];

fn main() {
    lb_lab::scenarios::run(
        "churn",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions::default(),
        |lab| {
            load::raise_fd_limit().expect("raising the fd limit");
            let svc = rollout::service("churn", &SVC.to_string(), &LB_IP.to_string(), NODE_PORT);
            lab.apply_yaml("churn", &svc).expect("applying the service");
            lab.apply_yaml("churn-slice", &rollout::slice(lab, "churn", 0).0)
                .expect("applying the slice");
            lab.route_from_host(&LB_IP.to_string(), "worker2")
                .expect("routing the LB IP via worker2");
            // Served before the clock starts.
            let deadline = Instant::now() + Duration::from_secs(15);
            while lab
                .probe(
                    HOST_NS,
                    &ProbeRequest::tcp(at(WORKER2_IP, NODE_PORT), "/hostname"),
                )
                .is_err()
            {
                assert!(Instant::now() < deadline, "the churn service is not served");
                thread::sleep(Duration::from_millis(200));
            }
        },
        &SCENARIOS,
    )
}
