//! Which conntrack entries to clear when a UDP service or one of its backends goes away.
//!
//! UDP has no end of connection: a client that keeps sending from one port (resolvers do)
//! stays pinned to its backend until the entry idles out, even after the backend is gone.
//! kube-proxy clears such entries for UDP; TCP flows are left alone to finish or fail, since
//! the peers notice a dead connection themselves.
//!
//! kube-proxy also clears the UDP entries of a service whose endpoints go from none to
//! some, because netfilter remembered the "no backend" verdict for those flows. Our
//! datapath creates no conntrack entry for a packet it drops for want of a backend, so
//! there is nothing to clear in that case: the next packet finds the new backends.

use std::collections::BTreeSet;

use lb_common::{conntrack::dir, proto, CtEntry, CtKey};

/// UDP flows that no longer have a valid target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleFlows {
    /// Service ids of UDP frontends that are gone: all their flows go.
    pub services: BTreeSet<u32>,
    /// (service id, backend address, backend port), the last two in network byte order:
    /// flows of a UDP service to a backend it no longer has.
    pub backends: BTreeSet<(u32, u32, u16)>,
}

impl StaleFlows {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.backends.is_empty()
    }

    /// The entries to delete among `entries`: both entries of every stale flow, whichever
    /// of the two is found (the other may have been evicted, or may be found as well).
    pub fn keys_to_delete<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a (CtKey, CtEntry)>,
    ) -> BTreeSet<CtKey> {
        let mut doomed = BTreeSet::new();
        for (key, entry) in entries {
            if key.proto != proto::UDP {
                continue;
            }
            // Forward entries hold the backend in nat_*; reply entries are keyed by it.
            let (backend_addr, backend_port, other) = match key.dir {
                dir::FORWARD => (
                    entry.nat_addr,
                    entry.nat_port,
                    CtKey::new(
                        entry.nat_addr,
                        key.saddr,
                        entry.nat_port,
                        key.sport,
                        key.proto,
                        dir::REPLY,
                    ),
                ),
                dir::REPLY => (key.saddr, key.sport, key.forward_of_reply(entry)),
                _ => continue,
            };
            if self.services.contains(&entry.service_id)
                || self
                    .backends
                    .contains(&(entry.service_id, backend_addr, backend_port))
            {
                doomed.insert(*key);
                doomed.insert(other);
            }
        }
        doomed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const CLIENT: [u8; 4] = [10, 244, 1, 2];
    const SERVICE: [u8; 4] = [10, 96, 0, 10];

    fn be(ip: [u8; 4]) -> u32 {
        lb_common::addr_be(Ipv4Addr::from(ip))
    }

    /// The two entries the datapath creates for a flow from CLIENT:sport to SERVICE:53.
    fn flow(protocol: u8, sport: u16, backend: [u8; 4], service_id: u32) -> [(CtKey, CtEntry); 2] {
        let (bport, vport, sport) = (5353u16.to_be(), 53u16.to_be(), sport.to_be());
        let fwd_key = CtKey::new(
            be(CLIENT),
            be(SERVICE),
            sport,
            vport,
            protocol,
            dir::FORWARD,
        );
        let fwd = CtEntry {
            nat_addr: be(backend),
            nat_port: bport,
            service_id,
            backend_id: 7,
            ..Default::default()
        };
        let reply_key = CtKey::new(be(backend), be(CLIENT), bport, sport, protocol, dir::REPLY);
        let reply = CtEntry {
            nat_addr: be(SERVICE),
            nat_port: vport,
            ..fwd
        };
        [(fwd_key, fwd), (reply_key, reply)]
    }

    #[test]
    fn a_deleted_udp_service_loses_both_entries_of_every_flow() {
        let a = flow(proto::UDP, 40000, [10, 244, 2, 2], 3);
        let b = flow(proto::UDP, 40001, [10, 244, 2, 3], 3);
        let other = flow(proto::UDP, 40002, [10, 244, 2, 2], 4);
        let all: Vec<_> = a.iter().chain(&b).chain(&other).copied().collect();
        let stale = StaleFlows {
            services: [3].into(),
            ..Default::default()
        };
        let expected: BTreeSet<_> = a.iter().chain(&b).map(|(k, _)| *k).collect();
        assert_eq!(stale.keys_to_delete(&all), expected);
    }

    #[test]
    fn a_removed_backend_loses_only_its_flows() {
        let gone = flow(proto::UDP, 40000, [10, 244, 2, 2], 3);
        let kept = flow(proto::UDP, 40001, [10, 244, 2, 3], 3);
        let all: Vec<_> = gone.iter().chain(&kept).copied().collect();
        let stale = StaleFlows {
            backends: [(3, be([10, 244, 2, 2]), 5353u16.to_be())].into(),
            ..Default::default()
        };
        let expected: BTreeSet<_> = gone.iter().map(|(k, _)| *k).collect();
        assert_eq!(stale.keys_to_delete(&all), expected);
    }

    #[test]
    fn either_entry_alone_finds_its_partner() {
        let [fwd, reply] = flow(proto::UDP, 40000, [10, 244, 2, 2], 3);
        let stale = StaleFlows {
            services: [3].into(),
            ..Default::default()
        };
        let both: BTreeSet<_> = [fwd.0, reply.0].into();
        assert_eq!(stale.keys_to_delete(&[fwd]), both);
        assert_eq!(stale.keys_to_delete(&[reply]), both);
    }

    #[test]
    fn tcp_flows_are_left_to_finish() {
        let tcp = flow(proto::TCP, 40000, [10, 244, 2, 2], 3);
        let stale = StaleFlows {
            services: [3].into(),
            backends: [(3, be([10, 244, 2, 2]), 5353u16.to_be())].into(),
        };
        assert!(stale.keys_to_delete(&tcp).is_empty());
    }
}
