//! PAM authentication for dropvault, with `libpam.so.0` loaded at run time.
//!
//! Loading libpam with `dlopen` rather than linking it means a default build
//! needs no PAM development package, and a server that never uses the PAM
//! backend never touches libpam. This crate is the only one in the workspace
//! allowed `unsafe`: it owns every FFI call (libpam, `getpwnam_r`), and each
//! unsafe block says why it is sound.
//!
//! Everything here blocks (PAM modules read files, talk to LDAP, and sleep
//! after a failure); async callers run it on a blocking thread. Each call
//! runs its own PAM transaction, so calls from several threads do not share
//! a handle.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;

use zeroize::Zeroizing;

/// The soname loaded: the ABI of libpam has been stable under this name for
/// two decades, and the unversioned `libpam.so` only exists with the
/// development package installed.
const LIBPAM: &str = "libpam.so.0";

// Return codes, message styles and flags from Linux-PAM's
// <security/_pam_types.h>. Only the ones used here.
const PAM_SUCCESS: c_int = 0;
const PAM_SERVICE_ERR: c_int = 3;
const PAM_BUF_ERR: c_int = 5;
const PAM_PERM_DENIED: c_int = 6;
const PAM_AUTH_ERR: c_int = 7;
const PAM_USER_UNKNOWN: c_int = 10;
const PAM_MAXTRIES: c_int = 11;
const PAM_NEW_AUTHTOK_REQD: c_int = 12;
const PAM_ACCT_EXPIRED: c_int = 13;
const PAM_CONV_ERR: c_int = 19;
/// `pam_set_item` item: the application's failure-delay function.
const PAM_FAIL_DELAY: c_int = 10;

const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;

/// Modules must not print anything: there is no terminal.
const PAM_SILENT: c_int = 0x8000;
/// An empty password never authenticates, whatever the shadow entry says.
const PAM_DISALLOW_NULL_AUTHTOK: c_int = 0x0001;

/// Linux-PAM never sends more messages in one call; more means a broken or
/// hostile module, and the count is used to size an allocation.
const PAM_MAX_NUM_MSG: c_int = 32;

/// Largest buffer offered to `getpwnam_r` (a passwd entry is a few hundred
/// bytes; NSS backends with huge entries are refused rather than served).
const MAX_PWNAM_BUF: usize = 1 << 20;

/// Why a PAM authentication did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PamError {
    /// libpam could not be loaded or lacks a function we need.
    #[error("PAM is unavailable: {0}")]
    Unavailable(String),
    /// Wrong user name or password (PAM does not say which).
    #[error("authentication failed")]
    AuthFailed,
    /// The password was right but the account may not log in now (expired,
    /// locked, password change required, refused by an account module).
    #[error("account refused: {0}")]
    AccountRefused(String),
    /// Any other PAM failure: the PAM return code and `pam_strerror`'s text.
    /// These are the server's trouble (a broken service file, a directory
    /// service down), not the user's.
    #[error("PAM error {0}: {1}")]
    Other(i32, String),
}

/// `struct pam_message`.
#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

/// `struct pam_response`: PAM frees `resp` and the array with `free()`.
#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

