//! The admin API's view of a running balancer (`siplb ctl`, `--admin`): the back ends and the
//! federation partners as JSON, with what every worker last published about them, and the operator's changes (drain, enable,
//! disable, weight), which every worker applies within one turn.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::shared::Shared;
use crate::metrics::Metrics;

/// The admin API's view of a running balancer.
pub(super) struct AdminHandle(pub(super) Arc<Shared>);

impl crate::admin::Control for AdminHandle {
    fn list(&self) -> String {
        use crate::admin::json_str;
        let rt = self.0.runtime.load();
        let overrides = self.0.admin.lock().map(|o| o.clone()).unwrap_or_default();
        let workers: Vec<Metrics> = self
            .0
            .published
            .iter()
            .map(|p| p.lock().map(|m| m.clone()).unwrap_or_default())
            .collect();
        let rows: Vec<String> = rt
            .backends
            .iter()
            .map(|b| {
                let o = overrides.get(&b.name).copied().unwrap_or_default();
                let per: Vec<&crate::metrics::BackendMetrics> =
                    workers.iter().filter_map(|w| w.backend(&b.name)).collect();
                let health: Vec<&str> = per
                    .iter()
                    .map(|m| match (m.overloaded, m.up) {
                        (true, _) => "overloaded",
                        (false, true) => "up",
                        (false, false) => "down",
                    })
                    .collect();
                let dialogs: u64 = per.iter().map(|m| m.dialogs).sum();
                let work: f64 = per.iter().map(|m| m.outstanding).sum();
                let rtt = per
                    .iter()
                    .filter_map(|m| m.probe_rtt)
                    .max()
                    .map_or("null".to_string(), |d| format!("{:.6}", d.as_secs_f64()));
                format!(
                    "{{\"name\":\"{}\",\"address\":\"{}\",\"weight\":{},\"configured_weight\":{},\"admin_state\":\"{}\",\"health\":[{}],\"dialogs\":{},\"outstanding_work\":{},\"probe_rtt_seconds\":{}}}",
                    json_str(&b.name),
                    b.addr,
                    o.weight.unwrap_or(b.weight),
                    b.weight,
                    o.state.as_str(),
                    health.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(","),
                    dialogs,
                    work,
                    rtt
                )
            })
            .collect();
        format!("[{}]\n", rows.join(","))
    }

    fn partners(&self) -> String {
        use crate::admin::json_str;
        let mut total = Metrics::default();
        for p in self.0.published.iter() {
            if let Ok(m) = p.lock() {
                total.add(&m);
            }
        }
        let rt = self.0.runtime.load();
        let rows: Vec<String> = rt
            .tls
            .partners
            .domains()
            .map(|d| {
                let p = total.partners.get(&**d).cloned().unwrap_or_default();
                let refusals: Vec<String> = p
                    .refusals
                    .iter()
                    .map(|(r, n)| format!("\"{}\":{n}", json_str(r)))
                    .collect();
                format!(
                    "{{\"domain\":\"{}\",\"connections_open\":{},\"connections\":[{}],\"connections_total\":{},\"requests\":{},\"refusals\":{{{}}}}}",
                    json_str(d),
                    p.open,
                    p.peers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","),
                    p.connections,
                    p.requests,
                    refusals.join(",")
                )
            })
            .collect();
        format!("[{}]\n", rows.join(","))
    }

    fn set(&self, name: &str, change: crate::admin::Change) -> bool {
        if !self.0.runtime.load().backends.iter().any(|b| b.name == name) {
            return false;
        }
        if let Ok(mut o) = self.0.admin.lock() {
            let e = o.entry(name.to_string()).or_default();
            match change {
                crate::admin::Change::State(s) => e.state = s,
                crate::admin::Change::Weight(w) => e.weight = Some(w),
            }
        }
        self.0.admin_gen.fetch_add(1, Ordering::AcqRel);
        for (_, waker) in &self.0.handoff {
            let _ = waker.wake();
        }
        tracing::info!(backend = name, change = %change, "admin change");
        true
    }
}
