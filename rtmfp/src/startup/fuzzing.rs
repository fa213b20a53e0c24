//! Fuzzing entry points for the startup responder, shared by the cargo-fuzz target and the
//! corpus replay test. Not part of the API.

use std::net::SocketAddr;

use super::responder::{HelloDisposition, KeyingDisposition, Responder, ResponderConfig};
use crate::crypto::{DhGroup, DhKeyPair, NegotiationPolicy, PacketDecoder};
use crate::time::Instant;
use crate::wire::{Chunk, ChunkIter, PacketHeader, Reader};

/// A deterministic "random" source for the fuzz key pair (fuzzing needs reproducibility).
struct CounterRng(u64);

impl rand_core::RngCore for CounterRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = (self.next_u64() >> 56) as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Feeds arbitrary bytes to a responder. The first byte picks the path:
/// even: the bytes are a datagram, decrypted with the default key when that works, otherwise
/// parsed as a plain startup packet; every IHello and IIKeying goes to the responder.
/// odd: the rest is an IIKeying `certificate | skic` split at its first byte, sent with a valid
/// cookie, so that certificate and key-component parsing and the DH step are reached.
pub fn fuzz_responder(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let responder = Responder::new(
        ResponderConfig {
            groups: vec![DhGroup::Modp1024],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        },
        [0x5A; 32],
        &[0xA5; 32],
        Instant::ZERO,
    );
    let now = Instant::from_millis(1000);
    let from: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 40000));
    if selector % 2 == 0 {
        let mut datagram = rest.to_vec();
        let mut decoder = PacketDecoder::startup();
        let plain: Vec<u8> = match decoder.decode(&mut datagram) {
            Ok(d) => d.packet.to_vec(),
            Err(_) => rest.to_vec(),
        };
        let mut r = Reader::new(&plain);
        if PacketHeader::parse(&mut r).is_err() {
            return;
        }
        for chunk in ChunkIter::new(r.rest()) {
            let Ok(chunk) = chunk else { break };
            match chunk {
                Chunk::IHello(h) => {
                    if let HelloDisposition::RHello { cookie, .. } =
                        responder.on_ihello(now, &from, h.epd, h.tag)
                    {
                        assert_eq!(cookie.len(), super::cookie::COOKIE_LEN);
                    }
                }
                Chunk::IIKeying(k) => {
                    let _ = responder.on_iikeying(
                        now,
                        &from,
                        k.initiator_session_id.0,
                        k.cookie_echo,
                        k.certificate,
                        k.skic,
                    );
                }
                _ => {}
            }
        }
    } else {
        let HelloDisposition::RHello { cookie, .. } =
            responder.on_ihello(now, &from, &[0x01, 0x0A], b"tag")
        else {
            return;
        };
        let Some((&split, body)) = rest.split_first() else {
            return;
        };
        let (cert, skic) = body.split_at(usize::from(split).min(body.len()));
        if let KeyingDisposition::Accept(req) =
            responder.on_iikeying(now, &from, 1, &cookie, cert, skic)
        {
            let pair = DhKeyPair::generate(req.group, &mut CounterRng(7));
            let _ = responder.accept(&req, &pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_fuzz_corpus() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/startup_responder"
        );
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_responder(&data);
            n += 1;
        }
        assert!(n > 0, "empty corpus");
    }
}
