//! What a service runs, in the form the child uses it: `ExecImage` (the
//! program, argv, the base environment, credentials and the sandbox as C
//! strings and libc values), prepared once per service (at its first
//! child), so a spawn only adds the per-child part; `EnvPool`, the base
//! environments shared by the services whose environment comes out the
//! same. Everything here allocates, and so runs before `clone`.

use rustc_hash::FxHashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::rc::Rc;

use nix::libc::{self, c_char, c_int};

use crate::config::{Credentials, RlimitKind, Sandbox, ServiceSpec};
use crate::env::is_reserved_env;

/// What a service runs, prepared when the config loads so a spawn only
/// adds the per-child part.
pub struct ExecImage {
    pub(super) program: CString,
    _argv: Vec<CString>,
    /// NULL-terminated pointers into `_argv` (heap data: stable).
    pub(super) argv_ptrs: Vec<*const c_char>,
    /// Shared by every service whose environment comes out the same (most
    /// of them: the inherited one), not one copy per service.
    pub(super) base_env: Rc<[CString]>,
    pub(super) credentials: Option<Credentials>,
    /// For the `setgroups` call: gid_t is u32 on Linux.
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) sandbox: SandboxImage,
}

/// `Sandbox` in the form the child applies it: C strings and libc values.
pub(super) struct SandboxImage {
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    pub(super) umask: Option<libc::mode_t>,
    pub(super) nice: Option<c_int>,
    pub(super) chroot: Option<CString>,
    pub(super) working_directory: CString,
    pub(super) no_new_privs: bool,
}

fn rlimit_resource(kind: RlimitKind) -> libc::__rlimit_resource_t {
    match kind {
        RlimitKind::Nofile => libc::RLIMIT_NOFILE,
        RlimitKind::Nproc => libc::RLIMIT_NPROC,
        RlimitKind::As => libc::RLIMIT_AS,
        RlimitKind::Cpu => libc::RLIMIT_CPU,
        RlimitKind::Core => libc::RLIMIT_CORE,
        RlimitKind::Fsize => libc::RLIMIT_FSIZE,
        RlimitKind::Data => libc::RLIMIT_DATA,
        RlimitKind::Stack => libc::RLIMIT_STACK,
        RlimitKind::Memlock => libc::RLIMIT_MEMLOCK,
    }
}

impl SandboxImage {
    fn new(sb: &Sandbox) -> SandboxImage {
        let cpath = |p: &std::path::Path| {
            CString::new(p.as_os_str().as_bytes()).expect("config paths contain no NUL")
        };
        SandboxImage {
            rlimits: sb
                .rlimits
                .iter()
                .map(|r| {
                    let v = r.value.unwrap_or(libc::RLIM_INFINITY);
                    (
                        rlimit_resource(r.resource),
                        libc::rlimit {
                            rlim_cur: v,
                            rlim_max: v,
                        },
                    )
                })
                .collect(),
            umask: sb.umask.map(|m| m as libc::mode_t),
            nice: sb.nice,
            chroot: sb.chroot.as_deref().map(cpath),
            working_directory: cpath(&sb.working_directory),
            no_new_privs: sb.no_new_privs,
        }
    }
}

impl ExecImage {
    pub fn new(spec: &ServiceSpec, pool: &mut EnvPool) -> ExecImage {
        let program = cstring(spec.program.as_os_str().as_bytes());
        let argv: Vec<CString> = spec.exec.iter().map(|a| cstring(a.as_bytes())).collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(ptr::null());
        let base_env = pool.base_env(spec);
        let groups = spec
            .credentials
            .as_ref()
            .map(|c| c.groups.clone())
            .unwrap_or_default();
        ExecImage {
            program,
            _argv: argv,
            argv_ptrs,
            base_env,
            credentials: spec.credentials.clone(),
            groups,
            sandbox: SandboxImage::new(&spec.sandbox),
        }
    }
}

/// Config validation and the OS rule out NULs in all of these.
fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("config and environ strings contain no NUL")
}

/// What a service's base environment depends on: clear_env, passenv, env.
type EnvKey = (bool, Vec<String>, Vec<(String, String)>);

/// The base environments of the services, built once for each distinct
/// (clear_env, passenv, env): most services share one.
pub struct EnvPool {
    inherited: Vec<(OsString, OsString)>,
    built: FxHashMap<EnvKey, Rc<[CString]>>,
}

impl EnvPool {
    /// `inherited` is summond's environment at startup.
    pub fn new(inherited: Vec<(OsString, OsString)>) -> EnvPool {
        EnvPool {
            inherited,
            built: FxHashMap::default(),
        }
    }

    /// Forget the environments no image holds any more (after a reload).
    pub fn prune(&mut self) {
        self.built.retain(|_, env| Rc::strong_count(env) > 1);
    }

    /// The inherited environment without activation and per-connection
    /// variables, then `env` (a service's `env` overrides an inherited
    /// variable of the same name); with clear_env only PATH and the names
    /// in `passenv` pass through.
    fn base_env(&mut self, spec: &ServiceSpec) -> Rc<[CString]> {
        let key = (spec.clear_env, spec.passenv.clone(), spec.env.clone());
        if let Some(env) = self.built.get(&key) {
            return env.clone();
        }
        let overridden = |name: &OsStr| {
            name.to_str().is_some_and(is_reserved_env)
                || spec.env.iter().any(|(k, _)| OsStr::new(k) == name)
        };
        let kept = |name: &OsStr| {
            !spec.clear_env || name == "PATH" || spec.passenv.iter().any(|p| OsStr::new(p) == name)
        };
        let mut env: Vec<CString> = self
            .inherited
            .iter()
            .filter(|(k, _)| kept(k) && !overridden(k))
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect();
        env.extend(
            spec.env
                .iter()
                .map(|(k, v)| cstring(format!("{k}={v}").as_bytes())),
        );
        let env: Rc<[CString]> = env.into();
        self.built.insert(key, env.clone());
        env
    }
}
