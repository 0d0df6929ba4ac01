//! `user`, `group` and `extra_groups` resolved when the config loads, as
//! the credentials a child gets: the group database is read here, never
//! after fork. Setting them needs root.

use std::ffi::CString;

use super::parse::{Checker, Value};
use super::{Credentials, ErrorKind};

impl Checker<'_> {
    /// `extra_groups`: names resolved now (the group database is never
    /// read after fork); setgroups needs root, as user and group do.
    pub(super) fn extra_groups(&mut self, v: &Value<'_>) -> Vec<u32> {
        let names = self.string_list("extra_groups", v).unwrap_or_default();
        if !self.host.is_root {
            self.at(
                v.span(),
                ErrorKind::NotRoot {
                    key: "extra_groups",
                },
            );
            return Vec::new();
        }
        let mut gids = Vec::with_capacity(names.len());
        for (name, span) in names {
            match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => gids.push(g.gid.as_raw()),
                _ => self.at(
                    span,
                    ErrorKind::Invalid {
                        key: "extra_groups",
                        reason: format!("no such group \"{name}\""),
                    },
                ),
            }
        }
        gids
    }

    /// `user` and `group` (each its value and, when a string, the name)
    /// resolved to ids and the user's groups.
    pub(super) fn credentials(
        &mut self,
        user: Option<(&Value<'_>, Option<&str>)>,
        group: Option<(&Value<'_>, Option<&str>)>,
    ) -> Option<Credentials> {
        let (user_v, user) = (user.map(|u| u.0), user.and_then(|u| u.1));
        let (group_v, group) = (group.map(|g| g.0), group.and_then(|g| g.1));
        if user.is_none() && group.is_none() {
            return None;
        }
        if !self.host.is_root {
            for (key, v) in [("user", user_v), ("group", group_v)] {
                if let Some(v) = v {
                    self.at(v.span(), ErrorKind::NotRoot { key });
                }
            }
            return None;
        }
        let mut failed = false;
        let user_entry = user.and_then(|name| match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Some(u),
            _ => {
                self.at(user_v?.span(), ErrorKind::UnknownUser(name.to_string()));
                failed = true;
                None
            }
        });
        let group_gid = group.and_then(|name| match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            _ => {
                self.at(group_v?.span(), ErrorKind::UnknownGroup(name.to_string()));
                failed = true;
                None
            }
        });
        if failed {
            return None;
        }
        match user_entry {
            Some(u) => {
                let gid = group_gid.unwrap_or(u.gid.as_raw());
                // The group database is read here, never after fork.
                let mut groups: Vec<u32> = CString::new(u.name.clone())
                    .ok()
                    .and_then(|c| {
                        nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid)).ok()
                    })
                    .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_else(|| vec![gid]);
                if !groups.contains(&gid) {
                    groups.push(gid);
                }
                Some(Credentials {
                    uid: Some(u.uid.as_raw()),
                    gid,
                    groups,
                })
            }
            None => group_gid.map(|gid| Credentials {
                uid: None,
                gid,
                groups: vec![gid],
            }),
        }
    }
}

/// `extra_groups` added to the child's groups: after the user's (or only
/// the primary group, with supplementary_groups = false). A service
/// without user or group keeps summond's uid and gid, and its groups are
/// summond's own (or its gid alone) with the extra ones after them.
pub(super) fn with_extra_groups(
    credentials: Option<Credentials>,
    extra: &[u32],
    supplementary_groups: bool,
) -> Option<Credentials> {
    if extra.is_empty() {
        return credentials;
    }
    let mut c = credentials.unwrap_or_else(|| {
        let gid = nix::unistd::getegid().as_raw();
        let groups = match supplementary_groups {
            true => nix::unistd::getgroups()
                .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            false => Vec::new(),
        };
        Credentials {
            uid: None,
            gid,
            groups,
        }
    });
    if !c.groups.contains(&c.gid) {
        c.groups.insert(0, c.gid);
    }
    for g in extra {
        if !c.groups.contains(g) {
            c.groups.push(*g);
        }
    }
    Some(c)
}
