//! What starting a child takes besides its service's image: the spawner
//! (its clone stack), /dev/null for the fds a child is not given, the
//! inherited environment the images are made of, the RLIMIT_NOFILE
//! children get back, and the fd plan and variables of the last
//! connection, kept to be reused by the next. Knows nothing of `Server`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::libc;

use super::services::ServiceRuntime;
use crate::env::EnvBlock;
use crate::spawn::{ChildSetup, EnvPool, ExecImage, FdMove, SpawnError, Spawned, Spawner};

pub(super) struct Launcher {
    spawner: Spawner,
    devnull: File,
    /// The inherited environment and the base environments made of it.
    envs: EnvPool,
    /// The RLIMIT_NOFILE summond was started with, for its children.
    child_nofile: Option<libc::rlimit>,
    /// The fd plan and variables of the last connection's child, kept to
    /// be reused by the next.
    scratch: (Vec<FdMove>, EnvBlock),
}

impl Launcher {
    /// `fd_base`: where the listeners are kept (see `Spawner::new`).
    pub fn new(
        fd_base: Option<RawFd>,
        child_nofile: Option<libc::rlimit>,
    ) -> Result<Launcher, (&'static str, io::Error)> {
        // std opens files with O_CLOEXEC.
        let devnull = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| ("open /dev/null", e))?;
        let spawner = Spawner::new(fd_base).map_err(|e| ("child stack", e))?;
        Ok(Launcher {
            spawner,
            devnull,
            envs: EnvPool::new(std::env::vars_os().collect()),
            child_nofile,
            scratch: Default::default(),
        })
    }

    /// /dev/null, for the fds a child is not given.
    pub fn devnull(&self) -> RawFd {
        self.devnull.as_raw_fd()
    }

    /// The last connection's fd plan and variables, to be filled for the
    /// next and given back with `put_scratch`: a connection allocates
    /// nothing for them.
    pub fn take_scratch(&mut self) -> (Vec<FdMove>, EnvBlock) {
        std::mem::take(&mut self.scratch)
    }

    pub fn put_scratch(&mut self, scratch: (Vec<FdMove>, EnvBlock)) {
        self.scratch = scratch;
    }

    /// Clone and exec a child of `rt` with `fds` and `env`, its image
    /// made at the first start and kept in the service's runtime.
    pub fn spawn(
        &mut self,
        rt: &mut ServiceRuntime,
        fds: &[FdMove],
        env: &EnvBlock,
        listen_pid: bool,
    ) -> Result<Spawned, SpawnError> {
        let setup = ChildSetup {
            fds,
            env,
            listen_pid,
            nofile: self.child_nofile,
            // A forward backend's tree is stopped whole (forward/tree.rs).
            subreaper: rt.spec.forward.is_some(),
        };
        let envs = &mut self.envs;
        let image = rt
            .image
            .get_or_insert_with(|| Box::new(ExecImage::new(&rt.spec, envs)));
        self.spawner.spawn(image, &setup)
    }

    /// Old images are gone with the old runtimes: so are the
    /// environments only they used.
    pub fn prune_envs(&mut self) {
        self.envs.prune();
    }
}
