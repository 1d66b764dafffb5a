//! `lb-lab`: the programs the lab runs: `echo` (the pods' server), `probe` (a client) and
//! `apiserver` (the lab's Kubernetes API server).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use lb_lab::probe::{probe_with_peer, ProbeRequest};

#[derive(Parser)]
#[command(name = "lb-lab", about = "Echo server and probe client for the lb lab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP over TCP and a datagram echo over UDP on one port, answering with the pod's
    /// name and the client address seen (`/hostname`, `/clientip`, `/`).
    Echo {
        /// The pod name to answer with.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = lb_lab::ECHO_PORT)]
        port: u16,
    },
    /// Make one or more requests and print each answer on a line.
    #[command(group(ArgGroup::new("target").required(true)))]
    Probe {
        /// HTTP GET over TCP to IP:PORT.
        #[arg(long, group = "target", value_name = "IP:PORT")]
        tcp: Option<SocketAddr>,
        /// One datagram over UDP to IP:PORT.
        #[arg(long, group = "target", value_name = "IP:PORT")]
        udp: Option<SocketAddr>,
        /// HTTP path (TCP).
        #[arg(long, default_value = "/")]
        path: String,
        /// Datagram text (UDP): `hostname`, `clientip`, or anything else for both.
        #[arg(long, default_value = "hello")]
        msg: String,
        /// Source port to send from.
        #[arg(long)]
        src_port: Option<u16>,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Number of requests (one connection or datagram each); stops at the first failure.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Print `peer <IP:PORT>` (the connected socket's getpeername) before each answer.
        #[arg(long)]
        peer: bool,
    },
    /// A Kubernetes API server for tests and the lab (Services, EndpointSlices, Nodes, Pods;
    /// list and watch; fault injection under /lab/). Plain HTTP, no authentication.
    Apiserver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Persist the store here (and in `<state>.journal`), and resume from it at start.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Create the lab's Nodes and Pods and the `default/kubernetes` Service if missing.
        #[arg(long)]
        seed_lab: bool,
        /// Change events kept for watches to resume from; older ones get 410 Gone.
        #[arg(long, default_value_t = 1000)]
        history: usize,
        /// Milliseconds between BOOKMARK events on watches that allow them.
        #[arg(long, default_value_t = 2000)]
        bookmark_interval_ms: u64,
    },
    /// The lab's own commands (as `cargo xtask lab`), with binaries found beside this one.
    #[command(hide = true)]
    Lab {
        #[command(subcommand)]
        cmd: lb_lab::cli::LabCommand,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Echo { name, port } => {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            // Load tests hold thousands of connections to one pod, as real servers do.
            if let Err(e) = lb_lab::load::raise_fd_limit() {
                eprintln!("echo: {e:#}; serving with the default open-file limit");
            }
            match lb_lab::echo::serve(&name, addr) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("echo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Apiserver {
            listen,
            state,
            seed_lab,
            history,
            bookmark_interval_ms,
        } => {
            let mut config = lb_lab::apiserver::Config::new(listen);
            config.state_file = state;
            config.seed_lab = seed_lab;
            config.history_limit = history;
            config.bookmark_interval = Duration::from_millis(bookmark_interval_ms);
            match lb_lab::apiserver::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("apiserver: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Lab { cmd } => {
            let bins = match std::env::current_exe() {
                Ok(exe) => lb_lab::Binaries::beside(&exe),
                Err(e) => {
                    eprintln!("lb-lab: cannot find my own executable: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match lb_lab::cli::run(cmd, &bins) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Probe {
            tcp,
            udp,
            path,
            msg,
            src_port,
            timeout_ms,
            count,
            peer,
        } => {
            let req = match (tcp, udp) {
                (Some(addr), _) => ProbeRequest::tcp(addr, &path),
                (None, Some(addr)) => ProbeRequest::udp(addr, &msg),
                // clap's required group rules this out.
                (None, None) => return ExitCode::from(2),
            }
            .from_port(src_port)
            .with_timeout(Duration::from_millis(timeout_ms));
            for i in 1..=count {
                match probe_with_peer(&req) {
                    Ok((seen, answer)) => {
                        if peer {
                            println!("peer {seen}");
                        }
                        println!("{answer}");
                    }
                    Err(e) => {
                        let which = if count > 1 {
                            format!(" {i}/{count}")
                        } else {
                            String::new()
                        };
                        eprintln!("probe{which} {}: {e}", req.addr);
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}
