//! The state file's bytes, mapped from the page cache rather than copied into new memory.
//!
//! Why: fresh memory is what reading a large state costs. On 10,000 sessions (6.4 MB) a read
//! takes ~6 ms, nearly all of it faulting in and zeroing the pages of the copy; a populated
//! private mapping of the page cache takes ~0.5 ms.
//!
//! The catch: if another program truncates the file in place while it is mapped (ours never
//! do: a writer renames a new file over the old one), touching the lost pages raises SIGBUS.
//! A handler turns that into the usual one-line error and exit 1 instead of a crash; a SIGBUS
//! anywhere else goes to whatever handled it before (Rust's stack-overflow report) or to the
//! default. Linux only; elsewhere the file is read.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::Path;

pub enum FileBytes {
    #[cfg(target_os = "linux")]
    Mapped(linux::Mapping),
    Read(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(target_os = "linux")]
            FileBytes::Mapped(m) => m.bytes(),
            FileBytes::Read(v) => v,
        }
    }
}

/// The whole content of the file at `path`: mapped when it is a non-empty regular file and
/// mapping works, read otherwise.
pub fn read(path: &Path) -> io::Result<FileBytes> {
    let mut file = File::open(path)?;
    #[cfg(target_os = "linux")]
    {
        let meta = file.metadata()?;
        if let Ok(len) = usize::try_from(meta.len())
            && meta.is_file()
            && len > 0
            && let Some(m) = linux::Mapping::new(&file, len, path)
        {
            return Ok(FileBytes::Mapped(m));
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(FileBytes::Read(bytes))
}

#[cfg(target_os = "linux")]
pub mod linux {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

    /// A read-only private mapping of a whole file, watched for SIGBUS while it lives.
    pub struct Mapping {
        start: *mut libc::c_void,
        len: usize,
        _watch: Watch,
    }

    impl Mapping {
        /// None when the file cannot be mapped or every watch slot is taken (the caller reads
        /// the file instead).
        pub fn new(file: &File, len: usize, path: &Path) -> Option<Mapping> {
            install_handler();
            // SAFETY: a fresh mapping of `len` bytes of an open file; nothing aliases it.
            // MAP_POPULATE maps every page now, in one call, instead of faulting them one by one.
            let start = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_POPULATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if start == libc::MAP_FAILED {
                return None;
            }
            let message = format!(
                "Error: State file {}: it was truncated by another program while this one read it; nothing was changed. Run the command again.\n",
                path.display()
            );
            match Watch::new(start as usize, len, message.into_bytes().into_boxed_slice()) {
                Some(watch) => Some(Mapping {
                    start,
                    len,
                    _watch: watch,
                }),
                None => {
                    // SAFETY: unmapping the mapping made above, never handed out.
                    unsafe { libc::munmap(start, len) };
                    None
                }
            }
        }

        pub fn bytes(&self) -> &[u8] {
            // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
            unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`; no slice of it outlives `self`.
            unsafe { libc::munmap(self.start, self.len) };
        }
    }

    /// Mappings being read, for the SIGBUS handler: start and end address, and the message
    /// to print. A slot whose start is 0 is free; 1 means being filled in.
    const SLOTS: usize = 16;
    static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static MESSAGES: [AtomicPtr<u8>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static MESSAGE_LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

    struct Watch {
        slot: usize,
        _message: Box<[u8]>,
    }

    impl Watch {
        fn new(start: usize, len: usize, mut message: Box<[u8]>) -> Option<Watch> {
            let slot =
                (0..SLOTS).find(|&i| STARTS[i].compare_exchange(0, 1, SeqCst, SeqCst).is_ok())?;
            ENDS[slot].store(start + len, SeqCst);
            MESSAGES[slot].store(message.as_mut_ptr(), SeqCst);
            MESSAGE_LENS[slot].store(message.len(), SeqCst);
            STARTS[slot].store(start, SeqCst);
            Some(Watch {
                slot,
                _message: message,
            })
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            STARTS[self.slot].store(0, SeqCst);
        }
    }

    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    fn install_handler() {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            // SAFETY: sigaction with a zeroed, then filled, struct; the handler is
            // async-signal-safe (atomic loads, write, _exit, sigaction).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                    let _ = PREVIOUS.set(previous);
                }
            }
        });
    }

    extern "C" fn on_sigbus(
        signal: libc::c_int,
        info: *mut libc::siginfo_t,
        context: *mut libc::c_void,
    ) {
        // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
        let address = unsafe { (*info).si_addr() } as usize;
        for slot in 0..SLOTS {
            let start = STARTS[slot].load(SeqCst);
            if start > 1 && address >= start && address < ENDS[slot].load(SeqCst) {
                let message = MESSAGES[slot].load(SeqCst);
                let len = MESSAGE_LENS[slot].load(SeqCst);
                // SAFETY: the slot is the faulting thread's own mapping, whose message lives
                // until the mapping is dropped, which cannot happen while this thread is here.
                unsafe {
                    libc::write(2, message as *const libc::c_void, len);
                    libc::_exit(1);
                }
            }
        }
        // Not ours: what handled SIGBUS before, or the default action, which the faulting
        // access meets again when this returns.
        // SAFETY: calling the previous handler as it was registered, or resetting to SIG_DFL.
        unsafe {
            match PREVIOUS.get() {
                Some(previous)
                    if previous.sa_sigaction != libc::SIG_DFL
                        && previous.sa_sigaction != libc::SIG_IGN =>
                {
                    if previous.sa_flags & libc::SA_SIGINFO != 0 {
                        let handler: extern "C" fn(
                            libc::c_int,
                            *mut libc::siginfo_t,
                            *mut libc::c_void,
                        ) = std::mem::transmute(previous.sa_sigaction);
                        handler(signal, info, context);
                    } else {
                        let handler: extern "C" fn(libc::c_int) =
                            std::mem::transmute(previous.sa_sigaction);
                        handler(signal);
                    }
                }
                _ => {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
                }
            }
        }
    }
}
