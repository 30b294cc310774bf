//! The plain counters a worker keeps, each declared once: the table below makes the field, its
//! sum over workers ([`Counts::add`]) and its Prometheus family ([`Counts::families`]). A counter
//! may be exported in more than one family, or in none (kept for logs, the demo and tests).

/// Declares the counters (`fields`) and the families they are exported in (`families`: type,
/// name without the `siplb_` prefix, help, and each row's field with its labels, if any).
macro_rules! counts {
    (
        fields { $( $(#[$doc:meta])* $field:ident, )* }
        families { $( $kind:literal $name:literal $help:literal [ $( $f:ident $(= $label:literal)? ),* ]; )* }
    ) => {
        /// What one worker counted (or, added up, the whole balancer).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counts {
            $( $(#[$doc])* pub $field: u64, )*
        }

        impl Counts {
            /// Adds another worker's counts.
            pub fn add(&mut self, o: &Counts) {
                $( self.$field += o.$field; )*
            }

            /// Every exported family: type, name, help, and its rows (labels without braces, or
            /// empty; value).
            pub fn families(&self) -> Vec<(&'static str, &'static str, &'static str, Vec<(&'static str, u64)>)> {
                vec![ $( ($kind, $name, $help, vec![ $( (counts!(@label $($label)?), self.$f) ),* ]) ),* ]
            }
        }
    };
    (@label) => { "" };
    (@label $l:literal) => { $l };
}

counts! {
    fields {
        responses,
        forwarded_requests,
        forwarded_responses,
        dropped_responses,
        bytes_in,
        bytes_out,
        accepted,
        clients_verified,
        clients_unverified,
        /// Servers that connected to the peer listener with an accepted certificate.
        peer_connections,
        /// Messages from servers over `--max-backend-message-bytes`, skipped.
        oversized_from_servers,
        /// Connections closed because the worker's queued output passed `--max-output-bytes`.
        output_budget_closes,
        /// Times a worker stopped reading clients because servers were slow.
        backpressure_pauses,
        /// Tokens in our Route or Via whose MAC failed (another key, or forged).
        bad_tokens,
        handoffs,
        failovers,
        /// Initial INVITEs sent to another back end after theirs answered 503.
        retries_503,
        /// Initial INVITEs sent to another back end after theirs gave no answer in time.
        retries_no_answer,
        /// Out-of-dialog requests answered 503 for `--rate-limit-per-ip`.
        rate_limited,
        /// New dialogs answered 503 because their worker was saturated, and times a worker
        /// became so.
        shed,
        saturations,
        messages,
        loop_turns,
        connections_open,
        /// 1 in a worker's counts once it is ready to route: every back end up in it, or 3 s
        /// after it started (added up: how many workers are).
        workers_ready,
        /// WebSocket clients: connections accepted, upgrades done, open now.
        ws_accepted,
        ws_upgrades,
        ws_open,
    }
    families {
        "gauge" "connections_open" "Client connections open" [connections_open];
        "gauge" "workers_ready"
            "Workers ready to route: every back end up in them, or 3 s after they started" [workers_ready];
        "counter" "connections_accepted_total" "Client connections accepted" [accepted];
        "counter" "clients_total" "Clients connected, by whether their certificate was verified"
            [clients_verified = "verified=\"true\"", clients_unverified = "verified=\"false\""];
        "gauge" "ws_connections_open"
            "WebSocket client connections open (--listen-wss; also counted in connections_open)" [ws_open];
        "counter" "ws_connections_total"
            "WebSocket client connections accepted, and those whose upgrade was accepted"
            [ws_accepted = "stage=\"accepted\"", ws_upgrades = "stage=\"upgraded\""];
        "counter" "peer_connections_total"
            "Connections servers opened to the peer listener and that passed the name check" [peer_connections];
        "counter" "oversized_server_messages_total"
            "Messages from servers over --max-backend-message-bytes, skipped (the connection stays)"
            [oversized_from_servers];
        "counter" "output_budget_closes_total"
            "Connections closed because their worker's queued output passed --max-output-bytes"
            [output_budget_closes];
        "counter" "backpressure_pauses_total"
            "Times a worker stopped reading clients because servers were slow to take their messages"
            [backpressure_pauses];
        "counter" "bad_tokens_total"
            "Routing tokens refused for their MAC (minted with another key, or forged)" [bad_tokens];
        "counter" "responses_total" "Responses received" [responses];
        "counter" "responses_dropped_total"
            "Responses dropped (not ours, for the other direction, or their connection had gone)"
            [dropped_responses];
        "counter" "failovers_total" "INVITEs sent again to another back end after theirs failed unanswered"
            [failovers];
        "counter" "rate_limited_total"
            "Out-of-dialog requests answered 503 because their source address passed --rate-limit-per-ip"
            [rate_limited];
        "counter" "shed_total"
            "New dialogs answered 503 because their worker was saturated (in-dialog traffic goes first)"
            [shed];
        "counter" "worker_saturations_total"
            "Times a worker became saturated (three turns in a row over 250 ms, or a quarter-full hand-off queue)"
            [saturations];
        "counter" "retries_total"
            "Initial INVITEs sent to another back end, by why (503: the server was overloaded)"
            [retries_503 = "reason=\"503\"", failovers = "reason=\"server lost\"",
             retries_no_answer = "reason=\"no answer\""];
        "counter" "handoffs_total" "Messages handed to another worker" [handoffs];
        "counter" "bytes_total" "SIP bytes read and written (plaintext)"
            [bytes_in = "direction=\"in\"", bytes_out = "direction=\"out\""];
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn every_counter_adds_up_and_families_name_their_rows() {
        let a = Counts {
            responses: 2,
            failovers: 1,
            bytes_in: 5,
            ..Counts::default()
        };
        let mut sum = a;
        sum.add(&a);
        assert_eq!((sum.responses, sum.failovers, sum.bytes_in), (4, 2, 10));
        let fams = sum.families();
        let retries = fams
            .iter()
            .find(|f| f.1 == "retries_total")
            .expect("retries_total");
        assert_eq!(retries.0, "counter");
        assert!(retries.3.contains(&("reason=\"server lost\"", 2)), "{retries:?}");
        let names: std::collections::HashSet<_> = fams.iter().map(|f| f.1).collect();
        assert_eq!(names.len(), fams.len(), "a family declared twice");
    }
}
