//! The machine load a worker reports in its heartbeat.

use std::path::PathBuf;
use std::sync::Mutex;

use sluice_domain::heartbeat::HostLoad;
use sysinfo::System;

/// Samples CPU, memory, load average and free disk on demand.
///
/// CPU use is measured between two samples, so one sampler is kept for the
/// worker's life and sampled once per heartbeat: the figure covers the
/// heartbeat interval.
pub(crate) struct HostSampler {
    /// `None` where sysinfo cannot read the system; the heartbeat then
    /// carries zeros rather than the worker refusing to start.
    system: Mutex<Option<System>>,
    /// Free space is reported for this directory's file system, where
    /// tasks write their files.
    work_dir: PathBuf,
}

impl HostSampler {
    pub(crate) fn new(work_dir: PathBuf) -> Self {
        let system = match System::new() {
            Ok(mut system) => {
                system.refresh_cpu_usage();
                Some(system)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read system statistics; heartbeats will report zero load");
                None
            }
        };
        HostSampler {
            system: Mutex::new(system),
            work_dir,
        }
    }

    pub(crate) fn sample(&self) -> HostLoad {
        let mut load = HostLoad::default();
        if let Some(system) = self
            .system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            system.refresh_cpu_usage();
            system.refresh_memory();
            load.cpu_percent = system.global_cpu_usage();
            load.memory_used_bytes = system.used_memory();
            load.memory_total_bytes = system.total_memory();
        }
        if let Ok(avg) = System::load_average() {
            load.load_average = [avg.one, avg.five, avg.fifteen];
        }
        if let Ok(stat) = nix::sys::statvfs::statvfs(&self.work_dir) {
            // `blocks_available` is what an unprivileged task can use, the
            // figure that matters when deciding whether a task will fit.
            load.disk_free_bytes = free_bytes(stat.blocks_available(), stat.fragment_size());
        }
        load
    }
}

/// The conversions are no-ops on 64-bit Linux only: the C types are
/// narrower elsewhere.
#[allow(clippy::useless_conversion)]
fn free_bytes(blocks: nix::libc::fsblkcnt_t, block_size: nix::libc::c_ulong) -> u64 {
    u64::from(blocks).saturating_mul(u64::from(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_machine() {
        let dir = std::env::temp_dir();
        let sampler = HostSampler::new(dir);
        let load = sampler.sample();
        assert!(load.memory_total_bytes > 0);
        assert!(load.memory_used_bytes <= load.memory_total_bytes);
        assert!(load.disk_free_bytes > 0);
        assert!(
            (0.0..=100.0).contains(&load.cpu_percent),
            "{}",
            load.cpu_percent
        );
    }
}
