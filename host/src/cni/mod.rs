//! The CNI exec contract: environment, configuration, versions and the result
//! layouts of every supported version.

pub mod config;
pub mod env;
pub mod ip;
pub mod result;
pub mod version;

pub use config::NetConf;
pub use env::{Command, Env};
