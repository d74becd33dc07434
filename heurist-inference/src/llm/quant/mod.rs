//! Quantized matmuls on the CPU, written for the GGUF formats small chat models ship in
//! (Q4_1 weights, Q8_0 embeddings), for [`super::cpu_llama`].
//!
//! candle 0.11 multiplies Q4_1 with a scalar loop and its CPU threads spin while they wait, which
//! left SmolLM2-135M at a third of llama.cpp's speed. Here the weights keep the file's blocks
//! ([`block`]), reordered into panels of 16 rows ([`panel`]), activations are quantized to 8 bits per block of 32 as llama.cpp does
//! ([`activation`]), integer dot products run in SIMD kernels picked at run time ([`kernels`]),
//! and a matmul's rows are split across a pool of threads that sleep when idle ([`matmul`],
//! [`pool`]).

pub(crate) mod activation;
pub(crate) mod block;
pub(crate) mod kernels;
pub(crate) mod matmul;
pub(crate) mod panel;

use std::sync::OnceLock;

/// The thread pool the CPU body runs its forward passes in, built once per process.
///
/// Its own pool rather than rayon's global one, so a forward pass runs *inside* it
/// (`install`): the thread that runs the sequential parts of a layer also takes matmul chunks,
/// and no thread outside the pool waits on a lock between matmuls. The size follows
/// `RAYON_NUM_THREADS`, else the number of CPUs. `None` when the operating system refused the
/// threads.
pub(crate) fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("heurist-cpu-{i}"))
            .build()
            .map_err(|err| tracing::warn!(%err, "cannot start the CPU matmul threads"))
            .ok()
    })
    .as_ref()
}