/// The conversation function. Linux-PAM passes `msg` as an array of
/// pointers (not a pointer to an array, as Solaris does).
type ConvFn = unsafe extern "C" fn(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

/// `pam_handle_t`, opaque.
#[repr(C)]
struct PamHandle {
    _private: [u8; 0],
}

type StartFn = unsafe extern "C" fn(
    service_name: *const c_char,
    user: *const c_char,
    pam_conversation: *const PamConv,
    pamh: *mut *mut PamHandle,
) -> c_int;
type HandleFlagsFn = unsafe extern "C" fn(pamh: *mut PamHandle, flags: c_int) -> c_int;
type StrerrorFn = unsafe extern "C" fn(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
type SetItemFn =
    unsafe extern "C" fn(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
/// The prototype of a `PAM_FAIL_DELAY` function.
type DelayFn = unsafe extern "C" fn(retval: c_int, usec_delay: u32, appdata_ptr: *mut c_void);

/// The libpam functions we call, resolved once per process.
struct Lib {
    start: StartFn,
    authenticate: HandleFlagsFn,
    acct_mgmt: HandleFlagsFn,
    end: HandleFlagsFn,
    strerror: StrerrorFn,
    set_item: SetItemFn,
    /// Kept open for the life of the process, so the function pointers
    /// above stay valid: `Lib` only ever lives in a `static`.
    _lib: libloading::Library,
}

fn lib() -> Result<&'static Lib, PamError> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|e| PamError::Unavailable(e.clone()))
}

fn load() -> Result<Lib, String> {
    // SAFETY: loading libpam runs its ELF initialisers, which only set up
    // libpam's own state; libpam is a system library meant to be loaded into
    // any process. It is never unloaded (see `Lib::_lib`).
    let lib = unsafe { libloading::Library::new(LIBPAM) }.map_err(|e| e.to_string())?;
    // SAFETY: each type below is the prototype of that function in
    // <security/pam_appl.h>; the pointers are copied out and only used while
    // `lib` is alive, which is forever.
    let start = unsafe { symbol::<StartFn>(&lib, b"pam_start\0") }?;
    // SAFETY: as above.
    let authenticate = unsafe { symbol::<HandleFlagsFn>(&lib, b"pam_authenticate\0") }?;
    // SAFETY: as above.
    let acct_mgmt = unsafe { symbol::<HandleFlagsFn>(&lib, b"pam_acct_mgmt\0") }?;
    // SAFETY: as above; pam_end's second argument is the last status.
    let end = unsafe { symbol::<HandleFlagsFn>(&lib, b"pam_end\0") }?;
    // SAFETY: as above.
    let strerror = unsafe { symbol::<StrerrorFn>(&lib, b"pam_strerror\0") }?;
    // SAFETY: as above.
    let set_item = unsafe { symbol::<SetItemFn>(&lib, b"pam_set_item\0") }?;
    Ok(Lib {
        start,
        authenticate,
        acct_mgmt,
        end,
        strerror,
        set_item,
        _lib: lib,
    })
}

/// Resolves `name` in `lib` as a `T`.
///
/// # Safety
/// `T` must be the exact type of the symbol, and the value must not be used
/// after `lib` is dropped.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller guarantees `T` is the symbol's type.
    let sym = unsafe { lib.get::<T>(name) }.map_err(|e| e.to_string())?;
    Ok(*sym)
}

/// The password as a NUL-terminated C string, wiped when dropped.
struct SecretCStr(Zeroizing<Vec<u8>>);

impl SecretCStr {
    /// `None` if the password holds a NUL byte, which no C password can.
    fn new(s: &str) -> Option<Self> {
        if s.as_bytes().contains(&0) {
            return None;
        }
        let mut v = Zeroizing::new(Vec::with_capacity(s.len() + 1));
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        Some(Self(v))
    }

    fn as_ptr(&self) -> *const c_char {
        self.0.as_ptr().cast()
    }
}

/// What the conversation function answers with, passed as `appdata_ptr`.
struct ConvData {
    /// NUL-terminated; outlives the PAM transaction.
    password: *const c_char,
}

/// The conversation function: answers every prompt with the password and
/// ignores informational messages (there is no one to show them to).
///
/// A panic must not unwind into C; nothing below should panic, and if
/// something does the conversation fails instead.
unsafe extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libpam calls us with the arguments of a conversation
        // function, and `appdata_ptr` is the `ConvData` we passed to
        // pam_start, alive until pam_end.
        unsafe { converse_inner(num_msg, msg, resp, appdata_ptr) }
    }))
    .unwrap_or(PAM_CONV_ERR)
}

