//! The process allocator, set for tensors that come and go every step.
//!
//! Every candle op allocates its output, and a 512x512 UNet step frees and allocates again
//! thousands of buffers of 1 to 80 MiB. glibc's malloc hands a block of more than its mmap
//! threshold (128 KiB at start, raised as blocks are freed) back to the kernel when it is freed,
//! and trims the heap's top above its trim threshold, so the next op's buffer comes back as
//! fresh pages, each zero-filled by a page fault: about a tenth of a CPU UNet step on the
//! machine the README's figures come from. [`tune_allocator`] fixes both thresholds, so freed
//! blocks of up to 32 MiB (glibc's ceiling for the threshold) stay in the heap for reuse, as
//! torch's CPU caching allocator keeps them. The cost is that the heap does not shrink after a
//! large job: the process keeps its peak resident memory, which it reached anyway.

/// The mmap threshold it sets: glibc's largest (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// The trim threshold: never trim below this much free heap top (1 GiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Sets glibc's malloc to keep freed tensor-sized blocks for reuse instead of returning them to
/// the kernel (see the module docs); call it once at the start of a binary that runs image
/// jobs on the CPU. Returns whether it took effect: `false` on other C libraries and systems,
/// where it does nothing (a global allocator such as mimalloc is the choice there).
///
/// ```
/// let tuned = heurist_inference::tune_allocator();
/// # #[cfg(all(target_os = "linux", target_env = "gnu"))]
/// assert!(tuned);
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets malloc's parameters; both values are in glibc's ranges, and
        // it returns 0 (changing nothing) for a value it refuses.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
