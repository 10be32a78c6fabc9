//! When the request a signature is for must be answered: carried from
//! castellan's handler to the back ends beside the call, so a back end that
//! queues (HSM sessions, a bounded pool) lets a request wait while it can
//! still be answered in time and says "busy" — not "down" — once it cannot.

use std::future::Future;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as the current request's. Not an `async
/// fn`: that would keep `work` twice in its state (the argument and the
/// scope holding it), doubling every request's future.
pub fn scope<F: Future>(deadline: Instant, work: F) -> impl Future<Output = F::Output> {
    DEADLINE.scope(deadline, work)
}

/// The current request's deadline, if one was set.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_the_scope_only() {
        assert_eq!(super::current(), None);
        let d = tokio::time::Instant::now() + Duration::from_secs(3);
        let seen = super::scope(d, async { super::current() }).await;
        assert_eq!(seen, Some(d));
    }
}