/// # Safety
/// `msg` must point to `num_msg` pointers to valid `pam_message`s, `resp`
/// must be writable, and `appdata_ptr` must point to a live `ConvData`.
/// Null pointers and a bad count are refused, not trusted.
unsafe fn converse_inner(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    if !(1..=PAM_MAX_NUM_MSG).contains(&num_msg)
        || msg.is_null()
        || resp.is_null()
        || appdata_ptr.is_null()
    {
        return PAM_CONV_ERR;
    }
    let n = usize::try_from(num_msg).unwrap_or(0);
    // SAFETY: appdata_ptr is our ConvData (checked non-null above), which
    // outlives the transaction.
    let data = unsafe { &*appdata_ptr.cast::<ConvData>() };
    // calloc, not Rust's allocator: PAM releases the array with free(), and
    // zeroed memory means every `resp` starts as NULL.
    // SAFETY: calloc has no preconditions; the result is checked for NULL.
    let replies =
        unsafe { libc::calloc(n, std::mem::size_of::<PamResponse>()) }.cast::<PamResponse>();
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    for i in 0..n {
        // SAFETY: `msg` holds `n` pointers (the caller's contract; n <= 32).
        let m = unsafe { *msg.add(i) };
        if m.is_null() {
            // SAFETY: `replies` is our calloc'd array of `n` entries.
            unsafe { free_replies(replies, n) };
            return PAM_CONV_ERR;
        }
        // SAFETY: `m` is a non-null pointer to a pam_message from libpam.
        let style = unsafe { (*m).msg_style };
        match style {
            PAM_PROMPT_ECHO_OFF | PAM_PROMPT_ECHO_ON => {
                // strdup, not CString: PAM frees the answer with free().
                // SAFETY: `data.password` is a NUL-terminated string alive
                // for the whole transaction.
                let answer = unsafe { libc::strdup(data.password) };
                if answer.is_null() {
                    // SAFETY: as above.
                    unsafe { free_replies(replies, n) };
                    return PAM_BUF_ERR;
                }
                // SAFETY: i < n, inside the calloc'd array.
                unsafe { (*replies.add(i)).resp = answer };
            }
            // Nothing to show them to; the reply stays NULL as PAM expects.
            PAM_ERROR_MSG | PAM_TEXT_INFO => {}
            // Binary prompts, radio buttons: nothing we can answer.
            _ => {
                // SAFETY: as above.
                unsafe { free_replies(replies, n) };
                return PAM_CONV_ERR;
            }
        }
    }
    // SAFETY: `resp` is non-null and writable (the caller's contract); PAM
    // now owns the array and the strings in it.
    unsafe { *resp = replies };
    PAM_SUCCESS
}

/// Wipes and frees the answers of a conversation that failed, then the
/// array: PAM only takes ownership on success.
///
/// # Safety
/// `replies` must be a calloc'd array of `n` responses whose `resp` fields
/// are NULL or strings from `strdup`, and must not be used afterwards.
unsafe fn free_replies(replies: *mut PamResponse, n: usize) {
    for i in 0..n {
        // SAFETY: i < n, inside the array.
        let r = unsafe { (*replies.add(i)).resp };
        if !r.is_null() {
            // SAFETY: `r` is a NUL-terminated string from strdup, owned by
            // us; it holds the password, so it is wiped before free.
            unsafe {
                libc::explicit_bzero(r.cast(), libc::strlen(r));
                libc::free(r.cast());
            }
        }
    }
    // SAFETY: the array came from calloc and is freed once.
    unsafe { libc::free(replies.cast()) };
}

/// The failure delay PAM modules ask for (`pam_fail_delay`, ~2 s in
/// `pam_unix`) is not slept on the calling thread: the caller serves its own
/// delay after a failure without holding a thread or anything else other
/// logins need (see `dropvault_core::guard`).
unsafe extern "C" fn no_delay(_retval: c_int, _usec_delay: u32, _appdata_ptr: *mut c_void) {}

/// One PAM transaction; `pam_end` runs on every path out.
struct Transaction {
    lib: &'static Lib,
    handle: *mut PamHandle,
    /// The last PAM status, which pam_end passes on to the modules.
    status: c_int,
}

impl Transaction {
    /// Records `rc` as the transaction's status and returns it.
    fn record(&mut self, rc: c_int) -> c_int {
        self.status = rc;
        rc
    }

    fn strerror(&self, rc: c_int) -> String {
        strerror(self.lib, self.handle, rc)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // SAFETY: `handle` came from a successful pam_start and is ended
        // exactly once, here. Its failure cannot be acted on.
        let _ = unsafe { (self.lib.end)(self.handle, self.status) };
    }
}

