//! CPython version numbers as PY_VERSION_HEX encodes them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// 0xA alpha, 0xB beta, 0xC candidate, 0xF final
    pub level: u32,
    pub serial: u32,
}

impl Version {
    pub fn from_hex(v: u64) -> Version {
        Version {
            major: ((v >> 24) & 0xff) as u32,
            minor: ((v >> 16) & 0xff) as u32,
            micro: ((v >> 8) & 0xff) as u32,
            level: ((v >> 4) & 0xf) as u32,
            serial: (v & 0xf) as u32,
        }
    }

    /// "3.9.2", "3.15.0a1", "3.12.0rc2" (a trailing "+" is dropped: same layout).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim_end_matches('+');
        let mut it = s.splitn(3, '.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let rest = it.next()?;
        let n = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
        let micro = rest[..n].parse().ok()?;
        let tail = &rest[n..];
        let (level, serial) = if tail.is_empty() {
            (0xF, 0)
        } else if let Some(x) = tail.strip_prefix("rc") {
            (0xC, x.parse().ok()?)
        } else if let Some(x) = tail.strip_prefix('a') {
            (0xA, x.parse().ok()?)
        } else if let Some(x) = tail.strip_prefix('b') {
            (0xB, x.parse().ok()?)
        } else {
            return None;
        };
        Some(Version { major, minor, micro, level, serial })
    }

    pub fn is_final(&self) -> bool {
        self.level == 0xF
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        match self.level {
            0xA => write!(f, "a{}", self.serial),
            0xB => write!(f, "b{}", self.serial),
            0xC => write!(f, "rc{}", self.serial),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Version;
    #[test]
    fn hex_and_text_agree() {
        let v = Version::from_hex(0x030d12f0);
        assert_eq!(v.to_string(), "3.13.18");
        assert_eq!(Version::parse("3.13.18"), Some(v));
        assert_eq!(Version::from_hex(0x030f00a1).to_string(), "3.15.0a1");
        assert_eq!(Version::parse("3.12.0rc2").unwrap().level, 0xC);
        assert!(Version::parse("3.x").is_none());
    }
}
