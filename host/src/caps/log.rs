use crate::bindings::cni::plugin::log::{Host, Level};
use crate::state::HostState;

/// How much of the last error message is kept for a trap's details.
const LAST_ERROR_BYTES: usize = 4 << 10;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => {
                tracing::error!(plugin, "{message}");
                let mut kept = message;
                kept.truncate(kept.floor_char_boundary(LAST_ERROR_BYTES));
                self.last_error = Some(kept);
            }
        }
    }
}
