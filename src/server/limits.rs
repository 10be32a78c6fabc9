//! The bounds on what one castellan holds for its clients — connections,
//! handshakes, HTTP/2 windows, message sizes — and raising the descriptor
//! limit so the connection bound, not the kernel, is what refuses.

use crate::csr::MAX_CSR_PEM_BYTES;

/// Handshakes in progress at once; more wait in the listen backlog.
pub(super) const MAX_HANDSHAKES: usize = 256;
/// Descriptors kept for castellan's own use (Vault, Kubernetes, files,
/// the metrics listener) below the soft limit.
const RESERVED_DESCRIPTORS: u64 = 128;
/// A request is one CSR (≤ 64 KiB of PEM) and a few fields.
pub(super) const MAX_MESSAGE: usize = MAX_CSR_PEM_BYTES + 16 * 1024;
/// Per stream, enough for the largest request in one window; per
/// connection, a bound on what one client can make castellan buffer.
pub(super) const STREAM_WINDOW: u32 = 128 * 1024;
pub(super) const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Headers carry a bearer token (a few KiB) and little else.
pub(super) const MAX_HEADER_LIST: u32 = 32 * 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as Go servers do) and
/// returns how many connections castellan serves: `configured`, or fewer
/// when the descriptors allow fewer.
pub(super) fn connections(configured: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE");
            return configured;
        }
    };
    let usable = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if usable < configured {
        tracing::warn!(
            configured,
            serving = usable,
            nofile = soft,
            "server.max_connections is above what the descriptor limit allows; serving fewer \
             (raise the hard RLIMIT_NOFILE, e.g. the container runtime's ulimit)"
        );
        return usable.max(1);
    }
    configured
}
