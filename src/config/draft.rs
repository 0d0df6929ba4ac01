//! A `[[service]]` table as its handlers (service.rs) read it, key by key,
//! and the `ServiceSpec` it makes once every key is known good.

use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::forward::ForwardDraft;
use super::parse::{Seen, Value};
use super::units::Rate;
use super::ProxySpec;
use super::{
    Credentials, Internal, ListenSpec, Pass, RuntimeDirectory, Sandbox, ServiceSpec, SourcePrefix,
    StderrMode, DEFAULT_IDLE_TIMEOUT,
};
use crate::access::{AccessList, Cidr};
use crate::listener::ListenOptions;

/// What the handlers have read so far; each field is its key's value, or
/// the default while the key is absent (or after an error in its value).
pub(super) struct Draft<'v> {
    pub(super) seen: &'v mut Seen,
    /// `chroot` as written, for `exec` (which comes before it): the
    /// program of a chrooted service lives inside the jail.
    pub(super) jail: Option<PathBuf>,
    pub(super) name: Option<(String, Range<usize>)>,
    /// The name for messages about other services ("(unnamed)" without one).
    pub(super) label: Rc<str>,
    pub(super) listen: Vec<ListenSpec>,
    /// argv, the program resolved, and the internal service it names.
    pub(super) exec: Option<(Vec<String>, PathBuf, Option<Internal>)>,
    /// As written; see `accepts`.
    pub(super) accept: Option<bool>,
    pub(super) pass: Pass,
    pub(super) stderr: StderrMode,
    /// The value and, when it is a string, the name.
    pub(super) user: Option<(&'v Value<'v>, Option<&'v str>)>,
    pub(super) group: Option<(&'v Value<'v>, Option<&'v str>)>,
    pub(super) env: Vec<(String, String)>,
    pub(super) max_instances: Option<u32>,
    pub(super) max_per_source: Option<u32>,
    pub(super) access: AccessList,
    pub(super) proxy_protocol: Option<crate::proxy::Version>,
    pub(super) proxy_from: Option<Vec<Cidr>>,
    pub(super) socket: ListenOptions,
    pub(super) clear_env: bool,
    pub(super) passenv: Vec<String>,
    pub(super) sandbox: Sandbox,
    /// Checked once `chroot` is known (`check_working_directory`).
    pub(super) working_directory: Option<&'v Value<'v>>,
    pub(super) supplementary_groups: bool,
    pub(super) extra_groups: Vec<u32>,
    /// The names and the directory they are made under.
    pub(super) runtime_directory: Option<(Vec<String>, PathBuf)>,
    /// None after an error in it.
    pub(super) runtime_directory_mode: Option<u32>,
    pub(super) max_runtime: Option<Duration>,
    pub(super) ready_timeout: Option<Duration>,
    pub(super) instances: Option<u32>,
    pub(super) eager: Option<bool>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) rate: Option<Rate>,
    pub(super) per_source_rate: Option<Rate>,
    pub(super) per_source_prefix: SourcePrefix,
    pub(super) banner: Option<String>,
    pub(super) banner_fail: Option<String>,
    pub(super) disabled: bool,
    pub(super) forward: ForwardDraft,
    pub(super) tls: Option<Box<crate::tls::TlsSpec>>,
}

impl<'v> Draft<'v> {
    pub(super) fn new(seen: &'v mut Seen, jail: Option<PathBuf>) -> Self {
        Draft {
            seen,
            jail,
            name: None,
            label: "(unnamed)".into(),
            listen: Vec::new(),
            exec: None,
            accept: None,
            pass: Pass::Stdio,
            stderr: StderrMode::Inherit,
            user: None,
            group: None,
            env: Vec::new(),
            max_instances: None,
            max_per_source: None,
            access: AccessList::default(),
            proxy_protocol: None,
            proxy_from: None,
            socket: ListenOptions::default(),
            clear_env: false,
            passenv: Vec::new(),
            sandbox: Sandbox::default(),
            working_directory: None,
            supplementary_groups: true,
            extra_groups: Vec::new(),
            runtime_directory: None,
            runtime_directory_mode: Some(RuntimeDirectory::DEFAULT_MODE),
            max_runtime: None,
            ready_timeout: None,
            instances: None,
            eager: None,
            idle_timeout: None,
            rate: None,
            per_source_rate: None,
            per_source_prefix: SourcePrefix::default(),
            banner: None,
            banner_fail: None,
            disabled: false,
            forward: ForwardDraft::default(),
            tls: None,
        }
    }

    /// One child per connection: as written, else inetd's nowait for
    /// stream sockets (datagram sockets can only be handed over whole).
    pub(super) fn accepts(&self) -> bool {
        self.accept
            .unwrap_or_else(|| self.listen.iter().all(|l| l.addr.is_stream()))
    }

    pub(super) fn internal(&self) -> Option<Internal> {
        self.exec.as_ref().and_then(|e| e.2)
    }

    /// The spec, once every key is known good (each one missing or wrong
    /// reported its own error).
    pub(super) fn build(self, credentials: Option<Credentials>) -> Option<ServiceSpec> {
        let accept = self.accepts();
        let internal = self.internal();
        let runtime_directory = match self.runtime_directory {
            Some((names, base)) => Some(RuntimeDirectory {
                base,
                names,
                mode: self.runtime_directory_mode?,
            }),
            None => None,
        };
        let (exec, program, _) = self.exec?;
        Some(ServiceSpec {
            name: self.name?.0,
            listen: self.listen,
            exec,
            program,
            accept,
            pass: self.pass,
            stderr: self.stderr,
            credentials,
            env: self.env,
            max_instances: self.max_instances,
            max_per_source: self.max_per_source,
            access: self.access,
            // Both or neither (`check_proxy`).
            proxy: self
                .proxy_protocol
                .zip(self.proxy_from)
                .map(|(version, from)| ProxySpec { version, from }),
            socket: self.socket,
            internal,
            clear_env: self.clear_env,
            passenv: self.passenv,
            sandbox: self.sandbox,
            max_runtime: self.max_runtime,
            ready_timeout: self.ready_timeout,
            instances: self.instances.unwrap_or(1),
            eager: self.eager.unwrap_or(false),
            idle_timeout: self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            rate: self.rate,
            per_source_rate: self.per_source_rate,
            per_source_prefix: self.per_source_prefix,
            banner: self.banner,
            banner_fail: self.banner_fail,
            disabled: self.disabled,
            runtime_directory,
            forward: self.forward.build(),
            tls: self.tls,
        })
    }
}
