//! Process-level setup done once at start: the open-files limit, SIGXFSZ, SIGINT/SIGTERM
//! through `sigwait`, and CPU pinning for the bench.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Restricts the calling thread (and the threads and processes it starts from now on) to
/// one CPU. The bench pins the servers to one core and its clients to another, so the floor
/// and the measured operations cross the same two cores.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data, initialised by CPU_ZERO before use; CPU_SET checks
    // nothing but we pass cpu < CPU_SETSIZE (checked); sched_setaffinity only reads the set.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu out of range",
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Not supported off Linux: a no-op.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> io::Result<()> {
    Ok(())
}

/// Raises this process's open-files soft limit to its hard limit, so one reactor can hold tens
/// of thousands of sockets. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit struct for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit struct; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Ok(lim.rlim_cur as u64)
}

/// Ignores SIGXFSZ, so a write past the file-size limit (`RLIMIT_FSIZE`) fails with `EFBIG`,
/// an error the caller reports and survives, instead of the signal killing the process.
pub fn ignore_file_size_signal() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; signal() only changes this process's
    // signal table and no handler code runs.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns later)
/// and starts a thread that waits for either; when one arrives it sets the returned flag and
/// calls `notify` (typically a reactor waker); a second one exits the process at once with
/// status 128 + the signal number. Call it first thing in `main`, before spawning
/// other threads, so no thread receives the signal asynchronously.
pub fn on_termination(notify: impl Fn() + Send + 'static) -> io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use, and
    // pthread_sigmask only changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    let seen = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                // A second signal means the person does not want to wait for a clean stop
                // (it may be stuck on an output nobody reads): leave now.
                if seen.swap(true, Ordering::SeqCst) {
                    std::process::exit(128 + sig);
                }
                notify();
            }
        })?;
    Ok(flag)
}

/// Hands memory freed inside the allocator back to the system (glibc's `malloc_trim`): after
/// a scan of a large share, whose transient lists were freed, so the resident size reflects
/// what is kept. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the allocator holds, for memory reports (glibc's `mallinfo2`): bytes in use in its
/// heaps (chunk headers and rounding included), bytes in blocks it `mmap`ed (in use, whole
/// pages), and bytes free inside its heaps. `None` elsewhere.
pub fn malloc_usage() -> Option<MallocUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters; it takes no pointers.
        let m = unsafe { libc::mallinfo2() };
        Some(MallocUsage {
            in_use: m.uordblks,
            mmapped: m.hblkhd,
            free: m.fordblks,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Writes glibc's `malloc_info` report (XML: free chunks by size, per arena) to standard
/// error, for memory investigations. A no-op elsewhere.
pub fn print_malloc_info() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `fdopen` of a duplicate of fd 2 gives a FILE that malloc_info writes to and
    // fclose closes; no Rust-owned memory is passed.
    unsafe {
        let fd = libc::dup(2);
        if fd < 0 {
            return;
        }
        let f = libc::fdopen(fd, c"w".as_ptr());
        if f.is_null() {
            libc::close(fd);
            return;
        }
        libc::malloc_info(0, f);
        libc::fclose(f);
    }
}

/// See [`malloc_usage`].
#[derive(Clone, Copy, Debug)]
pub struct MallocUsage {
    /// Bytes of the chunks in use in the heaps (each with its header and rounding).
    pub in_use: usize,
    /// Bytes of the blocks `mmap`ed on their own (in use).
    pub mmapped: usize,
    /// Bytes free inside the heaps (resident or not).
    pub free: usize,
}

/// Makes every thread of the process allocate from one malloc arena (glibc's
/// `M_ARENA_MAX` = 1), for a process whose threads hand memory to each other. Call it before
/// any other thread starts: a thread keeps the arena of its first allocation. A no-op
/// elsewhere.
///
/// Why: a cluster node's NATS thread receives the stream ahead of the reactor (the client
/// buffers what the server pushes within its flow-control window: up to the stream's size at
/// a million entries) and frees it once handed over. In an arena of its own that memory was
/// kept for the NATS thread, and the index the reactor grew meanwhile came from another: a
/// node rebuilt from a 77 MB stream peaked 45 MB above one that applied the same records as
/// they came. With one arena the reactor reuses what the NATS thread freed.
pub fn share_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets one of the allocator's parameters; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Blocks of this size or more that the heap has no free room for are `mmap`ed on their own
/// once [`keep_freed_memory`] has run (glibc's `M_MMAP_THRESHOLD`, kept at its initial default).
pub const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Tells glibc's allocator never to give the free top of its heap back to the system
/// (`M_TRIM_THRESHOLD` = -1) and fixes its `mmap` threshold at [`MMAP_THRESHOLD_BYTES`];
/// returns whether it took both (false elsewhere). For a process whose one thread must not
/// pause (indexd); call it at start, before the first allocations worth keeping apart.
///
/// Why: glibc trims inside `free`. A free of 64 KiB or more that leaves the heap's top chunk
/// over the trim threshold gives the whole top back with one `brk`, however much of it
/// earlier frees had left there, and that `free` pays for the kernel's unmapping of all of
/// it. Closed connections' output, freed in steps of 256 KiB, joined megabytes freed before
/// it at the top in one step: one step took 4.2 ms of the loop thread, 3.6 ms of it in `brk`
/// (session 17, perf). Without trimming a free's cost no longer depends on what was freed
/// before it, and memory freed stays in the heap for the next allocations: the process's
/// resident size does not fall after a burst (its peak is what it was).
///
/// Setting either value also ends glibc's raising of the `mmap` threshold to the largest
/// block freed so far (up to 32 MiB): a block of 128 KiB or more that the heap has no room
/// for is mapped on its own, its `free` unmaps it alone (a cost that grows with its size,
/// not with what else is free), and growing it is an `mremap`, not a copy.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; it takes no pointers.
    unsafe {
        let threshold = libc::c_int::try_from(MMAP_THRESHOLD_BYTES).expect("fits an int");
        // -1: never trim (mallopt(3)).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// The CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): unlike a wall
/// clock, it does not count the time the thread waited for a CPU, so work timed with it on
/// a busy machine is still the work's own cost. `None` where the clock is not available.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// This thread's minor page faults and involuntary context switches so far (`None` where
/// `getrusage(RUSAGE_THREAD)` fails): what a slow piece of work waited on, for the work trace.
pub fn thread_faults_and_preemptions() -> Option<(u64, u64)> {
    // SAFETY: getrusage writes one rusage, which lives for the call; all-zero is a valid one.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (rc == 0).then_some((ru.ru_minflt as u64, ru.ru_nivcsw as u64))
}

/// What the kernel counts for the calling thread, for the work trace's account of a turn's
/// wall-clock time: the page faults it took, the times it gave up the CPU (waiting for
/// something) or had it taken (preempted), and how long it waited, runnable, for a CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// Minor page faults (a page mapped without I/O: first touch of fresh memory).
    pub minor_faults: u64,
    /// Major page faults (a page read from disk).
    pub major_faults: u64,
    /// Voluntary context switches (the thread blocked).
    pub voluntary_switches: u64,
    /// Involuntary context switches (the thread was preempted).
    pub preemptions: u64,
    /// Time spent runnable on a run queue, waiting for a CPU (`/proc/thread-self/schedstat`'s
    /// second field; zero where it cannot be read).
    pub run_delay: std::time::Duration,
}

/// This thread's [`ThreadCounts`] so far (`None` where `getrusage(RUSAGE_THREAD)` fails).
/// Two system calls: for a debug trace, not for every turn.
pub fn thread_counts() -> Option<ThreadCounts> {
    // SAFETY: getrusage writes one rusage, which lives for the call; all-zero is a valid one.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return None;
    }
    Some(ThreadCounts {
        minor_faults: ru.ru_minflt as u64,
        major_faults: ru.ru_majflt as u64,
        voluntary_switches: ru.ru_nvcsw as u64,
        preemptions: ru.ru_nivcsw as u64,
        run_delay: thread_run_delay().unwrap_or_default(),
    })
}

