//! Loads the eBPF object: maps pinned by name under the pin directory (so a restarted agent
//! finds the same maps, and their state, again), programs loaded into the kernel.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{
    maps as names, AffinityEntry, AffinityKey, Backend, BackendId, BackendSlotKey, BackendStats,
    Config, CtEntry, CtKey, FragKey, FragPorts, Frontend, FrontendKey, ServiceName, SockRevEntry,
    SockRevKey, SourceRange,
};

use super::bpffs::{self, BpffsError};

/// tc ingress on pod veths: what pods send.
pub const FROM_POD: &str = "lb_from_pod";
/// tc egress on pod veths: what reaches pods.
pub const TO_POD: &str = "lb_to_pod";
/// tcx ingress on the node's uplink: what reaches the node from outside.
pub const FROM_NET: &str = "lb_from_net";
/// tcx egress on the node's uplink: replies the node's own stack sends for backends that are
/// the node itself.
pub const TO_NET: &str = "lb_to_net";
/// XDP on the node's uplink: the fast path in front of [`FROM_NET`].
pub const XDP: &str = "lb_xdp";
/// cgroup sock_addr programs (socket-level LB): connect4, UDP sendmsg4 and recvmsg4,
/// getpeername4.
pub const SOCK_PROGRAMS: [&str; 4] = [
    "lb_sock_connect4",
    "lb_sock_sendmsg4",
    "lb_sock_recvmsg4",
    "lb_sock_getpeername4",
];

/// The datapath's aya-log level (the `AYA_LOG_LEVEL` global in the object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl BpfLogLevel {
    /// The value aya-log-ebpf compares its levels against (aya_log_common::Level; 0
    /// disables every statement).
    fn as_global(self) -> u8 {
        match self {
            BpfLogLevel::Off => 0,
            BpfLogLevel::Error => 1,
            BpfLogLevel::Warn => 2,
            BpfLogLevel::Info => 3,
            BpfLogLevel::Debug => 4,
        }
    }
}

