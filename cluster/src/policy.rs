//! Login policies: which existing sessions of a user a new session replaces. The rule is applied by the
//! server's local registry and, across nodes, inside the session directory's Lua scripts; both follow
//! [`replaces`] (the scripts are tested against it).

use std::str::FromStr;

/// How many sessions a user may have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoginPolicy {
    /// Any number; a new session replaces only one with the same device id.
    #[default]
    All,
    /// At most one session per (user, device class).
    OnePerClass,
    /// One session per user.
    Single,
}

impl LoginPolicy {
    /// The name used in configuration and passed to the scripts.
    pub fn name(self) -> &'static str {
        match self {
            LoginPolicy::All => "all",
            LoginPolicy::OnePerClass => "one-per-class",
            LoginPolicy::Single => "single",
        }
    }
}

impl FromStr for LoginPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(LoginPolicy::All),
            "one-per-class" => Ok(LoginPolicy::OnePerClass),
            "single" => Ok(LoginPolicy::Single),
            _ => Err("expected all, one-per-class or single".into()),
        }
    }
}

/// Whether a new session `(device, class)` replaces an existing one of the same user under `policy`.
/// The same device id always replaces: a device reconnecting must not leave a ghost session behind.
pub fn replaces(policy: LoginPolicy, new: (&str, &str), old: (&str, &str)) -> bool {
    new.0 == old.0
        || match policy {
            LoginPolicy::All => false,
            LoginPolicy::OnePerClass => new.1 == old.1,
            LoginPolicy::Single => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_by_name() {
        for p in [
            LoginPolicy::All,
            LoginPolicy::OnePerClass,
            LoginPolicy::Single,
        ] {
            assert_eq!(p.name().parse::<LoginPolicy>().unwrap(), p);
        }
        assert!("some".parse::<LoginPolicy>().is_err());
    }

    #[test]
    fn login_policies() {
        use LoginPolicy::*;
        assert!(replaces(All, ("phone", "mobile"), ("phone", "mobile")));
        assert!(!replaces(All, ("phone", "mobile"), ("laptop", "desktop")));
        assert!(!replaces(All, ("phone2", "mobile"), ("phone", "mobile")));
        assert!(replaces(
            OnePerClass,
            ("phone2", "mobile"),
            ("phone", "mobile")
        ));
        assert!(!replaces(
            OnePerClass,
            ("phone2", "mobile"),
            ("laptop", "desktop")
        ));
        assert!(replaces(
            Single,
            ("phone2", "mobile"),
            ("laptop", "desktop")
        ));
    }
}
