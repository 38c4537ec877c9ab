//! NVIDIA GPUs through NVML (the `nvml` feature, on by default).
//!
//! nvml-wrapper loads `libnvidia-ml.so.1` with dlopen at run time: the agent
//! never links against it and runs on hosts without an NVIDIA driver, where
//! the GPUs are reported absent with the reason. NVML is initialised once;
//! when that fails the reason is kept and never retried, so a host without
//! a GPU costs nothing per sample and prints nothing.
use crate::metrics::snapshot::GpuReport;

/// Reason reported when the agent was built without the `nvml` feature.
pub const WITHOUT_NVML: &str = "built without NVML support";

/// The GPUs of the host, or why there are none to read.
pub struct Gpus {
    #[cfg(feature = "nvml")]
    nvml: Result<nvml::Reader, String>,
}

impl Gpus {
    /// Loads and initialises NVML (once; the outcome is kept).
    pub fn open() -> Gpus {
        Gpus {
            #[cfg(feature = "nvml")]
            nvml: nvml::Reader::open(),
        }
    }

    /// Each GPU's utilisation and memory now.
    pub fn report(&self) -> GpuReport {
        #[cfg(feature = "nvml")]
        {
            match &self.nvml {
                Ok(reader) => reader.report(),
                Err(reason) => GpuReport::Absent {
                    reason: reason.clone(),
                },
            }
        }
        #[cfg(not(feature = "nvml"))]
        GpuReport::Absent {
            reason: WITHOUT_NVML.to_string(),
        }
    }
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus").finish_non_exhaustive()
    }
}

#[cfg(feature = "nvml")]
mod nvml {
    use nvml_wrapper::{error::NvmlError, Nvml};

    use crate::metrics::snapshot::{GpuReport, GpuStats};

    pub struct Reader {
        nvml: Nvml,
        count: u32,
    }

    impl Reader {
        /// NVML initialised and its device count, or a one-line reason.
        pub fn open() -> Result<Reader, String> {
            let nvml = Nvml::init().map_err(|e| match e {
                // dlerror's text names the file: "libnvidia-ml.so.1: cannot
                // open shared object file: No such file or directory".
                NvmlError::LibloadingError(e) => {
                    format!("NVML not available: {}", first_line(&e.to_string()))
                }
                e => format!("NVML not available: {}", first_line(&e.to_string())),
            })?;
            let count = nvml
                .device_count()
                .map_err(|e| format!("NVML: cannot count GPUs: {}", first_line(&e.to_string())))?;
            if count == 0 {
                return Err("NVML: no GPU found".to_string());
            }
            Ok(Reader { nvml, count })
        }

        pub fn report(&self) -> GpuReport {
            let devices = (0..self.count)
                .map(|index| {
                    let device = self.nvml.device_by_index(index);
                    let device = device.as_ref().ok();
                    let memory = device.and_then(|d| d.memory_info().ok());
                    GpuStats {
                        index,
                        name: device
                            .and_then(|d| d.name().ok())
                            .unwrap_or_else(|| format!("GPU {index}")),
                        utilization_percent: device
                            .and_then(|d| d.utilization_rates().ok())
                            .map(|u| f64::from(u.gpu)),
                        memory_used_bytes: memory.as_ref().map(|m| m.used),
                        memory_total_bytes: memory.as_ref().map(|m| m.total),
                    }
                })
                .collect();
            GpuReport::Present { devices }
        }
    }

    fn first_line(text: &str) -> String {
        text.lines().next().unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine has no NVIDIA driver: absent, with a one-line reason
    /// (with a driver, present with at least one device).
    #[test]
    fn gpus_are_present_or_absent_with_a_reason() {
        let report = Gpus::open().report();
        eprintln!("gpus: {}", serde_json::to_string(&report).unwrap());
        match report {
            GpuReport::Absent { reason } => {
                assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
                if cfg!(not(feature = "nvml")) {
                    assert_eq!(reason, WITHOUT_NVML);
                }
            }
            GpuReport::Present { devices } => assert!(!devices.is_empty()),
        }
    }
}