/// The object built into this binary, if one existed when it was built.
#[cfg(lb_embedded_object)]
pub(crate) const EMBEDDED: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/lb-ebpf.o"
)));
#[cfg(not(lb_embedded_object))]
pub(crate) const EMBEDDED: Option<&[u8]> = None;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("no eBPF object: this lb-agent was built without one embedded; build with `cargo xtask build` or pass --bpf-object")]
    NoObject,
    #[error("cannot read eBPF object {path}")]
    ReadObject {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect pinned map {path}")]
    InspectPin {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("cannot unpin incompatible map {path}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
}

/// Where the eBPF object comes from.
#[derive(Clone, Debug)]
pub enum Object {
    File(PathBuf),
    Embedded,
}

/// Loads the object with its maps pinned under `pin_dir` (created on bpffs if needed) and
/// both programs loaded, ready to attach. Maps created now get the sizes in `sizes` (name,
/// max entries); a map already pinned keeps its own size (resizing it would lose its
/// state), with a warning when it differs. A pinned map of another layout (type, key or
/// value size, left by an incompatible build) is unpinned and created anew, and maps
/// missing from a pin dir that holds others (deleted while no agent ran) are created
/// empty: one warning line each says so ([`check_pins`]).
pub fn load(
    object: &Object,
    pin_dir: &Path,
    log_level: BpfLogLevel,
    sizes: &[(&'static str, u32)],
) -> Result<Ebpf, LoadError> {
    let file;
    let bytes = match object {
        Object::File(path) => {
            file = std::fs::read(path).map_err(|source| LoadError::ReadObject {
                path: path.clone(),
                source,
            })?;
            &file[..]
        }
        Object::Embedded => EMBEDDED.ok_or(LoadError::NoObject)?,
    };
    bpffs::prepare_pin_dir(pin_dir)?;
    check_pins(pin_dir)?;
    warn_pinned_sizes(pin_dir, sizes);
    let level = log_level.as_global();
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(pin_dir)
        // Not required to exist: an object without any log statement has no such global.
        .override_global(aya_log::LEVEL, &level, false);
    for (name, max) in sizes {
        loader.map_max_entries(name, *max);
    }
    let mut ebpf = loader.load(bytes)?;
    for name in [FROM_POD, TO_POD] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LoadError::Program { name, source })?;
        program
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(ebpf)
}

/// The type and key/value sizes each pinned map must have.
fn expected_layouts() -> [(&'static str, MapType, usize, usize); 13] {
    [
        (
            names::FRONTENDS,
            MapType::Hash,
            size_of::<FrontendKey>(),
            size_of::<Frontend>(),
        ),
        (
            names::BACKEND_SLOTS,
            MapType::Hash,
            size_of::<BackendSlotKey>(),
            size_of::<BackendId>(),
        ),
        (
            names::BACKENDS,
            MapType::Hash,
            size_of::<BackendId>(),
            size_of::<Backend>(),
        ),
        (
            names::CONNTRACK_TCP,
            MapType::Hash,
            size_of::<CtKey>(),
            size_of::<CtEntry>(),
        ),
        (
            names::CONNTRACK_ANY,
            MapType::Hash,
            size_of::<CtKey>(),
            size_of::<CtEntry>(),
        ),
        (
            names::FRAGMENTS,
            MapType::LruHash,
            size_of::<FragKey>(),
            size_of::<FragPorts>(),
        ),
        (
            names::COUNTERS,
            MapType::PerCpuArray,
            size_of::<u32>(),
            size_of::<u64>(),
        ),
        (
            names::CONFIG,
            MapType::Array,
            size_of::<u32>(),
            size_of::<Config>(),
        ),
        (
            names::BACKEND_STATS,
            MapType::Array,
            size_of::<BackendId>(),
            size_of::<BackendStats>(),
        ),
        (
            names::AFFINITY,
            MapType::LruHash,
            size_of::<AffinityKey>(),
            size_of::<AffinityEntry>(),
        ),
        (
            names::SERVICE_NAMES,
            MapType::Hash,
            size_of::<u32>(),
            size_of::<ServiceName>(),
        ),
        (
            names::SOURCE_RANGES,
            MapType::LpmTrie,
            size_of::<aya::maps::lpm_trie::Key<SourceRange>>(),
            size_of::<u32>(),
        ),
        (
            names::SOCK_REV,
            MapType::LruHash,
            size_of::<SockRevKey>(),
            size_of::<SockRevEntry>(),
        ),
    ]
}

/// Says so when a pinned map is kept at another size than the one asked for.
fn warn_pinned_sizes(pin_dir: &Path, sizes: &[(&'static str, u32)]) {
    for (name, want) in sizes {
        let path = pin_dir.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        if info.max_entries() != *want {
            tracing::warn!(
                map = name,
                pinned = info.max_entries(),
                asked = want,
                "keeping the pinned map at its size (its state would be lost); remove {} and restart to resize it",
                path.display()
            );
        }
    }
}

/// What [`check_pins`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinCheck {
    /// Maps unpinned because their layout was not this build's: name, found, expected.
    pub replaced: Vec<(&'static str, String, String)>,
    /// Maps missing from a pin dir that held others (or links): created empty.
    pub missing: Vec<&'static str>,
}

/// aya reuses a pinned map by name without comparing it to the object's definition, so a
/// map left by an older, incompatible build would be handed to the new programs, which
/// would read its entries as garbage. Such a map is unpinned instead (its state cannot be
/// read by this build; the old programs keep their reference until their links are
/// swapped), so the load creates it anew; each is named in one warning line. Maps missing
/// while others (or links) are pinned were deleted while no agent ran: one line names them.
/// A first start (nothing pinned) says nothing.
pub fn check_pins(pin_dir: &Path) -> Result<PinCheck, LoadError> {
    let mut check = PinCheck::default();
    let mut present = 0;
    for (name, map_type, key, value) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            check.missing.push(name);
            continue;
        }
        present += 1;
        let inspect = |source| LoadError::InspectPin {
            path: path.clone(),
            source,
        };
        let info = MapInfo::from_pin(&path).map_err(inspect)?;
        let found = (
            info.map_type().map_err(inspect)?,
            info.key_size() as usize,
            info.value_size() as usize,
        );
        if found != (map_type, key, value) {
            let show = |(t, k, v): (MapType, usize, usize)| {
                format!("{t:?} with {k}-byte keys and {v}-byte values")
            };
            let (found, expected) = (show(found), show((map_type, key, value)));
            std::fs::remove_file(&path).map_err(|source| LoadError::Unpin {
                path: path.clone(),
                source,
            })?;
            tracing::warn!(
                map = name,
                "pinned map {} has another layout ({found}; this build needs {expected}): replaced by a new, empty one (its entries cannot be read by this build)",
                path.display()
            );
            check.replaced.push((name, found, expected));
        }
    }
    if present == 0 && !pin_dir.join("links").exists() {
        check.missing.clear();
    } else if !check.missing.is_empty() {
        tracing::warn!(
            maps = check.missing.join(","),
            "pinned maps missing from {} (deleted while no agent ran?): created empty; the pinned links are swapped to programs using them",
            pin_dir.display()
        );
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::maps::{aya::AyaMaps, DatapathMaps},
        testing::{require_object, require_root, PinDir},
    };
    use aya::maps::MapData;

    #[test]
    fn a_missing_object_file_is_named() {
        let err = load(
            &Object::File("/nonexistent/lb-ebpf".into()),
            Path::new("/nonexistent/pins"),
            BpfLogLevel::Off,
            &[],
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/lb-ebpf"), "{err}");
    }

    #[test]
    fn log_levels_match_aya_log() {
        assert_eq!(BpfLogLevel::Off.as_global(), 0);
        assert_eq!(BpfLogLevel::Error.as_global(), aya_log::Level::Error as u8);
        assert_eq!(BpfLogLevel::Debug.as_global(), aya_log::Level::Debug as u8);
    }

    /// Writes one frontend through `ebpf`'s maps and drops it (the pins stay).
    fn write_a_frontend(mut ebpf: Ebpf) -> (FrontendKey, Frontend) {
        let key = FrontendKey::new([10, 96, 0, 1].into(), 53, lb_common::proto::UDP);
        let value = Frontend {
            service_id: 9,
            ..Default::default()
        };
        AyaMaps::from_ebpf(&mut ebpf)
            .expect("maps")
            .put_frontend(&key, &value)
            .expect("write");
        (key, value)
    }

    #[test]
    fn maps_are_pinned_by_name_and_found_again_by_the_next_load() {
        if !require_root("loading the eBPF object") || !require_object() {
            return;
        }
        let pins = PinDir::new("loader-reuse");
        let ebpf =
            load(&Object::Embedded, pins.path(), BpfLogLevel::Info, &[]).expect("first load");
        for name in names::ALL {
            assert!(pins.path().join(name).exists(), "{name} is not pinned");
        }
        let (key, value) = write_a_frontend(ebpf);

        let mut again =
            load(&Object::Embedded, pins.path(), BpfLogLevel::Off, &[]).expect("second load");
        let frontends = AyaMaps::from_ebpf(&mut again)
            .expect("maps")
            .frontends()
            .expect("read");
        assert_eq!(frontends, [(key, value)]);
    }

    #[test]
    fn a_map_pinned_by_an_incompatible_build_is_replaced_and_the_rest_kept() {
        if !require_root("loading the eBPF object") || !require_object() {
            return;
        }
        let good = PinDir::new("loader-good");
        let bad = PinDir::new("loader-bad");
        let ebpf = load(&Object::Embedded, good.path(), BpfLogLevel::Off, &[]).expect("load");
        let (key, value) = write_a_frontend(ebpf);
        // A hash map where an array of Config belongs, and the frontends kept.
        for (from, to) in [
            (names::BACKENDS, names::CONFIG),
            (names::FRONTENDS, names::FRONTENDS),
        ] {
            MapData::from_pin(good.path().join(from))
                .expect("open")
                .pin(bad.path().join(to))
                .expect("pin");
        }
        let check = check_pins(bad.path()).expect("checked");
        assert_eq!(
            check.replaced.iter().map(|r| r.0).collect::<Vec<_>>(),
            [names::CONFIG]
        );
        assert!(check.replaced[0].1.starts_with("Hash"), "{check:?}");
        assert!(!bad.path().join(names::CONFIG).exists(), "unpinned");
        assert_eq!(check.missing.len(), names::ALL.len() - 2, "{check:?}");

        let mut again =
            load(&Object::Embedded, bad.path(), BpfLogLevel::Off, &[]).expect("replaced");
        let info = MapInfo::from_pin(bad.path().join(names::CONFIG)).expect("pinned again");
        assert_eq!(info.map_type().expect("type"), MapType::Array);
        let frontends = AyaMaps::from_ebpf(&mut again)
            .expect("maps")
            .frontends()
            .expect("read");
        assert_eq!(
            frontends,
            [(key, value)],
            "the compatible map keeps its state"
        );
        assert_eq!(
            check_pins(bad.path()).expect("checked"),
            PinCheck::default()
        );
    }

    #[test]
    fn a_first_start_reports_nothing_missing() {
        if !require_root("creating a pin dir") {
            return;
        }
        let pins = PinDir::new("loader-first");
        assert_eq!(
            check_pins(pins.path()).expect("checked"),
            PinCheck::default()
        );
        std::fs::create_dir(pins.path().join("links")).expect("mkdir");
        assert_eq!(
            check_pins(pins.path()).expect("checked").missing.len(),
            names::ALL.len(),
            "links without maps: the maps were deleted"
        );
    }
}
