//! User Data option semantics (RFC 7016 §2.3.11.1), on options already split by the wire layer.

use crate::params::MANDATORY_OPTION_CUTOFF;

/// Option type: user's per-flow metadata (RFC 7016 §2.3.11.1.1).
pub const OPTION_METADATA: u64 = 0x00;
/// Option type: return flow association (RFC 7016 §2.3.11.1.2).
pub const OPTION_RETURN_ASSOCIATION: u64 = 0x0A;
/// Most bytes of a VLU (RFC 7016 §2.1.2, 64-bit values).
const MAX_VLU_LEN: usize = 10;

/// What a new flow's options say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowOptions<'a> {
    /// The per-flow metadata, if present.
    pub metadata: Option<&'a [u8]>,
    /// The flow ID of the far end's receive flow this flow answers.
    pub associated: Option<u64>,
}

/// Why a flow's options reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// An unknown option below the mandatory cutoff (RFC 7016 §2.3.11.1).
    #[error("unknown mandatory option {0:#x}")]
    UnknownMandatory(u64),
    /// A return flow association that is not a VLU.
    #[error("malformed return flow association")]
    BadAssociation,
}

/// Classifies `(type, value)` pairs: metadata, return association, unknown options (types below
/// 0x2000 reject the flow; others are ignored). Repeats keep the first occurrence.
pub fn classify_options<'a>(opts: &[(u64, &'a [u8])]) -> Result<FlowOptions<'a>, OptionError> {
    let mut out = FlowOptions::default();
    for &(kind, value) in opts {
        match kind {
            OPTION_METADATA => {
                out.metadata.get_or_insert(value);
            }
            OPTION_RETURN_ASSOCIATION if out.associated.is_none() => {
                out.associated = Some(read_vlu(value).ok_or(OptionError::BadAssociation)?);
            }
            OPTION_RETURN_ASSOCIATION => {}
            k if k < MANDATORY_OPTION_CUTOFF => return Err(OptionError::UnknownMandatory(k)),
            _ => {}
        }
    }
    Ok(out)
}

/// Reads one VLU that must fill `bytes` exactly.
fn read_vlu(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > MAX_VLU_LEN {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        v = v.checked_mul(128)?.checked_add(u64::from(b & 0x7F))?;
        let last = i + 1 == bytes.len();
        if (b & 0x80 == 0) != last {
            return None;
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_association_and_cutoff() {
        let o = classify_options(&[(0, b"TC\x04\x00"), (0x0A, &[0x02])]).unwrap();
        assert_eq!(o.metadata, Some(&b"TC\x04\x00"[..]));
        assert_eq!(o.associated, Some(2));
        assert_eq!(
            classify_options(&[(0x0A, &[0x81, 0x02])])
                .unwrap()
                .associated,
            Some(130)
        );
        assert_eq!(
            classify_options(&[(0x15, &[1])]),
            Err(OptionError::UnknownMandatory(0x15))
        );
        assert_eq!(
            classify_options(&[(0x2000, &[1])]).unwrap(),
            FlowOptions::default()
        );
        assert_eq!(
            classify_options(&[(0x0A, &[0x81])]),
            Err(OptionError::BadAssociation)
        );
        assert_eq!(
            classify_options(&[(0x0A, &[])]),
            Err(OptionError::BadAssociation)
        );
    }
}
