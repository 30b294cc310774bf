//! The SIP layer, pure and I/O-free: framing a byte stream into messages ([`frame`]), parsing a
//! message into borrowed views ([`message`], [`via`], [`addr`]), rewriting it for forwarding as a
//! list of slices ([`rewrite`]), the answers siplb generates itself ([`response`]), and the
//! MAC-protected tokens that carry routing state inside messages ([`token`]), and who a request
//! says it comes from ([`identity`]).
//!
//! Nothing here allocates per message except the scratch buffer a caller reuses, and nothing
//! panics on input: every malformed byte sequence comes back as an error value.

pub mod addr;
pub mod exercise;
pub mod frame;
pub mod header;
pub mod identity;
pub mod message;
pub mod method;
pub mod response;
pub mod rewrite;
pub mod scan;
pub mod siphash;
pub mod token;
pub mod via;

pub use frame::{FrameError, Framed, Read, Status, frame, read};
pub use message::{Field, Message, ParseError, Rejection, Span, StartLine};
pub use method::Method;
pub use rewrite::{Forward, Rewrite};
pub use token::{Role, Token, TokenCache, TokenKey};

#[cfg(test)]
mod torture;
