//! The forwarding path of a client INVITE (frame, parse, validate, branch, rewrite, slices for
//! `write_vectored`) allocates nothing once its `Rewrite` is warm (issue 13). Checked with a
//! counting allocator — the one `unsafe` of the test suite, as `GlobalAlloc` requires.

#[allow(dead_code)]
#[path = "../benches/common/forward.rs"]
mod forward;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Counting on this thread only: the test harness's own threads may allocate meanwhile (seen
    /// once, 4 allocations, under a loaded machine).
    static COUNT: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNT.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
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
        if counting() {
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
    COUNT.with(|c| c.set(true));
    for _ in 0..1000 {
        out += forward::forward_request(std::hint::black_box(&inv), &key, &tok, &tok, &mut rw);
    }
    COUNT.with(|c| c.set(false));
    assert!(out > 0);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations in 1000 forwarded INVITEs"
    );
}
