//! Who asks (contract §8.1): a caller's name and the scopes it holds, and the scope each
//! command needs. How a caller is recognised (a bearer token, the broker-validated AMQP user) is
//! the business of `crate::callers` and the transports; here is only what a caller may do.

use std::fmt;

use super::Error;

/// One permission a caller may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Get and list, without the sealed fields.
    SessionsRead,
    /// The sealed fields (`auth_code`, `access_token`, `refresh_token`, `user_email`) in any
    /// answer.
    SecretsRead,
    /// Create sessions.
    SessionsCreate,
    /// Update sessions.
    SessionsUpdate,
    /// Delete one session, or all of a user's.
    SessionsDelete,
}

impl Scope {
    /// Every scope, in the order the contract lists them.
    pub const ALL: [Scope; 5] = [
        Scope::SessionsRead,
        Scope::SecretsRead,
        Scope::SessionsCreate,
        Scope::SessionsUpdate,
        Scope::SessionsDelete,
    ];

    /// The scope as written in the callers file and in errors, e.g. `sessions:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionsRead => "sessions:read",
            Self::SecretsRead => "secrets:read",
            Self::SessionsCreate => "sessions:create",
            Self::SessionsUpdate => "sessions:update",
            Self::SessionsDelete => "sessions:delete",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (`*`).
    pub fn all() -> Self {
        Self(Scope::ALL.iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    /// Parses the scopes of a callers file entry: each one of [`Scope::ALL`]'s names, or `*`.
    /// The error names the scope that is not one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0;
        for name in names {
            if name == "*" {
                bits |= Self::all().0;
                continue;
            }
            let scope = Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown scope {} (known: *, {})",
                        super::shown_name(name),
                        Scope::ALL.map(Scope::as_str).join(", ")
                    )
                })?;
            bits |= scope.bit();
        }
        Ok(Self(bits))
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Scope::ALL.into_iter().filter(|s| self.contains(*s)))
            .finish()
    }
}

/// A caller's name: 1–64 characters of `[A-Za-z0-9_.-]`, so that it can be logged as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerName(String);

impl CallerName {
    /// Checks the rules; the error says which.
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err("must be 1 to 64 characters of A-Z, a-z, 0-9, _, . and -".into())
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a command is applied for: a configured caller, or anyone, when no caller is configured
/// at all (protected mode, contract §8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    name: Option<CallerName>,
    scopes: Scopes,
}

impl Caller {
    /// A configured caller.
    pub fn new(name: CallerName, scopes: Scopes) -> Self {
        Self {
            name: Some(name),
            scopes,
        }
    }

    /// Anyone: the caller of every request when no caller is configured; it may do everything.
    pub fn anyone() -> Self {
        Self {
            name: None,
            scopes: Scopes::all(),
        }
    }

    /// Its name; `None` for [`Caller::anyone`].
    pub fn name(&self) -> Option<&CallerName> {
        self.name.as_ref()
    }

    /// Its name for logs: `-` for [`Caller::anyone`].
    pub fn shown(&self) -> &str {
        self.name.as_ref().map_or("-", CallerName::as_str)
    }

    /// Its scopes.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// `Ok` when it holds `scope`, else `permission_denied` naming the scope.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(scope))
        }
    }

    /// Whether answers to it may carry the sealed fields.
    pub fn reads_secrets(&self) -> bool {
        self.scopes.contains(Scope::SecretsRead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_each_name_and_the_star() {
        let scopes = Scopes::parse(["sessions:read", "sessions:delete"]).unwrap();
        assert!(scopes.contains(Scope::SessionsRead));
        assert!(scopes.contains(Scope::SessionsDelete));
        assert!(!scopes.contains(Scope::SecretsRead));
        assert_eq!(Scopes::parse(["*"]).unwrap(), Scopes::all());
        for scope in Scope::ALL {
            assert!(Scopes::all().contains(scope));
            assert_eq!(Scopes::parse([scope.as_str()]).unwrap().0, scope.bit());
        }
        assert_eq!(Scopes::parse([]).unwrap(), Scopes::default());
        let error = Scopes::parse(["sessions:read", "sessions:write"]).unwrap_err();
        assert!(error.contains("sessions:write"), "{error}");
    }

    #[test]
    fn caller_names_are_short_and_plain() {
        assert!(CallerName::parse("bff.prod-1_a").is_ok());
        for bad in ["", "has space", "é", &"a".repeat(65), "a\nb"] {
            assert!(CallerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_caller_without_a_scope_is_denied_naming_it() {
        let reader = Caller::new(
            CallerName::parse("gateway").unwrap(),
            Scopes::parse(["sessions:read"]).unwrap(),
        );
        assert!(reader.require(Scope::SessionsRead).is_ok());
        let denied = reader.require(Scope::SessionsDelete).unwrap_err();
        assert!(denied.to_string().contains("sessions:delete"), "{denied}");
        assert!(!reader.reads_secrets());
        assert!(Caller::anyone().reads_secrets());
        assert_eq!(Caller::anyone().shown(), "-");
    }
}
