//! Why a connection is closed: one enum for every close a worker makes, with the text logs and
//! metrics show and what the pool makes of it for a pool connection (retry after a back-off, a
//! TLS failure's longer back-off, or nothing to retry because siplb closed it itself).

use crate::balance::pool::Closed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The balancer is stopping.
    ShuttingDown,
    /// A reload removed the back end.
    Removed,
    /// The TLS handshake or a record failed (a certificate refused either way).
    Tls,
    /// A socket read or write failed.
    Io,
    WriteFailed,
    /// Output the peer does not read piled up past what its stream may hold.
    PeerNotReading,
    /// The worker's output budget: this connection held the most.
    OutputBudget,
    /// A server connection to the peer listener whose certificate names no configured back end.
    PeerNotConfigured,
    /// A federation partner's certificate that fails that partner's checks.
    PartnerRefused,
    /// A reload removed the partner this connection belongs to.
    PartnerRemoved,
    /// Bytes that cannot be framed as SIP (or as WebSocket frames).
    UnframableInput,
    /// A WebSocket upgrade that was refused (after its HTTP answer).
    UpgradeRefused,
    HandshakeTimeout,
    MessageTimeout,
    IdleTimeout,
    SocketError,
    ClosedWithoutCloseNotify,
    ClosedByPeer,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "shutting down",
            CloseReason::Removed => "removed from the back-end set",
            CloseReason::Tls => "TLS error",
            CloseReason::Io => "i/o error",
            CloseReason::WriteFailed => "write failed",
            CloseReason::PeerNotReading => "peer not reading",
            CloseReason::OutputBudget => "output budget",
            CloseReason::PeerNotConfigured => "peer certificate names no configured back end",
            CloseReason::PartnerRefused => "partner certificate refused",
            CloseReason::PartnerRemoved => "partner removed",
            CloseReason::UnframableInput => "unframable input",
            CloseReason::UpgradeRefused => "WebSocket upgrade refused",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::MessageTimeout => "message timeout",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::SocketError => "socket error",
            CloseReason::ClosedWithoutCloseNotify => "closed without close_notify",
            CloseReason::ClosedByPeer => "closed by peer",
        }
    }

    /// The close code a WebSocket client is sent when siplb closes its connection for this
    /// reason; `None` when a close frame already went (a violation, an answered close) or the
    /// connection can take none.
    pub fn ws_close_code(self) -> Option<u16> {
        use crate::ws::frame::code;
        match self {
            CloseReason::UnframableInput
            | CloseReason::ClosedByPeer
            | CloseReason::UpgradeRefused
            | CloseReason::Io
            | CloseReason::WriteFailed
            | CloseReason::SocketError
            | CloseReason::Tls
            | CloseReason::ClosedWithoutCloseNotify => None,
            CloseReason::ShuttingDown | CloseReason::Removed | CloseReason::PartnerRemoved => {
                Some(code::GOING_AWAY)
            }
            CloseReason::PeerNotReading | CloseReason::OutputBudget | CloseReason::PartnerRefused => {
                Some(code::POLICY)
            }
            CloseReason::HandshakeTimeout
            | CloseReason::MessageTimeout
            | CloseReason::IdleTimeout
            | CloseReason::PeerNotConfigured => Some(code::NORMAL),
        }
    }

    /// What the pool makes of a pool connection closed for this reason.
    pub fn for_pool(self) -> Closed {
        match self {
            CloseReason::ShuttingDown | CloseReason::Removed => Closed::Ours,
            CloseReason::Tls => Closed::Tls,
            _ => Closed::Io,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&crate::tls::wire::StreamError> for CloseReason {
    fn from(e: &crate::tls::wire::StreamError) -> CloseReason {
        use crate::tls::wire::StreamError;
        match e {
            StreamError::Tls(_) => CloseReason::Tls,
            StreamError::Io(_) => CloseReason::Io,
            StreamError::Backlog => CloseReason::PeerNotReading,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_retries_what_it_did_not_close_itself_and_backs_off_longer_after_tls() {
        assert_eq!(CloseReason::ShuttingDown.for_pool(), Closed::Ours);
        assert_eq!(CloseReason::Removed.for_pool(), Closed::Ours);
        assert_eq!(CloseReason::Tls.for_pool(), Closed::Tls);
        for why in [
            CloseReason::IdleTimeout,
            CloseReason::ClosedByPeer,
            CloseReason::Io,
        ] {
            assert_eq!(why.for_pool(), Closed::Io, "{why}");
        }
    }
}