fn strerror(lib: &Lib, handle: *mut PamHandle, rc: c_int) -> String {
    // SAFETY: pam_strerror takes any code and a handle that is live or NULL
    // (Linux-PAM ignores it), and returns a static string or NULL.
    let text = unsafe { (lib.strerror)(handle, rc) };
    if text.is_null() {
        return format!("PAM error {rc}");
    }
    // SAFETY: a non-null pam_strerror result is a NUL-terminated static
    // string.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// Authenticates `user` with `password` through the PAM service `service`
/// (the file `/etc/pam.d/<service>`), then checks that the account may log
/// in now (`pam_acct_mgmt`). Opens no session and sets no credentials.
///
/// Blocks while modules work (reading files, asking a directory); the
/// failure delay modules such as `pam_unix` request is left to the caller
/// (see [`no_delay`]). Checking another user's password with `pam_unix` needs root (or
/// read access to `/etc/shadow`).
pub fn authenticate(service: &str, user: &str, password: &str) -> Result<(), PamError> {
    let lib = lib()?;
    let service = CString::new(service)
        .map_err(|_| PamError::Other(PAM_SERVICE_ERR, "service name contains NUL".into()))?;
    // A NUL byte cannot be part of a system user name or password, so such
    // credentials are simply wrong.
    let user = CString::new(user).map_err(|_| PamError::AuthFailed)?;
    let password = SecretCStr::new(password).ok_or(PamError::AuthFailed)?;
    let data = ConvData {
        password: password.as_ptr(),
    };
    let conv = PamConv {
        conv: Some(converse),
        appdata_ptr: ptr::from_ref(&data).cast_mut().cast(),
    };
    let mut handle: *mut PamHandle = ptr::null_mut();
    // SAFETY: the strings are NUL-terminated and live across the call;
    // `conv` and `data` (and so the password) outlive the transaction, which
    // ends when `tx` drops below, before them.
    let rc = unsafe { (lib.start)(service.as_ptr(), user.as_ptr(), &conv, &mut handle) };
    if rc != PAM_SUCCESS || handle.is_null() {
        return Err(PamError::Other(rc, strerror(lib, handle, rc)));
    }
    let mut tx = Transaction {
        lib,
        handle,
        status: PAM_SUCCESS,
    };
    let delay: DelayFn = no_delay;
    // SAFETY: `handle` is live; for PAM_FAIL_DELAY the item is a function
    // pointer of the `DelayFn` prototype, which `no_delay` has, and it lives
    // forever. Linux-PAM then calls it instead of sleeping.
    let rc = unsafe { (lib.set_item)(handle, PAM_FAIL_DELAY, delay as *const c_void) };
    if rc != PAM_SUCCESS {
        return Err(PamError::Other(rc, tx.strerror(rc)));
    }

    // SAFETY: `handle` is live until `tx` drops.
    let rc =
        tx.record(unsafe { (lib.authenticate)(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK) });
    match rc {
        PAM_SUCCESS => {}
        PAM_AUTH_ERR | PAM_USER_UNKNOWN | PAM_MAXTRIES => return Err(PamError::AuthFailed),
        _ => return Err(PamError::Other(rc, tx.strerror(rc))),
    }

    // SAFETY: as above.
    let rc = tx.record(unsafe { (lib.acct_mgmt)(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK) });
    match rc {
        PAM_SUCCESS => Ok(()),
        PAM_ACCT_EXPIRED | PAM_NEW_AUTHTOK_REQD | PAM_PERM_DENIED | PAM_AUTH_ERR
        | PAM_USER_UNKNOWN => Err(PamError::AccountRefused(tx.strerror(rc))),
        _ => Err(PamError::Other(rc, tx.strerror(rc))),
    }
}

/// The numeric user id of the system account `user` (through NSS, as
/// `getpwnam_r`: /etc/passwd, LDAP, ...), or `None` if there is no such
/// account. A lookup that fails is an error, not `None`, so a caller that
/// refuses uid 0 can fail closed.
pub fn uid_of(user: &str) -> io::Result<Option<u32>> {
    let Ok(name) = CString::new(user) else {
        return Ok(None);
    };
    let mut len = 1024;
    loop {
        let mut buf: Vec<c_char> = vec![0; len];
        let mut pwd = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `name` is
        // NUL-terminated, `pwd` is writable space for a passwd, `buf` is
        // `buf.len()` writable bytes and `result` is writable. The entry's
        // strings point into `buf`, which we do not read.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            // SAFETY: on success `result` points to `pwd`, now filled in.
            0 => return Ok(Some(unsafe { (*result).pw_uid })),
            libc::ERANGE if len < MAX_PWNAM_BUF => len *= 2,
            // Some NSS backends report "not found" as an error code; POSIX
            // allows these for it.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            _ => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_uid_zero() {
        assert_eq!(uid_of("root").expect("lookup"), Some(0));
    }

    #[test]
    fn unknown_and_impossible_users_have_no_uid() {
        assert_eq!(uid_of("dropvault-no-such-user").expect("lookup"), None);
        assert_eq!(uid_of("nul\0inside").expect("lookup"), None);
        assert_eq!(uid_of("").expect("lookup"), None);
    }

    #[test]
    fn an_unknown_user_does_not_authenticate() {
        match authenticate("dropvault", "dropvault-no-such-user", "secret") {
            Err(PamError::AuthFailed) => {}
            // A machine without libpam says so instead.
            Err(PamError::Unavailable(why)) => assert!(!why.is_empty()),
            other => panic!("unknown user: {other:?}"),
        }
    }

    #[test]
    fn nul_bytes_are_wrong_credentials_not_errors() {
        assert!(matches!(
            authenticate("dropvault", "root", "pass\0word"),
            Err(PamError::AuthFailed | PamError::Unavailable(_))
        ));
        assert!(matches!(
            authenticate("dropvault", "ro\0ot", "password"),
            Err(PamError::AuthFailed | PamError::Unavailable(_))
        ));
    }

    #[test]
    fn the_conversation_answers_prompts_and_refuses_garbage() {
        let password = SecretCStr::new("hunter2").expect("no NUL");
        let data = ConvData {
            password: password.as_ptr(),
        };
        let app: *mut c_void = ptr::from_ref(&data).cast_mut().cast();
        let prompt = PamMessage {
            msg_style: PAM_PROMPT_ECHO_OFF,
            msg: c"Password: ".as_ptr(),
        };
        let info = PamMessage {
            msg_style: PAM_TEXT_INFO,
            msg: c"hello".as_ptr(),
        };
        let mut msgs = [ptr::from_ref(&prompt), ptr::from_ref(&info)];
        let mut resp: *mut PamResponse = ptr::null_mut();
        // SAFETY: two valid messages, a writable `resp`, our ConvData.
        let rc = unsafe { converse(2, msgs.as_mut_ptr(), &mut resp, app) };
        assert_eq!(rc, PAM_SUCCESS);
        assert!(!resp.is_null());
        // SAFETY: on success `resp` is a calloc'd array of two responses.
        unsafe {
            let first = (*resp).resp;
            assert_eq!(CStr::from_ptr(first).to_str(), Ok("hunter2"));
            assert!((*resp.add(1)).resp.is_null());
            free_replies(resp, 2);
        }

        let binary = PamMessage {
            msg_style: 7,
            msg: ptr::null(),
        };
        let mut msgs = [ptr::from_ref(&prompt), ptr::from_ref(&binary)];
        let mut resp: *mut PamResponse = ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { converse(2, msgs.as_mut_ptr(), &mut resp, app) };
        assert_eq!(rc, PAM_CONV_ERR);
        assert!(resp.is_null(), "nothing handed over on failure");
        // SAFETY: a zero or oversized count is refused before any pointer is read.
        let rc = unsafe { converse(0, msgs.as_mut_ptr(), &mut resp, app) };
        assert_eq!(rc, PAM_CONV_ERR);
        // SAFETY: as above.
        let rc = unsafe { converse(1000, msgs.as_mut_ptr(), &mut resp, app) };
        assert_eq!(rc, PAM_CONV_ERR);
        // SAFETY: null message array is refused.
        let rc = unsafe { converse(1, ptr::null_mut(), &mut resp, app) };
        assert_eq!(rc, PAM_CONV_ERR);
    }
}
