//! The loaded XDP program against its Rust reference (`classify`), frame by frame, with the
//! kernel's `BPF_PROG_TEST_RUN`: crafted frames around every rule, and random mutations of
//! them. Needs root (loading BPF) and a build with clang; says why when it skips.

use std::net::IpAddr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use updraft_bpf::classify::{udp_frame, Filter, Prefix, Verdict};
use updraft_bpf::loader::{LoadError, Loaded, VerdictCounts, XDP_DROP, XDP_PASS};

const PORT: u16 = 1935;
/// Random frames tried after the crafted ones.
const RANDOM_FRAMES: usize = 20_000;

/// What the kernel's counters say the program decided for one frame.
fn decided(before: VerdictCounts, after: VerdictCounts) -> Option<Verdict> {
    let changed = [
        (after.pass - before.pass, Verdict::Pass),
        (after.drop_denied - before.drop_denied, Verdict::DropDenied),
        (
            after.drop_malformed - before.drop_malformed,
            Verdict::DropMalformed,
        ),
        (
            after.redirect + after.redirect_empty - before.redirect - before.redirect_empty,
            Verdict::Redirect,
        ),
    ];
    let mut hit = changed.iter().filter(|c| c.0 == 1).map(|c| c.1);
    let v = hit.next();
    (changed.iter().map(|c| c.0).sum::<u64>() == 1)
        .then_some(v)
        .flatten()
}

#[test]
fn the_loaded_program_decides_as_the_reference_classifier() {
    let filter = Filter {
        ports: vec![PORT, 10_000],
        deny: vec![
            Prefix {
                addr: "192.0.2.0".parse().unwrap(),
                len: 24,
            },
            Prefix {
                addr: "198.51.100.77".parse().unwrap(),
                len: 32,
            },
            Prefix {
                addr: "2001:db8::".parse().unwrap(),
                len: 32,
            },
        ],
    };
    // scripts/test.sh sets this as root (CI): there, a skip is a failure.
    let required = std::env::var_os("UPDRAFT_REQUIRE_PRIVILEGED_TESTS").is_some();
    let loaded = match Loaded::load(&filter) {
        Ok(l) => l,
        Err(LoadError::NoObject(why)) if !required => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) if euid() != 0 && !required => {
            eprintln!("skipped: not root, so the kernel refuses to load BPF ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let sources: [IpAddr; 5] = [
        "198.51.100.7".parse().unwrap(),
        "192.0.2.9".parse().unwrap(),
        "198.51.100.77".parse().unwrap(),
        "2001:db8:5::1".parse().unwrap(),
        "2001:db9::1".parse().unwrap(),
    ];
    for src in sources {
        for port in [PORT, 10_000, 53] {
            for payload in [0, 3, 19, 20, 21, 35, 36, 52, 1184, 1185] {
                for tags in 0..=2 {
                    frames.push(udp_frame(src, port, payload, tags));
                }
            }
        }
    }
    let crafted = frames.len();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    for _ in 0..RANDOM_FRAMES {
        let mut f = frames[(rng.next_u32() as usize) % crafted].clone();
        match rng.next_u32() % 4 {
            // Flip a few bytes anywhere (headers included).
            0 | 1 => {
                for _ in 0..=(rng.next_u32() % 3) {
                    let at = (rng.next_u32() as usize) % f.len();
                    f[at] ^= 1 << (rng.next_u32() % 8);
                }
            }
            // Cut it.
            2 => f.truncate((rng.next_u32() as usize) % f.len()),
            // Pure noise.
            _ => {
                f = vec![0; 14 + (rng.next_u32() as usize) % 200];
                rng.fill_bytes(&mut f);
            }
        }
        frames.push(f);
    }
    let mut checked = 0;
    for (i, f) in frames.iter().enumerate() {
        // BPF_PROG_TEST_RUN wants at least an Ethernet header; the reference passes shorter
        // frames, and so would the program (its first bounds check).
        if f.len() < updraft_bpf::classify::ETH_HEADER_LEN {
            assert_eq!(filter.classify(f), Verdict::Pass);
            continue;
        }
        let before = loaded.counts().unwrap();
        let action = loaded.test_run(f).unwrap();
        let after = loaded.counts().unwrap();
        let expected = filter.classify(f);
        assert_eq!(
            decided(before, after),
            Some(expected),
            "frame {i}: {f:02x?}"
        );
        // No AF_XDP socket is bound in a test run: a redirect falls back to passing.
        let expected_action = match expected {
            Verdict::Pass | Verdict::Redirect => XDP_PASS,
            Verdict::DropDenied | Verdict::DropMalformed => XDP_DROP,
        };
        assert_eq!(action, expected_action, "frame {i}");
        checked += 1;
    }
    assert!(checked > RANDOM_FRAMES / 2, "{checked} frames checked");
    eprintln!("{checked} frames: the program and the reference agree");
}

/// The effective user ID, from /proc (no libc call).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
