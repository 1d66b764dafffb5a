//! In-memory maps for tests: the same contract as the kernel's, plus a log of every write.

use std::collections::BTreeMap;

use lb_common::{
    Backend, BackendId, BackendSlotKey, Config, CtEntry, CtKey, Frontend, FrontendKey,
};

use super::{DatapathMaps, MapsError};
use crate::plan::Write;

/// A write, as the log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Service(Write),
    DeleteConntrack(CtKey),
    SetConfig(Config),
}

#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<BackendSlotKey, BackendId>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub conntrack: BTreeMap<CtKey, CtEntry>,
    pub config: Config,
    /// Every write, in order.
    pub log: Vec<Op>,
}

impl MemoryMaps {
    /// The log so far, emptied.
    pub fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }
}

impl DatapathMaps for MemoryMaps {
    fn frontends(&self) -> Result<Vec<(FrontendKey, Frontend)>, MapsError> {
        Ok(self.frontends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &Frontend) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::PutFrontend(*key, *value)));
        self.frontends.insert(*key, *value);
        Ok(())
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::DeleteFrontend(*key)));
        self.frontends.remove(key);
        Ok(())
    }

    fn slots(&self) -> Result<Vec<(BackendSlotKey, BackendId)>, MapsError> {
        Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_slot(&mut self, key: &BackendSlotKey, value: BackendId) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::PutSlot(*key, value)));
        self.slots.insert(*key, value);
        Ok(())
    }

    fn delete_slot(&mut self, key: &BackendSlotKey) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::DeleteSlot(*key)));
        self.slots.remove(key);
        Ok(())
    }

    fn backends(&self) -> Result<Vec<(BackendId, Backend)>, MapsError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_backend(&mut self, id: BackendId, value: &Backend) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::PutBackend(id, *value)));
        self.backends.insert(id, *value);
        Ok(())
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapsError> {
        self.log.push(Op::Service(Write::DeleteBackend(id)));
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
}
