//! Certificate fingerprints: the Flash peer ID (RFC 7425 §4.3.2).

use sha2::{Digest, Sha256};

use super::vlu::{OptionItem, OptionReader};
use super::CryptoError;
use crate::ids::PeerId;

/// The fingerprint of a Flash-profile certificate (RFC 7425 §4.3.2): SHA-256 over the
/// certificate up to and including the first option-list marker, or over the whole certificate
/// when it has none (Flash Player certificates have none). This is the Flash peer ID.
///
/// Fails when the options before the first marker are malformed (RFC 7016 §2.1.3).
pub fn fingerprint(certificate: &[u8]) -> Result<PeerId, CryptoError> {
    let mut canonical_len = certificate.len();
    for item in OptionReader::new(certificate) {
        let (item, end) = item.map_err(|()| CryptoError::MalformedCertificate)?;
        if item == OptionItem::Marker {
            canonical_len = end;
            break;
        }
    }
    let canonical = certificate
        .get(..canonical_len)
        .ok_or(CryptoError::MalformedCertificate)?;
    Ok(PeerId(Sha256::digest(canonical).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha256(bytes: &[u8]) -> PeerId {
        PeerId(Sha256::digest(bytes).into())
    }

    #[test]
    fn whole_certificate_without_marker() {
        // Cumulus-style server certificate head: `01 0A | 02 15 02`.
        let cert = [0x01, 0x0a, 0x02, 0x15, 0x02];
        assert_eq!(fingerprint(&cert), Ok(sha256(&cert)));
    }

    #[test]
    fn stops_after_first_marker() {
        let cert = [0x01, 0x0a, 0x00, 0x02, 0x15, 0x02, 0x00, 0x09];
        assert_eq!(fingerprint(&cert), Ok(sha256(&cert[..3])));
        // Bytes after the marker do not count, even malformed ones.
        let other = [0x01, 0x0a, 0x00, 0x7f];
        assert_eq!(fingerprint(&other), fingerprint(&cert));
        // A zero byte inside an option value is not a marker.
        let inside = [0x03, 0x15, 0x00, 0x00];
        assert_eq!(fingerprint(&inside), Ok(sha256(&inside)));
    }

    #[test]
    fn malformed_before_marker() {
        assert_eq!(
            fingerprint(&[0x05, 0x15, 0x02]),
            Err(CryptoError::MalformedCertificate)
        );
        assert_eq!(fingerprint(&[0x80]), Err(CryptoError::MalformedCertificate));
        assert_eq!(fingerprint(&[]), Ok(sha256(&[])));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn marker_free_lists_hash_whole(
            options in proptest::collection::vec(
                (1u8..0x7f, proptest::collection::vec(any::<u8>(), 0..20)), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut cert = Vec::new();
            for (kind, value) in &options {
                cert.push(1 + value.len() as u8);
                cert.push(*kind);
                cert.extend_from_slice(value);
            }
            prop_assert_eq!(fingerprint(&cert), Ok(sha256(&cert)));
            let head = cert.len() + 1;
            cert.push(0);
            cert.extend_from_slice(&tail);
            prop_assert_eq!(fingerprint(&cert), Ok(sha256(&cert[..head])));
        }
    }
}
