//! One module per WIT capability interface. Each checks the call against the
//! invocation's grants, then asks the kernel (or store, or IPAM delegate).

pub mod addr;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod log;
pub mod netns;
pub mod route;
pub mod store;
pub mod sysctl;

use crate::bindings::cni::plugin::types;

impl types::Host for crate::state::HostState {}
