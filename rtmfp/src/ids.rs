//! Identifier newtypes.

/// A receive session ID chosen by the receiving end (RFC 7016 §2.2.2). 0 is the startup pseudo-session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId(pub u32);

impl SessionId {
    /// The startup pseudo-session used by IHello, RHello, Redirect and IIKeying (RFC 7016 §2.2.2).
    pub const STARTUP: SessionId = SessionId(0);
}

/// A flow identifier, unique per direction within a session (RFC 7016 §2.3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlowId(pub u64);

/// A Flash peer ID: SHA-256 of the initiator's certificate (RFC 7425 §4.3.2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub [u8; 32]);

impl core::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PeerId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}
