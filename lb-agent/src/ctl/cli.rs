//! `lbctl`'s command line and what each command does; the binary only prints the outcome.

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, Subcommand};

use super::{
    attachments,
    conntrack::{self, BackendSelector, FilterError, FlowFilter, ServiceSelector},
    desired::{self, FetchError},
    diff,
    dump::{self, Section},
    map_id::MapId,
    monotonic_ns,
    output::{json, Format, ViewFormat},
    parity::{self, ParseError, Source},
    pinned::{self, ConntrackMap, PinnedError},
    services::{self, ServiceFilter, ServicesError},
    skipped, stats,
};
use crate::datapath::privilege::{self, PrivilegeError};

/// Exit status: success, and for `diff` and `parity`, no differences.
pub const EXIT_OK: u8 = 0;
/// `diff` or `parity` found differences.
pub const EXIT_DIFFERENCES: u8 = 1;
/// Any error (clap's usage errors exit 2 as well).
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Inspect the lb datapath from its pinned maps (works while the agent is down)",
    after_help = "Exit status: 0 success; 1 `diff` or `parity` found differences; 2 error."
)]
pub struct Args {
    /// The agent's --pin-dir.
    #[arg(long, default_value = "/sys/fs/bpf/lb", global = true)]
    pub pin_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with the maps.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Each service by namespace/name and port: its frontends, one row each, and each
    /// distinct backend set once, with the backends' packets and bytes.
    Services {
        /// Only this service (namespace/name) or service port (namespace/name:port).
        #[arg(long, value_name = "NS/NAME[:PORT]")]
        service: Option<ServiceFilter>,
        /// What the agent left out and why, from its state endpoint (--agent) rather than
        /// the maps.
        #[arg(long)]
        skipped: bool,
        /// The agent's state endpoint, for --skipped.
        #[arg(long, default_value = desired::DEFAULT_URL, requires = "skipped")]
        agent: String,
        /// Seconds to wait for the agent, for --skipped.
        #[arg(long, default_value_t = 5, requires = "skipped")]
        timeout: u64,
        #[arg(short, long, value_enum, default_value_t)]
        output: ViewFormat,
    },
    /// Tracked connections.
    Conntrack {
        #[command(subcommand)]
        command: ConntrackCommand,
    },
    /// Packets by reason (translated, passed, rejected, dropped), summed over CPUs, and
    /// where the programs are attached (uplink, XDP mode, socket LB).
    Stats {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Compare the agent's desired state with the maps; exit 1 if they differ.
    Diff {
        /// The agent's state endpoint.
        #[arg(long, default_value = desired::DEFAULT_URL)]
        agent: String,
        /// Seconds to wait for the agent.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Compare kube-proxy's ruleset from this node (iptables or nftables mode) with what lb
    /// programs, per service port; exit 1 if they differ.
    Parity {
        #[command(flatten)]
        from: ParityFrom,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

/// Where kube-proxy's ruleset comes from (`-` for stdin).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ParityFrom {
    /// `iptables-save -t nat` output (all of `iptables-save` also shows services without
    /// endpoints).
    #[arg(long, value_name = "FILE")]
    from_iptables_save: Option<PathBuf>,
    /// `nft list ruleset` output.
    #[arg(long, value_name = "FILE")]
    from_nft: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MapsCommand {
    /// Every map decoded: services, frontends, slots, backends, conntrack, affinity,
    /// counters, config.
    Dump {
        /// Only this map: its pinned name (LB_CT4_TCP) or alias (conntrack, frontends, slots,
        /// backends, backend-stats, affinity, services, counters, config).
        #[arg(long)]
        map: Option<MapId>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConntrackCommand {
    /// List flows (forward and reply entries paired).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete both entries of every matching flow (all flows without filters).
    Flush {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Service name (namespace/name:port, or namespace/name for every port) or id.
    #[arg(long)]
    service: Option<ServiceSelector>,
    /// Backend ADDRESS:PORT, ADDRESS or id.
    #[arg(long)]
    backend: Option<BackendSelector>,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Maps(#[from] PinnedError),
    #[error("reading CLOCK_MONOTONIC failed")]
    Clock(#[source] nix::Error),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Services(#[from] ServicesError),
    #[error("encoding JSON failed")]
    Json(#[from] serde_json::Error),
    #[error("cannot read {}", .path.display())]
    ReadRuleset {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not {source_kind} output: {error}", .path.display())]
    ParseRuleset {
        path: PathBuf,
        source_kind: Source,
        error: ParseError,
    },
}

/// What to print and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub code: u8,
}

impl From<String> for Outcome {
    fn from(stdout: String) -> Self {
        Self {
            stdout,
            code: EXIT_OK,
        }
    }
}

/// Runs one command.
pub fn run(args: Args) -> Result<Outcome, CtlError> {
    // Every command reads pinned maps: say up front what is needed rather than fail on EPERM.
    privilege::check_reader("lbctl")?;
    let dir = args.pin_dir.as_path();
    let now = || monotonic_ns().map_err(CtlError::Clock);
    let outcome = match args.command {
        Command::Maps {
            command: MapsCommand::Dump { map, output },
        } => {
            let sections = match map {
                Some(m) => vec![Section::of(m)],
                None => Section::ALL.to_vec(),
            };
            let snapshot = pinned::read(dir, &dump::maps_for(&sections))?;
            let now = now()?;
            match output {
                // The whole dump starts with where the programs are attached.
                Format::Table if map.is_none() => format!(
                    "{}
{}",
                    attachments::render(&attachments::read(dir)),
                    dump::tables(&snapshot, &sections, now)
                ),
                Format::Table => dump::tables(&snapshot, &sections, now),
                Format::Json => json(&dump::dump(&snapshot, &sections, now))?,
            }
            .into()
        }
        Command::Services {
            service,
            skipped: false,
            output,
            ..
        } => {
            let snapshot = pinned::read(dir, &services::MAPS)?;
            pinned::require(
                &snapshot,
                &[MapId::Frontends, MapId::Slots, MapId::Backends],
            )?;
            let mut view = services::view(&snapshot);
            if let Some(filter) = &service {
                view = view.filtered(filter)?;
            }
            match output {
                ViewFormat::Table => services::render(&view, false),
                ViewFormat::Wide => services::render(&view, true),
                ViewFormat::Json => json(&view)?,
            }
            .into()
        }
        Command::Services {
            service,
            skipped: true,
            agent,
            timeout,
            output,
        } => {
            // What is not programmed is not in the maps: only the agent knows.
            let state = desired::fetch(&agent, Duration::from_secs(timeout))?;
            let view = skipped::view(&state, service.as_ref());
            match output {
                ViewFormat::Table => skipped::render(&view, false),
                ViewFormat::Wide => skipped::render(&view, true),
                ViewFormat::Json => json(&view)?,
            }
            .into()
        }
        Command::Conntrack { command } => {
            let (filter, output, flush) = match command {
                ConntrackCommand::List { filter, output } => (filter, output, false),
                ConntrackCommand::Flush { filter, output } => (filter, output, true),
            };
            let snapshot =
                pinned::read(dir, &[MapId::Conntrack, MapId::ServiceNames, MapId::Config])?;
            pinned::require(&snapshot, &[MapId::Conntrack])?;
            let filter = FlowFilter::new(filter.service.as_ref(), filter.backend, &snapshot)?;
            if flush {
                let report = conntrack::flush(&snapshot, &filter, &mut ConntrackMap::open(dir)?)?;
                match output {
                    Format::Table => report.to_string(),
                    Format::Json => json(&report)?,
                }
            } else {
                let now = now()?;
                match output {
                    Format::Table => conntrack::list_table(&snapshot, &filter, now).to_string(),
                    Format::Json => json(&conntrack::list(&snapshot, &filter, now))?,
                }
            }
            .into()
        }
        Command::Stats { output } => {
            let snapshot = pinned::read(dir, &[MapId::Counters])?;
            pinned::require(&snapshot, &[MapId::Counters])?;
            let mut s = stats::stats(&snapshot.counters);
            s.attachments = Some(attachments::read(dir));
            match output {
                Format::Table => stats::render(&s),
                Format::Json => json(&s)?,
            }
            .into()
        }
        Command::Diff {
            agent,
            timeout,
            output,
        } => {
            let snapshot = pinned::read(dir, &diff::MAPS)?;
            pinned::require(&snapshot, &diff::REQUIRED)?;
            let want = desired::fetch(&agent, Duration::from_secs(timeout))?;
            let report = diff::diff(&want, &snapshot);
            Outcome {
                stdout: match output {
                    Format::Table => diff::render(&report),
                    Format::Json => json(&report)?,
                },
                code: if report.differences.is_empty() {
                    EXIT_OK
                } else {
                    EXIT_DIFFERENCES
                },
            }
        }
        Command::Parity { from, output } => {
            let (path, source) = match (from.from_iptables_save, from.from_nft) {
                (Some(p), _) => (p, Source::IptablesSave),
                (None, Some(p)) => (p, Source::NftListRuleset),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let text = read_ruleset(&path)?;
            let kube = match source {
                Source::IptablesSave => parity::iptables::parse(&text),
                Source::NftListRuleset => parity::nft::parse(&text),
            }
            .map_err(|error| CtlError::ParseRuleset {
                path: path.clone(),
                source_kind: source,
                error,
            })?;
            let snapshot = pinned::read(dir, &parity::lb::MAPS)?;
            pinned::require(&snapshot, &parity::lb::REQUIRED)?;
            let report = parity::compare::compare(source, &kube, &parity::lb::view(&snapshot));
            Outcome {
                stdout: match output {
                    Format::Table => parity::compare::render(&report),
                    Format::Json => json(&report)?,
                },
                code: if report.same() {
                    EXIT_OK
                } else {
                    EXIT_DIFFERENCES
                },
            }
        }
    };
    Ok(outcome)
}

/// The file's text, or stdin's for `-`.
fn read_ruleset(path: &Path) -> Result<String, CtlError> {
    let err = |source| CtlError::ReadRuleset {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn maps_are_selected_by_name_or_alias() {
        let args = parse(&["maps", "dump", "--map", "LB_CT4_TCP", "-o", "json"]).expect("parse");
        assert!(matches!(
            args.command,
            Command::Maps {
                command: MapsCommand::Dump {
                    map: Some(MapId::Conntrack),
                    output: Format::Json
                }
            }
        ));
        let e = parse(&["maps", "dump", "--map", "routes"]).unwrap_err();
        assert!(e.to_string().contains("unknown map \"routes\""), "{e}");
    }

    #[test]
    fn filters_parse_ids_names_and_endpoints() {
        let args = parse(&[
            "--pin-dir",
            "/x",
            "conntrack",
            "flush",
            "--service",
            "default/echo",
            "--backend",
            "10.244.1.2:8080",
        ])
        .expect("parse");
        let Command::Conntrack {
            command: ConntrackCommand::Flush { filter, .. },
        } = args.command
        else {
            panic!("not a flush: {args:?}");
        };
        assert_eq!(
            filter.service,
            Some(ServiceSelector::Name("default/echo".into()))
        );
        assert_eq!(
            filter.backend,
            Some(BackendSelector::Endpoint(
                "10.244.1.2:8080".parse().expect("addr")
            ))
        );
        assert!(parse(&["conntrack", "list", "--backend", "nope"]).is_err());
    }

    #[test]
    fn parity_takes_exactly_one_ruleset() {
        let args = parse(&["parity", "--from-nft", "/tmp/r", "-o", "json"]).expect("parse");
        let Command::Parity { from, output } = args.command else {
            panic!("not parity");
        };
        assert_eq!(from.from_nft, Some(PathBuf::from("/tmp/r")));
        assert_eq!(output, Format::Json);
        assert!(parse(&["parity"]).is_err());
        assert!(parse(&["parity", "--from-nft", "a", "--from-iptables-save", "b"]).is_err());
    }

    #[test]
    fn diff_asks_the_local_agent_by_default() {
        let args = parse(&["diff"]).expect("parse");
        let Command::Diff { agent, timeout, .. } = args.command else {
            panic!("not a diff");
        };
        assert_eq!(agent, "http://127.0.0.1:10249/state");
        assert_eq!(timeout, 5);
    }
}
