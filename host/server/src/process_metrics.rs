//! The process metrics every Prometheus exporter has (`process_*`: memory,
//! CPU time, file descriptors, start time), read from `/proc` at each
//! scrape, under the names dashboards and alerts already expect.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads this process's figures when the registry is encoded.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A figure /proc does not give (a hardened kernel, a sandbox) is
        // left out of the scrape rather than reported as zero.
        let Ok(me) = procfs::process::Process::myself() else { return Ok(()) };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let help = "User and system CPU time the process has used, in seconds";
            encode(&mut encoder, "process_cpu_seconds", help, ConstCounter::new(cpu))?;
            let page = procfs::page_size();
            gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes", stat.rss * page)?;
            gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes", stat.vsize)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let started = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                let help = "When the process started, in seconds since the epoch";
                encode(&mut encoder, "process_start_time_seconds", help, started)?;
            }
        }
        if let Ok(open) = me.fd_count() {
            gauge(&mut encoder, "process_open_fds", "Open file descriptors", open as u64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(&mut encoder, "process_max_fds", "The most file descriptors the process may open", max)?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    encode(encoder, name, help, ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)))
}

fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let encoded = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(encoded)
}
