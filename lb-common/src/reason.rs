//! Why a packet left the datapath the way it did. Each reason indexes a per-CPU counter,
//! which `lbctl stats` shows by name; every drop and every unexpected pass has one.

/// What happened to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Translated as intended (counted so operators can see the datapath working).
    Translated,
    /// Let through untranslated although it may have needed translation.
    Passed,
    /// Dropped.
    Dropped,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First packet of a new flow to a service: backend chosen, DNATed.
    NewFlow = 0,
    /// Later packet of a tracked flow, DNATed to its backend.
    EstablishedFlow = 1,
    /// Reply from a backend, source restored to the service address.
    ReplyTranslated = 2,
    /// Headers shorter than they claim (Ethernet, IPv4 or L4), or an IPv4 header whose
    /// version or length field is invalid. Passed to the stack, which drops it.
    PassMalformed = 3,
    /// An IPv4 fragment: ports are only in the first fragment, so later ones cannot be
    /// matched to a service.
    PassFragment = 4,
    /// The service has no backends.
    DropNoBackend = 5,
    /// The frontend pointed at a slot that does not exist (maps mid-update or corrupt).
    DropNoBackendSlot = 6,
    /// A slot pointed at a backend that does not exist.
    DropBackendMissing = 7,
    /// The conntrack map refused a new entry.
    DropCtInsert = 8,
    /// The kernel refused to rewrite the packet (store or checksum helper failed).
    DropRewrite = 9,
}

impl Reason {
    /// Number of reasons; counter slots at and above this are unused.
    pub const COUNT: u32 = 10;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NewFlow,
        Reason::EstablishedFlow,
        Reason::ReplyTranslated,
        Reason::PassMalformed,
        Reason::PassFragment,
        Reason::DropNoBackend,
        Reason::DropNoBackendSlot,
        Reason::DropBackendMissing,
        Reason::DropCtInsert,
        Reason::DropRewrite,
    ];

    pub fn from_index(i: u32) -> Option<Reason> {
        Self::ALL.get(i as usize).copied()
    }

    /// Stable name, as `lbctl stats` and the metrics label show it.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NewFlow => "new_flow",
            Reason::EstablishedFlow => "established_flow",
            Reason::ReplyTranslated => "reply_translated",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassFragment => "pass_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNoBackendSlot => "drop_no_backend_slot",
            Reason::DropBackendMissing => "drop_backend_missing",
            Reason::DropCtInsert => "drop_ct_insert",
            Reason::DropRewrite => "drop_rewrite",
        }
    }

    pub const fn kind(self) -> Kind {
        match self {
            Reason::NewFlow | Reason::EstablishedFlow | Reason::ReplyTranslated => Kind::Translated,
            Reason::PassMalformed | Reason::PassFragment => Kind::Passed,
            _ => Kind::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_own_index() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert_eq!(Reason::from_index(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
        const { assert!(Reason::COUNT <= crate::maps::COUNTERS_MAX) };
    }

    #[test]
    fn names_are_unique() {
        let mut names: std::vec::Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT as usize);
    }

    #[test]
    fn drop_names_start_with_drop_and_passes_with_pass() {
        for r in Reason::ALL {
            match r.kind() {
                Kind::Dropped => assert!(r.name().starts_with("drop_"), "{r:?}"),
                Kind::Passed => assert!(r.name().starts_with("pass_"), "{r:?}"),
                Kind::Translated => {}
            }
        }
    }
}
