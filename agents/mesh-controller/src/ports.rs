//! Port lists as the proxy and the annotations write them: `25,587,3306-3310`.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// A set of TCP ports, kept as the ranges it was written with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<RangeInclusive<u16>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a port or a port range `a-b` (1-65535, a <= b)")]
pub struct PortSetError(pub String);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ports of both sets (duplicates are harmless to the readers).
    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet { ranges: self.ranges.iter().chain(&other.ranges).cloned().collect() }
    }
}

impl From<u16> for PortSet {
    fn from(port: u16) -> Self {
        PortSet { ranges: vec![port..=port] }
    }
}

impl FromStr for PortSet {
    type Err = PortSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str, item: &str| match p.trim().parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(PortSetError(item.to_owned())),
        };
        let ranges = s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (low, high) = match item.split_once('-') {
                    Some((a, b)) => (port(a, item)?, port(b, item)?),
                    None => (port(item, item)?, port(item, item)?),
                };
                if low > high { Err(PortSetError(item.to_owned())) } else { Ok(low..=high) }
            })
            .collect::<Result<_, _>>()?;
        Ok(PortSet { ranges })
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if r.start() == r.end() {
                write!(f, "{sep}{}", r.start())?;
            } else {
                write!(f, "{sep}{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges_and_prints_them_back() {
        let set: PortSet = " 25, 3306-3310 ,11211".parse().expect("valid");
        assert!(set.contains(25) && set.contains(3308) && set.contains(11211));
        assert!(!set.contains(26) && !set.contains(3311));
        assert_eq!(set.to_string(), "25,3306-3310,11211");
        assert!("".parse::<PortSet>().expect("empty is valid").is_empty());
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["0", "http", "10-5", "1-", "70000", "1-2-3"] {
            assert!(bad.parse::<PortSet>().is_err(), "{bad} accepted");
        }
    }
}
