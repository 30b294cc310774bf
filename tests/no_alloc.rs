//! The forwarding path of a client INVITE (frame, parse, validate, branch, rewrite, slices for
//! `write_vectored`) allocates nothing once its `Rewrite` is warm (issue 13). Checked with a
//! counting allocator — the one `unsafe` of the test suite, as `GlobalAlloc` requires.

#[allow(dead_code)]
#[path = "../benches/common/forward.rs"]
mod forward;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNT: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn forwarding_an_invite_allocates_nothing() {
    let inv = forward::invite();
    let key = siplb::sip::TokenKey::from_secret(b"no alloc");
    let tok = forward::conn_token(&key);
    let mut rw = siplb::sip::Rewrite::new();
    // Warm: the rewrite's edit lists reach their size.
    let mut out = forward::forward_request(&inv, &key, &tok, &tok, &mut rw);
    COUNT.store(true, Ordering::Relaxed);
    for _ in 0..1000 {
        out += forward::forward_request(std::hint::black_box(&inv), &key, &tok, &tok, &mut rw);
    }
    COUNT.store(false, Ordering::Relaxed);
    assert!(out > 0);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations in 1000 forwarded INVITEs"
    );
}
