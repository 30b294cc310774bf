//! What a worker holds about its back ends, in one owner: the pool state machine and the actions
//! it asked for, the secret in this worker's probes, what it counts per back end, the work it has
//! outstanding at each, and the back ends as routing sees them under the operator's settings —
//! with what follows a reload, the router they make, what the metrics show, and which probe
//! answers count. Carried out (connections opened, probes sent) in `pool.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::state::Counters;
use crate::balance::pool::{Action, Pool};
use crate::balance::work::Outstanding;
use crate::metrics::BackendMetrics;
use crate::route::{Avail, Router};
use crate::worker::runtime::Runtime;
use crate::worker::shared::Shared;

/// Everything a worker holds about its back ends: connections and health (the pool state machine)
/// with the actions it asked for, the secret in this worker's probes, what it counts per back
/// end, the work it has outstanding at each, and the back ends as routing sees them under the
/// operator's settings.
pub(super) struct Backends {
    pub(super) pool: Pool,
    pub(super) actions: Vec<Action>,
    /// Random per worker, so no answer but a real one counts.
    pub(super) probe_secret: u64,
    pub(super) counters: Vec<Counters>,
    /// Transactions forwarded and not yet finally answered, per back end (least work).
    pub(super) outstanding: Outstanding,
    /// The configured back ends with the operator's weights (draining: 0), and which are
    /// disabled; rebuilt when the runtime or the admin settings change.
    pub(super) eff: Vec<crate::balance::Backend>,
    pub(super) disabled: Vec<bool>,
}

impl Backends {
    pub(super) fn new(shared: &Shared, rt: &Runtime, probe_secret: u64, now: Instant) -> Backends {
        let mut outstanding = Outstanding::default();
        outstanding.remap(shared.work_of(&rt.backends), &[]);
        let mut be = Backends {
            pool: Pool::new(shared.cfg.health, rt.backends.len(), now),
            actions: Vec::new(),
            probe_secret,
            counters: vec![Counters::default(); rt.backends.len()],
            outstanding,
            eff: Vec::new(),
            disabled: Vec::new(),
        };
        be.apply_admin(shared, rt);
        be
    }

    /// Takes the operator's settings (kept by name, so they outlive reloads) onto the configured
    /// back ends.
    pub(super) fn apply_admin(&mut self, shared: &Shared, rt: &Runtime) {
        let overrides = shared.admin.lock().map(|o| o.clone()).unwrap_or_default();
        (self.eff, self.disabled) = super::rules::effective(&rt.backends, &overrides);
    }

    /// The router for what the configuration and the runtime say, with these back ends as the
    /// operator's settings make them and their shared outstanding work.
    pub(super) fn router(&self, shared: &Shared, rt: &Runtime) -> Router {
        Router {
            key: Arc::clone(&rt.key),
            advertise: shared.cfg.advertise.clone(),
            adv_host: shared.adv_host.clone(),
            server_side: shared.peer_advertise.clone(),
            wss: shared.cfg.advertise_wss.clone().zip(shared.wss_host.clone()),
            backends: self.eff.clone(),
            balance: shared.cfg.balance,
            path: shared.cfg.path,
            draining: shared.draining.load(Ordering::Relaxed),
            work: self.outstanding.totals().to_vec(),
        }
    }

    /// Follows a reload: `map` gives each old back end's new position (`None`: removed); state
    /// follows its back end by name, new ones start fresh.
    pub(super) fn remap(&mut self, map: &[Option<usize>], shared: &Shared, new: &Runtime, now: Instant) {
        self.pool.remap(map, new.backends.len(), now);
        let mut counters = vec![Counters::default(); new.backends.len()];
        for (old, c) in std::mem::take(&mut self.counters).into_iter().enumerate() {
            if let Some(n) = map[old] {
                counters[n] = c;
            }
        }
        self.counters = counters;
        self.outstanding.remap(shared.work_of(&new.backends), map);
    }

    /// Back end `b` (named `name`) as the metrics show it.
    pub(super) fn metrics(&self, b: usize, name: &str) -> BackendMetrics {
        let c = &self.counters[b];
        let m = self.pool.member(b);
        BackendMetrics {
            name: name.to_string(),
            up: self.pool.avail(b) == Avail::Up,
            overloaded: self.pool.is_overloaded(b),
            outstanding: self.outstanding.mine(b),
            requests: c.requests,
            responses: c.responses,
            dialogs: c.dialogs,
            probe_rtt: m.probe_rtt,
            probe_seconds: m.probe_seconds,
            answer_seconds: c.answer_seconds,
            probes_failed: m.probes_failed,
            failures: c.failures.clone(),
        }
    }

    /// Whether `call_id` is that of this worker's (`worker`) probe `seq` to back end `b`.
    pub(super) fn is_our_probe(&self, worker: u16, call_id: &[u8], b: usize, seq: u32) -> bool {
        let want = format!("siplb-probe-{worker}-{b}-{seq}-{:016x}@", self.probe_secret);
        call_id.starts_with(want.as_bytes())
    }
}
