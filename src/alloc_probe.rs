//! Tests only: the tools of the decoder property tests. The largest single
//! allocation a piece of code makes, the mutations applied to valid
//! encodings, and the fixed 100-byte inputs that claim huge lengths.
//!
//! The decoder property tests claim that no input makes a decoder allocate
//! more than its bound; this allocator is how they check it rather than
//! trust it. It is the unit-test binary's global allocator: it forwards to
//! the system allocator and, on a thread where a probe is running, records
//! the largest size asked for (by `alloc`, `alloc_zeroed` or `realloc`).
//! Other threads and other tests are not affected beyond a thread-local
//! check per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Probe;

thread_local! {
    static PROBING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: an allocation during thread teardown must not panic.
    if PROBING.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    PROBING.with(|p| p.set(true));
    let out = f();
    PROBING.with(|p| p.set(false));
    (out, LARGEST.with(Cell::get))
}

/// The property tests' configuration: 512 cases per target (CI), or as
/// many as `PROPTEST_CASES` says for a longer run (docs/DESIGN.md, "Decoder
/// property tests").
pub fn proptest_config() -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

/// serde preallocates a sequence for at most 1 MiB of elements however many
/// its length prefix claims (`serde::de::size_hint::cautious`), and grows it
/// as elements decode. That allocation is the one a decode may make beyond
/// the claim bound, so the tests allow it.
pub const SERDE_PREALLOC: usize = 1 << 20;

/// Mutations of a valid encoding: what a bit flip, a torn write, a
/// malicious peer or a bug would do to it.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// XOR the byte at (index mod length).
    Flip(usize, u8),
    /// Keep (index mod length) bytes.
    Truncate(usize),
    /// Insert bytes at (index mod length).
    Insert(usize, Vec<u8>),
    /// Write a varint claiming a huge length at (index mod length).
    HugeLength(usize, u64),
}

pub fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just(u64::MAX),
                Just(60u64 << 30),
                Just(1u64 << 32),
                1u64 << 16..1 << 40
            ]
        )
            .prop_map(|(i, n)| Mutation::HugeLength(i, n)),
    ]
}

/// `bytes` with `mutations` applied in order.
pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, x) => {
                if !bytes.is_empty() {
                    let i = at(*i, bytes.len());
                    bytes[i] ^= x;
                }
            }
            Mutation::Truncate(i) => {
                let keep = at(*i, bytes.len());
                bytes.truncate(keep);
            }
            Mutation::Insert(i, b) => {
                let i = at(*i, bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::HugeLength(i, n) => {
                let i = at(*i, bytes.len() + 1);
                let end = (i + 9).min(bytes.len());
                bytes.splice(i..end, huge_varint(*n));
            }
        }
    }
    bytes
}

/// bincode's standard varint for `n` at its widest: 253, then 8 bytes LE.
pub fn huge_varint(n: u64) -> Vec<u8> {
    let mut b = vec![253u8];
    b.extend_from_slice(&n.to_le_bytes());
    b
}

/// The fixed cases: `valid` with a varint claiming 60 GiB written at every
/// position in turn, cut or padded to 100 bytes.
pub fn hundred_byte_huge_claims(valid: &[u8]) -> Vec<Vec<u8>> {
    (0..valid.len().min(91))
        .map(|i| {
            let mut b = valid.to_vec();
            let end = (i + 9).min(b.len());
            b.splice(i..end, huge_varint(60 << 30));
            b.resize(100, 0);
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_sees_a_large_allocation_and_only_inside_it() {
        let (v, largest) = super::largest_allocation(|| vec![0u8; 3 << 20]);
        assert!(largest >= 3 << 20, "{largest}");
        drop(v);
        let ((), small) = super::largest_allocation(|| {
            std::hint::black_box(vec![0u8; 10]);
        });
        assert!(small < 1024, "{small}");
    }
}
