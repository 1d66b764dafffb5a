//! In-memory maps for tests: the same contract as the kernel's, plus a log of every write.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
};

use lb_common::{
    Backend, BackendId, BackendSlotKey, Config, CtEntry, CtKey, Frontend, FrontendKey, ServiceName,
};

use super::{DatapathMaps, MapsError, RangeKey, Write};

/// A write, as the log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Service(Write),
    DeleteConntrack(CtKey),
    SetConfig(Config),
    PutName(u32),
    DeleteName(u32),
}

#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<BackendSlotKey, BackendId>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub conntrack: BTreeMap<CtKey, CtEntry>,
    pub config: Config,
    pub names: BTreeMap<u32, ServiceName>,
    pub source_ranges: BTreeSet<RangeKey>,
    /// Every write, in order.
    pub log: Vec<Op>,
    /// Whole-map reads of the service maps so far.
    pub reads: Cell<usize>,
    /// When set, every service map write fails (as a full or broken map would).
    pub fail_writes: bool,
}

impl MemoryMaps {
    /// The log so far, emptied.
    pub fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }
}

impl MemoryMaps {
    fn write(&mut self, op: Op) -> Result<(), MapsError> {
        if self.fail_writes {
            return Err(MapsError::Missing("injected failure"));
        }
        self.log.push(op);
        Ok(())
    }
}

impl DatapathMaps for MemoryMaps {
    fn frontends(&self) -> Result<Vec<(FrontendKey, Frontend)>, MapsError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.frontends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &Frontend) -> Result<(), MapsError> {
        self.write(Op::Service(Write::PutFrontend(*key, *value)))?;
        self.frontends.insert(*key, *value);
        Ok(())
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        self.write(Op::Service(Write::DeleteFrontend(*key)))?;
        self.frontends.remove(key);
        Ok(())
    }

    fn slots(&self) -> Result<Vec<(BackendSlotKey, BackendId)>, MapsError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_slot(&mut self, key: &BackendSlotKey, value: BackendId) -> Result<(), MapsError> {
        self.write(Op::Service(Write::PutSlot(*key, value)))?;
        self.slots.insert(*key, value);
        Ok(())
    }

    fn delete_slot(&mut self, key: &BackendSlotKey) -> Result<(), MapsError> {
        self.write(Op::Service(Write::DeleteSlot(*key)))?;
        self.slots.remove(key);
        Ok(())
    }

    fn backends(&self) -> Result<Vec<(BackendId, Backend)>, MapsError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_backend(&mut self, id: BackendId, value: &Backend) -> Result<(), MapsError> {
        self.write(Op::Service(Write::PutBackend(id, *value)))?;
        self.backends.insert(id, *value);
        Ok(())
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapsError> {
        self.write(Op::Service(Write::DeleteBackend(id)))?;
        self.backends.remove(&id);
        Ok(())
    }

    fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, MapsError> {
        Ok(self.conntrack.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn delete_conntrack(&mut self, key: &CtKey) -> Result<(), MapsError> {
        self.log.push(Op::DeleteConntrack(*key));
        self.conntrack.remove(key);
        Ok(())
    }

    fn config(&self) -> Result<Config, MapsError> {
        Ok(self.config)
    }

    fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.log.push(Op::SetConfig(*config));
        self.config = *config;
        Ok(())
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>, MapsError> {
        Ok(self.names.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_service_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), MapsError> {
        self.write(Op::PutName(service_id))?;
        self.names.insert(service_id, *name);
        Ok(())
    }

    fn delete_service_name(&mut self, service_id: u32) -> Result<(), MapsError> {
        self.write(Op::DeleteName(service_id))?;
        self.names.remove(&service_id);
        Ok(())
    }

    fn source_ranges(&self) -> Result<Vec<RangeKey>, MapsError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.source_ranges.iter().copied().collect())
    }

    fn put_source_range(&mut self, key: &RangeKey) -> Result<(), MapsError> {
        self.write(Op::Service(Write::PutSourceRange(*key)))?;
        self.source_ranges.insert(*key);
        Ok(())
    }

    fn delete_source_range(&mut self, key: &RangeKey) -> Result<(), MapsError> {
        self.write(Op::Service(Write::DeleteSourceRange(*key)))?;
        self.source_ranges.remove(key);
        Ok(())
    }
}
