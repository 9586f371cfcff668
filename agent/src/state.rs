//! The state shared by the HTTP handlers, health checks and signal
//! handling: one cheap-to-clone handle to everything the running agent has.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use crate::{
    collectors::{CollectorHandle, Snapshot},
    config::Config,
    events::Events,
    metrics::Metrics,
    probes::{Attachment, capabilities::Capabilities},
};

/// Health state that is not derived from other parts of the agent.
#[derive(Debug, Default)]
pub struct HealthState {
    /// Components failed on purpose through /debug/fail (fault injection).
    pub forced: Mutex<BTreeMap<String, String>>,
}

impl HealthState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

/// The ring reader thread (None once stopped).
pub type Readers = Option<crate::events::RingReader>;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<RwLock<Config>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthState>,
    pub events: Arc<Events>,
    pub collector: Arc<CollectorHandle>,
    /// Programs and interfaces as they are now (interfaces come and go).
    pub attachments: Arc<RwLock<Vec<Attachment>>>,
    pub interfaces: Arc<RwLock<BTreeMap<u32, String>>>,
    pub caps: Arc<Capabilities>,
    pub started_at: Instant,
    pub readers: Arc<Mutex<Readers>>,
    /// The MAPE-K loop, once started (None: disabled).
    pub mapek: Arc<Mutex<Option<crate::mapek::SharedMapek>>>,
    /// The HTTP server's own counters (the server's, shared).
    pub serving: Arc<crate::serving::Stats>,
    /// The supervised long-running tasks.
    pub tasks: Arc<crate::tasks::Tasks>,
}

impl AppState {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.collector
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn config_snapshot(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.attachments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn interfaces(&self) -> BTreeMap<u32, String> {
        self.interfaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes what the probes look like after an attach or detach.
    pub fn publish(&self, probes: &crate::probes::Probes) {
        *self.attachments.write().unwrap_or_else(|e| e.into_inner()) = probes.attachments.clone();
        *self.interfaces.write().unwrap_or_else(|e| e.into_inner()) = probes.interfaces.clone();
        self.metrics.set_attachments(&probes.attachments);
    }

    pub fn mapek_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.mapek
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).families())
            .unwrap_or_default()
    }

    /// What /metrics and the OTLP export add to the kernel's families:
    /// the MAPE-K loop's, the supervised tasks' and the HTTP server's own.
    pub fn extra_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut out = self.mapek_families();
        out.extend(self.tasks.families());
        out.extend(crate::serving::families(&self.serving));
        out
    }

    /// Whether the reader thread (which serves every ring) has exited.
    pub fn reader_finished(&self) -> bool {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|reader| reader.is_finished())
    }
}
