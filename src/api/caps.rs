//! What a model can do (the catalog's facts) and what a request needs of one.

/// What a model can do, as the catalog says; or what a request needs of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const NONE: Self = Self(0);
    /// Function calling (`tools`).
    pub const TOOLS: Self = Self(1);
    /// Image parts in messages.
    pub const VISION: Self = Self(2);
    /// `response_format: {"type": "json_object"}`.
    pub const JSON_MODE: Self = Self(4);
    /// `response_format: {"type": "json_schema"}`.
    pub const JSON_SCHEMA: Self = Self(8);
    /// Continuing a trailing assistant message (information only).
    pub const PREFILL: Self = Self(16);
    /// What a route the catalog says nothing about is assumed to have.
    pub const ALL: Self = Self(31);

    const NAMES: [(&'static str, Capabilities); 5] = [
        ("tools", Self::TOOLS),
        ("vision", Self::VISION),
        ("json-mode", Self::JSON_MODE),
        ("json-schema", Self::JSON_SCHEMA),
        ("prefill", Self::PREFILL),
    ];

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The capabilities in `self` that `have` lacks.
    pub fn missing_from(self, have: Self) -> Self {
        Self(self.0 & !have.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Names, in the catalog's spelling.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, c)| self.contains(*c))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The capability of a name in the catalog's spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let c = Capabilities::TOOLS.union(Capabilities::VISION);
        assert!(c.contains(Capabilities::TOOLS));
        assert!(!c.contains(Capabilities::JSON_MODE));
        assert_eq!(
            Capabilities::ALL.missing_from(c).names(),
            ["json-mode", "json-schema", "prefill"]
        );
        assert!(Capabilities::TOOLS.missing_from(c).is_empty());
        assert_eq!(
            Capabilities::from_name("vision"),
            Some(Capabilities::VISION)
        );
        assert_eq!(Capabilities::from_name("telepathy"), None);
    }
}
