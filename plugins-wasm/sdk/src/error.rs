//! CNI error codes and constructors.

use crate::CniError;

/// The error codes of the CNI specification.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const DEGRADED: u32 = 51;
    /// First plugin-specific code.
    pub const PLUGIN: u32 = 100;
}

/// Constructors for [`CniError`].
pub struct Error;

#[allow(clippy::new_ret_no_self)]
impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Code 7: the configuration is invalid. Name the key in `msg`.
    pub fn config(msg: impl Into<String>) -> CniError {
        Self::new(code::INVALID_CONFIG, msg)
    }

    /// Code 2: a field has a value this plugin does not support.
    pub fn unsupported(msg: impl Into<String>) -> CniError {
        Self::new(code::UNSUPPORTED_FIELD, msg)
    }

    /// Code 5: an I/O failure (kernel or store).
    pub fn io(msg: impl Into<String>) -> CniError {
        Self::new(code::IO_FAILURE, msg)
    }

    /// Code 100: plugin-specific failure.
    pub fn plugin(msg: impl Into<String>) -> CniError {
        Self::new(code::PLUGIN, msg)
    }

    /// Prefixes the message of an error with what was being done.
    pub fn context(mut err: CniError, what: impl std::fmt::Display) -> CniError {
        err.msg = format!("{what}: {}", err.msg);
        err
    }
}
