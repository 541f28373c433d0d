//! A global allocator that can bound what one thread allocates while a piece of untrusted
//! work runs. A chat template from a model's tokenizer_config.json is a program: minijinja's
//! fuel counts its steps, not its bytes, and `{% set x = x ~ x %}` doubles a string per step,
//! so 40 steps ask for a terabyte. Such an allocation cannot come back as an error (Rust aborts
//! when one fails), so work under a [`Budget`] that outgrows it ends the process the way every
//! tokbridge error does: the budget's one line on stderr and exit status 1. Checkpoints and
//! exports are published atomically, so nothing written is lost.
//!
//! Wraps `std::alloc::System`; a thread outside a budget pays one thread-local read per call.
//! The binary installs it (`#[global_allocator]` in main.rs); without it a budget bounds nothing.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The allocator: `System`, with the calling thread's budget checked first.
pub struct Bounded;

thread_local! {
    /// Bytes allocated less bytes freed on this thread since its budget began.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The budget in bytes; 0 when none is set.
    static LIMIT: Cell<isize> = const { Cell::new(0) };
    /// The line printed when the budget is exceeded (owned by the `Budget`).
    static MESSAGE: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Counts `bytes` against the thread's budget; past it, prints the budget's line and exits 1.
fn charge(bytes: isize) {
    let limit = LIMIT.try_with(Cell::get).unwrap_or(0);
    if limit == 0 {
        return;
    }
    let live = LIVE.with(|l| {
        let v = l.get().saturating_add(bytes);
        l.set(v);
        v
    });
    if live > limit {
        // No allocation from here on: the message was formatted when the budget was set.
        let (ptr, len) = MESSAGE.with(Cell::get);
        // SAFETY: ptr/len point into the message the live `Budget` owns (LIMIT is set only while
        // one lives on this thread); write and _exit allocate nothing.
        unsafe {
            libc::write(2, ptr.cast(), len);
            libc::_exit(1);
        }
    }
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        // SAFETY: as alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(-(layout.size() as isize));
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        charge(new_size as isize - layout.size() as isize);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// While alive, the current thread may allocate at most `bytes` more than it frees; past that
/// the process prints `message` (one line) and exits 1. Budgets do not nest.
pub struct Budget {
    /// The line `charge` prints; its bytes stay put on the heap while the budget lives.
    _message: String,
}

impl Budget {
    pub fn new(bytes: usize, message: &str) -> Self {
        let budget = Budget { _message: format!("error: {message}\n") };
        MESSAGE.with(|m| m.set((budget._message.as_ptr(), budget._message.len())));
        LIVE.with(|l| l.set(0));
        LIMIT.with(|l| l.set(bytes.clamp(1, isize::MAX as usize) as isize));
        budget
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        LIMIT.with(|l| l.set(0));
        MESSAGE.with(|m| m.set((std::ptr::null(), 0)));
    }
}
