//! The pinned maps `lbctl` reads, by pinned name and by friendly alias.

use std::{fmt, str::FromStr};

use lb_common::maps as names;

/// One pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapId {
    ServiceNames,
    Frontends,
    Slots,
    Backends,
    BackendStats,
    Conntrack,
    Affinity,
    Counters,
    Config,
    SourceRanges,
    SockRev,
}

impl MapId {
    /// Every map, in the order `lbctl maps dump` shows them. Backends come before their
    /// stats: the stats are read only for backends that exist.
    pub const ALL: [MapId; 11] = [
        MapId::ServiceNames,
        MapId::Frontends,
        MapId::Slots,
        MapId::Backends,
        MapId::BackendStats,
        MapId::Conntrack,
        MapId::Affinity,
        MapId::Counters,
        MapId::Config,
        MapId::SourceRanges,
        MapId::SockRev,
    ];

    /// The names the map is pinned under (`<pin-dir>/<name>`): one, but for conntrack,
    /// whose TCP and other flows live in two tables that lbctl shows as one.
    pub const fn pinned_names(self) -> &'static [&'static str] {
        match self {
            MapId::Conntrack => &names::CONNTRACK,
            MapId::ServiceNames => &[names::SERVICE_NAMES],
            MapId::Frontends => &[names::FRONTENDS],
            MapId::Slots => &[names::BACKEND_SLOTS],
            MapId::Backends => &[names::BACKENDS],
            MapId::BackendStats => &[names::BACKEND_STATS],
            MapId::Affinity => &[names::AFFINITY],
            MapId::Counters => &[names::COUNTERS],
            MapId::Config => &[names::CONFIG],
            MapId::SourceRanges => &[names::SOURCE_RANGES],
            MapId::SockRev => &[names::SOCK_REV],
        }
    }

    /// How the map is named in messages: its pinned name, or names joined by `+`.
    pub const fn pinned_name(self) -> &'static str {
        match self {
            MapId::ServiceNames => names::SERVICE_NAMES,
            MapId::Frontends => names::FRONTENDS,
            MapId::Slots => names::BACKEND_SLOTS,
            MapId::Backends => names::BACKENDS,
            MapId::BackendStats => names::BACKEND_STATS,
            MapId::Conntrack => "LB_CT4_TCP+LB_CT4_ANY",
            MapId::Affinity => names::AFFINITY,
            MapId::Counters => names::COUNTERS,
            MapId::Config => names::CONFIG,
            MapId::SourceRanges => names::SOURCE_RANGES,
            MapId::SockRev => names::SOCK_REV,
        }
    }

    /// The friendly name `--map` accepts besides the pinned one; the first is canonical.
    pub const fn aliases(self) -> &'static [&'static str] {
        match self {
            MapId::ServiceNames => &["services", "service-names", "names"],
            MapId::Frontends => &["frontends"],
            MapId::Slots => &["slots", "backend-slots"],
            MapId::Backends => &["backends"],
            MapId::BackendStats => &["backend-stats", "be-stats"],
            MapId::Conntrack => &["conntrack", "ct"],
            MapId::Affinity => &["affinity"],
            MapId::Counters => &["counters"],
            MapId::Config => &["config"],
            MapId::SourceRanges => &["source-ranges", "src-ranges"],
            MapId::SockRev => &["sock-rev", "socket-rev"],
        }
    }
}

impl fmt::Display for MapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pinned_name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown map {given:?}; known maps: {known}")]
pub struct UnknownMap {
    given: String,
    known: String,
}

impl FromStr for MapId {
    type Err = UnknownMap;

    /// A pinned name (`LB_CT4_TCP`) or an alias (`conntrack`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MapId::ALL
            .into_iter()
            .find(|m| {
                m.pinned_names().iter().any(|n| n.eq_ignore_ascii_case(s))
                    || m.aliases().iter().any(|a| a.eq_ignore_ascii_case(s))
            })
            .ok_or_else(|| UnknownMap {
                given: s.to_owned(),
                known: MapId::ALL
                    .iter()
                    .map(|m| format!("{} ({})", m.aliases()[0], m.pinned_name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_found_by_pinned_name_or_alias_in_any_case() {
        assert_eq!("LB_CT4_TCP".parse(), Ok(MapId::Conntrack));
        assert_eq!("lb_ct4_any".parse(), Ok(MapId::Conntrack));
        assert_eq!("conntrack".parse(), Ok(MapId::Conntrack));
        assert_eq!("Frontends".parse(), Ok(MapId::Frontends));
        assert_eq!("LB_BE_STATS".parse(), Ok(MapId::BackendStats));
        assert_eq!("services".parse(), Ok(MapId::ServiceNames));
    }

    #[test]
    fn an_unknown_map_lists_the_known_ones() {
        let e = "routes".parse::<MapId>().unwrap_err().to_string();
        assert!(e.starts_with("unknown map \"routes\"; known maps: services (LB_SVC_NAMES)"));
        assert!(e.contains("conntrack (LB_CT4_TCP+LB_CT4_ANY)"), "{e}");
    }

    #[test]
    fn names_and_aliases_are_unique_and_fit_the_kernel_limit() {
        let mut all: Vec<String> = MapId::ALL
            .iter()
            .flat_map(|m| {
                m.pinned_names()
                    .iter()
                    .chain(m.aliases())
                    .map(|n| n.to_ascii_lowercase())
            })
            .collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
        // Every map the agent pins, and only those, but the fragment records (a datagram's
        // ports for a few milliseconds: nothing an operator can act on).
        let mut pinned: Vec<_> = MapId::ALL
            .iter()
            .flat_map(|m| m.pinned_names())
            .copied()
            .collect();
        let mut agent: Vec<_> = lb_common::maps::ALL
            .into_iter()
            .filter(|m| *m != lb_common::maps::FRAGMENTS)
            .collect();
        pinned.sort();
        agent.sort();
        assert_eq!(pinned, agent);
    }
}
