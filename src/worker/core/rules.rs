//! Rules of a worker that need no I/O, as plain functions of values and an instant (tested here in
//! virtual time, no sockets): what a connection's clocks say at a given moment (handshake,
//! message and idle timeouts, the WebSocket keep-alive ping) and what the operator's settings
//! make of the back ends (drain: weight 0, disable, a weight of their own).

use std::time::{Duration, Instant};

use super::close::CloseReason;
use crate::admin::{AdminState, Overrides};
use crate::balance::Backend;

/// A connection's clocks, as the sweep reads them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocks {
    pub opened: Instant,
    pub last_active: Instant,
    /// Since when part of a message has waited to be completed.
    pub partial_since: Option<Instant>,
    pub handshaking: bool,
    /// A WebSocket client, and whether a ping went out since it last sent anything.
    pub ws: bool,
    pub pinged: bool,
}

/// `--handshake-timeout`, `--message-timeout`, `--idle-timeout`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub handshake: Duration,
    pub message: Duration,
    pub idle: Duration,
}

/// What the clocks call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Close(CloseReason),
    /// Ping the WebSocket client (silent for half of the idle timeout).
    Ping,
}

/// Every kind of connection: a handshake must finish and a message, once begun, must be complete
/// in time (a peer dripping a byte at a time is not "active"); silence ends client and peer
/// connections, and pool connections too (the pool reconnects; probes keep a healthy one busy).
/// Browsers send nothing between registrations minutes apart: half-way to the idle timeout a
/// WebSocket client is pinged, and its pong keeps it open.
pub(super) fn timer(c: &Clocks, l: &Limits, now: Instant) -> Option<Timer> {
    let since = |t: Instant| now.saturating_duration_since(t);
    if c.handshaking && since(c.opened) > l.handshake {
        Some(Timer::Close(CloseReason::HandshakeTimeout))
    } else if c.partial_since.is_some_and(|t| since(t) > l.message) {
        Some(Timer::Close(CloseReason::MessageTimeout))
    } else if since(c.last_active) > l.idle {
        Some(Timer::Close(CloseReason::IdleTimeout))
    } else if c.ws && !c.pinged && since(c.last_active) > l.idle / 2 {
        Some(Timer::Ping)
    } else {
        None
    }
}

/// The back ends as routing sees them under the operator's settings: a draining one has weight 0
/// (no new dialogs; its dialogs go on), a disabled one is marked (nothing at all), a weight of its
/// own replaces the configured one. Settings for names not configured change nothing.
pub(super) fn effective(backends: &[Backend], overrides: &Overrides) -> (Vec<Backend>, Vec<bool>) {
    let mut eff = backends.to_vec();
    let mut disabled = vec![false; eff.len()];
    for (b, off) in eff.iter_mut().zip(disabled.iter_mut()) {
        if let Some(o) = overrides.get(&b.name) {
            b.weight = o.weight.unwrap_or(b.weight);
            match o.state {
                AdminState::Enabled => {}
                AdminState::Draining => b.weight = 0,
                AdminState::Disabled => *off = true,
            }
        }
    }
    (eff, disabled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Override;

    const LIMITS: Limits = Limits {
        handshake: Duration::from_secs(10),
        message: Duration::from_secs(10),
        idle: Duration::from_secs(180),
    };

    fn clocks(t0: Instant) -> Clocks {
        Clocks {
            opened: t0,
            last_active: t0,
            partial_since: None,
            handshaking: false,
            ws: false,
            pinged: false,
        }
    }

    #[test]
    fn timeouts_in_virtual_time() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let c = clocks(t0);
        assert_eq!(timer(&c, &LIMITS, s(179)), None);
        assert_eq!(
            timer(&c, &LIMITS, s(181)),
            Some(Timer::Close(CloseReason::IdleTimeout))
        );
        let hs = Clocks {
            handshaking: true,
            ..c
        };
        assert_eq!(timer(&hs, &LIMITS, s(9)), None);
        assert_eq!(
            timer(&hs, &LIMITS, s(11)),
            Some(Timer::Close(CloseReason::HandshakeTimeout))
        );
        // A drip keeps the connection "active" but not its message.
        let drip = Clocks {
            partial_since: Some(t0),
            last_active: s(11),
            ..c
        };
        assert_eq!(
            timer(&drip, &LIMITS, s(11)),
            Some(Timer::Close(CloseReason::MessageTimeout))
        );
        // A clock read before a connection's last event (a turn's start) is no timeout.
        let later = Clocks {
            last_active: s(5),
            ..c
        };
        assert_eq!(timer(&later, &LIMITS, s(1)), None);
    }

    #[test]
    fn a_silent_websocket_client_is_pinged_half_way_then_closed_if_it_never_answers() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let ws = Clocks {
            ws: true,
            ..clocks(t0)
        };
        assert_eq!(timer(&ws, &LIMITS, s(89)), None);
        assert_eq!(timer(&ws, &LIMITS, s(91)), Some(Timer::Ping));
        let pinged = Clocks { pinged: true, ..ws };
        assert_eq!(timer(&pinged, &LIMITS, s(120)), None, "one ping per silence");
        assert_eq!(
            timer(&pinged, &LIMITS, s(181)),
            Some(Timer::Close(CloseReason::IdleTimeout))
        );
        // Its pong is activity: the clock starts again, and so does the ping.
        let answered = Clocks {
            last_active: s(95),
            pinged: false,
            ..ws
        };
        assert_eq!(timer(&answered, &LIMITS, s(181)), None);
        assert_eq!(timer(&answered, &LIMITS, s(186)), Some(Timer::Ping));
        // TLS clients are never pinged (they keep themselves alive, RFC 5626).
        assert_eq!(timer(&clocks(t0), &LIMITS, s(91)), None);
    }

    #[test]
    fn drain_disable_and_weights_from_the_operator() {
        let a: ::core::net::SocketAddr = "192.0.2.1:5061".parse().unwrap();
        let backends = vec![
            Backend::new("a".into(), a, 100),
            Backend::new("b".into(), a, 100),
            Backend::new("c".into(), a, 100),
            Backend::new("d".into(), a, 100),
        ];
        let mut o = Overrides::new();
        o.insert(
            "a".into(),
            Override {
                state: AdminState::Draining,
                weight: Some(500),
            },
        );
        o.insert(
            "b".into(),
            Override {
                state: AdminState::Disabled,
                weight: None,
            },
        );
        o.insert(
            "c".into(),
            Override {
                state: AdminState::Enabled,
                weight: Some(250),
            },
        );
        o.insert("nobody".into(), Override::default());
        let (eff, disabled) = effective(&backends, &o);
        assert_eq!(eff.len(), 4);
        let weights: Vec<u32> = eff.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [0, 100, 250, 100], "draining wins over a weight");
        assert_eq!(disabled, [false, true, false, false]);
        // Pins stay: a draining back end keeps its dialogs.
        assert!(eff.iter().zip(&backends).all(|(e, b)| e.pin == b.pin));
    }
}
