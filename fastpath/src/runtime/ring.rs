//! A worker's io_uring runtime: the ring set up for the kernel's way of
//! running completion work that the configuration asks for.

/// A worker's runtime on io_uring, with timers.
pub type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// The worker's ring, set up for the task-work mode asked for; "auto" takes
/// the first of defer, coop and signal that the kernel accepts.
///
/// How the kernel runs completion work (a socket became readable: finish
/// the poll and post its completion) matters for small messages. By
/// default it interrupts the worker at once for each one; measured on the
/// bench's keep-alive HTTP cell (2 vCPUs, `totoro-bench --metrics http`),
/// deferring that work to the moment the worker waits for completions ran
/// 1.3–1.4× the requests per second of the default, with a lower p99 RTT
/// and less CPU per GB (bench/RESULTS.md, "task work").
pub fn uring_runtime(mode: &str) -> std::io::Result<(UringRuntime, &'static str)> {
    // The config allows only these names and "auto".
    let modes = ["defer", "coop", "signal"]
        .into_iter()
        .filter(|m| mode == "auto" || mode == *m);
    let mut last = None;
    for m in modes {
        let mut ring = io_uring::IoUring::builder();
        match m {
            // Deferred task work needs a ring that only its creating
            // thread submits to: a worker's ring is that by construction.
            "defer" => {
                ring.setup_single_issuer().setup_defer_taskrun();
            }
            "coop" => {
                ring.setup_coop_taskrun().setup_taskrun_flag();
            }
            _ => {}
        }
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .uring_builder(ring)
            .build()
        {
            Ok(rt) => return Ok((rt, m)),
            Err(e) => {
                tracing::debug!(task_work = m, error = %e, "ring setup refused");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no ring setup tried")))
}