/// How long the calling thread has waited for a CPU while runnable, from
/// `/proc/thread-self/schedstat` (kept open per thread and re-read from its start).
fn thread_run_delay() -> Option<std::time::Duration> {
    use std::io::Read as _;
    use std::os::unix::fs::FileExt as _;
    thread_local! {
        static SCHEDSTAT: std::cell::RefCell<Option<std::fs::File>> =
            const { std::cell::RefCell::new(None) };
    }
    SCHEDSTAT.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = std::fs::File::open("/proc/thread-self/schedstat").ok();
        }
        let file = f.as_mut()?;
        let mut buf = [0u8; 96];
        let n = file
            .read_at(&mut buf, 0)
            .ok()
            .or_else(|| file.read(&mut buf).ok())?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let ns: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
        Some(std::time::Duration::from_nanos(ns))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn malloc_usage_counts_a_live_block() {
        // The counters are the whole process's: another test thread may free a big block
        // between the two readings, so a few tries are allowed; a broken reading fails all.
        let seen: Vec<i64> = (0..5)
            .map(|_| {
                let before = malloc_usage().expect("glibc");
                let block = std::hint::black_box(vec![1u8; 64 << 20]);
                let during = malloc_usage().expect("glibc");
                drop(block);
                (during.in_use + during.mmapped) as i64 - (before.in_use + before.mmapped) as i64
            })
            .collect();
        assert!(seen.iter().any(|&g| g >= 64 << 20), "{seen:?}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_stays_in_the_heap_once_trimming_is_off() {
        // Process-wide: the rest of this test binary runs without trimming and with the
        // fixed mmap threshold too, as indexd does (no test here depends on either).
        assert!(keep_freed_memory());
        // Blocks under the mmap threshold come from the heap; freed last the one nearest its
        // top, so all of them join the top at once: the case whose trimming took 3.6 ms in
        // indexd. Trimming would give that top back (the heap's free bytes would not grow by
        // the blocks' size). The counters are the whole process's and other test threads
        // allocate meanwhile, so a few tries are allowed; a trimmed heap fails all of them.
        const BLOCKS: usize = 64;
        let size = MMAP_THRESHOLD_BYTES - 28 * 1024;
        let grown: Vec<i64> = (0..5)
            .map(|_| {
                let blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![1u8; size]).collect();
                let before = malloc_usage().expect("glibc");
                drop(std::hint::black_box(blocks));
                let after = malloc_usage().expect("glibc");
                after.free as i64 - before.free as i64
            })
            .collect();
        let all = (BLOCKS * size) as i64;
        assert!(
            grown.iter().any(|&g| g >= all * 9 / 10),
            "{grown:?} of {all}"
        );
    }

    #[test]
    fn fd_limit_is_raised_to_hard() {
        let n = raise_fd_limit().unwrap();
        assert!(n >= 1024);
    }

    #[test]
    fn thread_counts_grow_with_faults() {
        let before = thread_counts().unwrap();
        // Touch fresh pages: each is a minor fault.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let after = thread_counts().unwrap();
        assert!(
            after.minor_faults > before.minor_faults,
            "{before:?} {after:?}"
        );
        assert!(after.run_delay >= before.run_delay);
    }
}
