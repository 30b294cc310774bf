//! The Prometheus text exposition format (version 0.0.4) of the metrics: every family with its
//! help and type, one sample per back end or label value, histograms as `_bucket`/`_sum`/`_count`
//! rows. Written by siplb itself: the workers publish plain counters that are added up per
//! scrape, a model a registry crate would not simplify.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{ANSWER_CODES, BUCKETS, BackendMetrics, Histogram, METHODS, Metrics};

impl Histogram {
    /// The exposition rows (`_bucket` with `le`, `_sum`, `_count`) under `labels` (`k="v"` pairs
    /// without braces, or empty).
    fn rows(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, n) in BUCKETS.iter().zip(&self.counts) {
            acc += n;
            let _ = writeln!(out, "siplb_{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "siplb_{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "siplb_{name}_sum{braces} {:.6}", self.sum);
        let _ = writeln!(out, "siplb_{name}_count{braces} {}", self.count);
    }
}

impl Metrics {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} {kind}");
            name.to_string()
        };
        let _ = family(
            "backend_up",
            "gauge",
            "1 if the back end takes new dialogs (connected and healthy)",
        );
        let mut out = s;
        for b in &self.backends {
            let _ = writeln!(
                out,
                "siplb_backend_up{{backend=\"{}\"}} {}",
                esc(&b.name),
                u8::from(b.up)
            );
        }
        let mut put = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "siplb_{name}{labels} {v}");
            }
        };
        let per_backend = |f: &dyn Fn(&BackendMetrics) -> String| -> Vec<(String, String)> {
            self.backends
                .iter()
                .map(|b| (format!("{{backend=\"{}\"}}", esc(&b.name)), f(b)))
                .collect()
        };
        put(
            "backend_requests_total",
            "counter",
            "Requests forwarded to the back end",
            per_backend(&|b| b.requests.to_string()),
        );
        put(
            "backend_outstanding_work",
            "gauge",
            "Transactions forwarded to the back end and not yet finally answered (INVITE: 1.75)",
            per_backend(&|b| format!("{}", b.outstanding)),
        );
        put(
            "backend_overloaded",
            "gauge",
            "1 while the back end waits out the Retry-After of a 503 it answered (no new dialogs)",
            per_backend(&|b| u8::from(b.overloaded).to_string()),
        );
        put(
            "backend_responses_total",
            "counter",
            "Responses received from the back end",
            per_backend(&|b| b.responses.to_string()),
        );
        put(
            "backend_dialogs_total",
            "counter",
            "Dialogs started on the back end (2xx to INVITE)",
            per_backend(&|b| b.dialogs.to_string()),
        );
        put(
            "backend_probe_seconds",
            "gauge",
            "Round trip of the last answered OPTIONS probe",
            per_backend(&|b| {
                b.probe_rtt
                    .map_or("NaN".into(), |d| format!("{:.6}", d.as_secs_f64()))
            }),
        );
        put(
            "backend_probes_failed_total",
            "counter",
            "OPTIONS probes unanswered or answered 5xx/6xx",
            per_backend(&|b| b.probes_failed.to_string()),
        );
        let failures = self
            .backends
            .iter()
            .flat_map(|b| {
                labelled("reason", &b.failures)
                    .into_iter()
                    .map(move |(l, n)| (format!("{{backend=\"{}\",{}", esc(&b.name), &l[1..]), n))
            })
            .collect();
        put(
            "backend_connection_failures_total",
            "counter",
            "Connection failures to the back end by reason",
            failures,
        );
        // Every plain counter's family, from the one table that declares it.
        for (kind, name, help, rows) in self.counts.families() {
            let rows = rows
                .into_iter()
                .map(|(labels, v)| {
                    let labels = if labels.is_empty() {
                        String::new()
                    } else {
                        format!("{{{labels}}}")
                    };
                    (labels, v.to_string())
                })
                .collect();
            put(name, kind, help, rows);
        }
        put(
            "connections_refused_total",
            "counter",
            "Client connections refused by reason",
            ["max-connections", "max-connections-per-ip"]
                .iter()
                .map(|r| {
                    let n = self.refused.get(*r).copied().unwrap_or(0);
                    (format!("{{reason=\"{r}\"}}"), n.to_string())
                })
                .collect(),
        );
        put(
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason",
            labelled("reason", &self.handshake_failures),
        );
        let per_partner = |f: &dyn Fn(&super::PartnerMetrics) -> u64| -> Vec<(String, String)> {
            self.partners
                .iter()
                .map(|(d, p)| (format!("{{partner=\"{}\"}}", esc(d)), f(p).to_string()))
                .collect()
        };
        put(
            "ws_upgrades_refused_total",
            "counter",
            "WebSocket upgrades refused, by the HTTP status answered",
            labelled("status", &self.ws_refused),
        );
        put(
            "ws_protocol_closes_total",
            "counter",
            "WebSocket connections closed for a frame violation, by close code",
            labelled("code", &self.ws_failures),
        );
        put(
            "partner_connections_open",
            "gauge",
            "Connections open from a federation partner's edges",
            per_partner(&|p| p.open),
        );
        put(
            "partner_connections_total",
            "counter",
            "Connections from a federation partner's edges whose certificate and name passed",
            per_partner(&|p| p.connections),
        );
        put(
            "partner_requests_total",
            "counter",
            "Requests a federation partner's edges sent",
            per_partner(&|p| p.requests),
        );
        let refusals = self
            .partners
            .iter()
            .flat_map(|(d, p)| {
                p.refusals.iter().map(move |(r, n)| {
                    (
                        format!("{{partner=\"{}\",reason=\"{}\"}}", esc(d), esc(r)),
                        n.to_string(),
                    )
                })
            })
            .collect();
        put(
            "partner_refusals_total",
            "counter",
            "Federation partner certificates refused and requests answered 403, by partner and reason",
            refusals,
        );
        let methods = METHODS
            .iter()
            .zip(&self.requests_by_method)
            .map(|(m, n)| (format!("{{method=\"{m}\"}}"), n.to_string()))
            .collect();
        put(
            "requests_total",
            "counter",
            "Requests received, by method",
            methods,
        );
        put(
            "messages_dropped_total",
            "counter",
            "Messages dropped, by reason",
            labelled("reason", &self.dropped),
        );
        let answers = ANSWER_CODES
            .iter()
            .zip(&self.answers)
            .map(|(c, n)| {
                (
                    format!(
                        "{{code=\"{}\"}}",
                        if *c == 0 { "other".into() } else { c.to_string() }
                    ),
                    n.to_string(),
                )
            })
            .collect();
        put(
            "generated_responses_total",
            "counter",
            "Responses siplb answered itself, by code",
            answers,
        );
        put(
            "reloads_total",
            "counter",
            "Configuration reloads (SIGHUP), by whether they took effect",
            vec![
                ("{result=\"ok\"}".into(), self.reloads[0].to_string()),
                ("{result=\"failed\"}".into(), self.reloads[1].to_string()),
            ],
        );
        let workers: Vec<_> = self
            .per_worker
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (format!("{{worker=\"{i}\"}}"), m.to_string()))
            .collect();
        put(
            "worker_messages_total",
            "counter",
            "Messages handled by each worker",
            workers,
        );
        let busy = self
            .per_worker
            .iter()
            .enumerate()
            .map(|(i, (_, d))| (format!("{{worker=\"{i}\"}}"), format!("{:.6}", d.as_secs_f64())))
            .collect();
        put(
            "worker_busy_seconds_total",
            "counter",
            "Time each worker's event loop spent handling events",
            busy,
        );
        for (name, help, of) in [
            (
                "backend_answer_seconds",
                "From an initial INVITE forwarded to the back end to its first answer",
                (|b: &BackendMetrics| b.answer_seconds) as fn(&BackendMetrics) -> Histogram,
            ),
            (
                "backend_probe_rtt_seconds",
                "Round trips of answered OPTIONS probes",
                |b: &BackendMetrics| b.probe_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} histogram");
            for b in &self.backends {
                of(b).rows(name, &format!("backend=\"{}\"", esc(&b.name)), &mut out);
            }
        }
        let _ = writeln!(
            out,
            "# HELP siplb_setup_seconds From an initial INVITE read from a client to the first 2xx \
             forwarded to it\n# TYPE siplb_setup_seconds histogram"
        );
        self.setup_seconds.rows("setup_seconds", "", &mut out);
        out
    }
}

/// One sample per reason; before the first event one sample with an empty reason (the same as no
/// label to Prometheus), so every family is there from the start.
fn labelled(label: &str, m: &BTreeMap<String, u64>) -> Vec<(String, String)> {
    if m.is_empty() {
        return vec![(format!("{{{label}=\"\"}}"), "0".into())];
    }
    m.iter()
        .map(|(k, v)| (format!("{{{label}=\"{}\"}}", esc(k)), v.to_string()))
        .collect()
}

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
