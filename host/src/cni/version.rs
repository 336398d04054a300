//! CNI versions this host speaks.

use crate::error::{Error, Result};

/// Every version a configuration may ask for; results are rendered in the
/// layout of the one asked for.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version.
pub const LATEST: &str = "1.1.0";

fn triple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// Fails with code 1 unless `v` is supported.
pub fn check(v: &str) -> Result<()> {
    if SUPPORTED.contains(&v) {
        Ok(())
    } else {
        Err(Error::version(format!(
            "cniVersion {v:?} is not supported (supported: {})",
            SUPPORTED.join(", ")
        )))
    }
}

/// True when `v` is `min` or newer. Unparseable versions are never newer.
pub fn at_least(v: &str, min: &str) -> bool {
    match (triple(v), triple(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_versions() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("x", "0.1.0"));
        assert!(check("0.3.1").is_ok());
        assert_eq!(check("0.2.0").unwrap_err().code, 1);
    }
}
