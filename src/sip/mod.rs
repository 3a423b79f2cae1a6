//! Stage 2, message view: framing and a zero-copy view of SIP messages.
//!
//! No I/O and no policy here. Raw bytes stay authoritative: the view only
//! indexes them, and edits splice them.

pub mod edit;
pub mod error;
pub mod fields;
pub mod framing;
pub mod header;
pub mod of_invite;
pub mod response;
pub mod view;

pub use error::SipError;
pub use fields::{CSeq, NameAddr, Params, Via};
pub use header::HeaderName;
pub use view::{HeaderField, Method, SipView, Span, StartLine};
