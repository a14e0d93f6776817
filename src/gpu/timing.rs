//! GPU timing with timestamp queries written between passes of an encoder.

use super::context::Context;
use crate::error::{Error, Result};

/// Records pairs of GPU timestamps around work in a command encoder. Needs
/// `TIMESTAMP_QUERY` and `TIMESTAMP_QUERY_INSIDE_ENCODERS` (see [`GpuTimer::supported`]).
pub struct GpuTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    capacity: u32,
    used: u32,
}

impl GpuTimer {
    /// Whether the context's device can time work this way.
    pub fn supported(ctx: &Context) -> bool {
        ctx.device.features().contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        )
    }

    /// A timer holding up to `spans` start/end pairs.
    pub fn new(ctx: &Context, spans: u32) -> Result<Self> {
        if !Self::supported(ctx) {
            return Err(Error::MissingFeature("TIMESTAMP_QUERY_INSIDE_ENCODERS"));
        }
        let count = spans * 2;
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("quantkv/timer"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("quantkv/timer_resolve"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(Self {
            set,
            resolve,
            capacity: spans,
            used: 0,
        })
    }

    /// Writes the start timestamp of the next span; returns its index.
    pub fn start(&mut self, enc: &mut wgpu::CommandEncoder) -> Result<u32> {
        if self.used >= self.capacity {
            return Err(Error::InvalidArgument {
                what: "timer",
                detail: format!("all {} spans used", self.capacity),
            });
        }
        enc.write_timestamp(&self.set, self.used * 2);
        Ok(self.used)
    }

    /// Writes the end timestamp of the span `start` opened.
    pub fn end(&mut self, enc: &mut wgpu::CommandEncoder) {
        enc.write_timestamp(&self.set, self.used * 2 + 1);
        self.used += 1;
    }

    /// Resolves the queries into the timer's buffer (record after the last span).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        if self.used > 0 {
            enc.resolve_query_set(&self.set, 0..self.used * 2, &self.resolve, 0);
        }
    }

    /// Reads every span's duration in microseconds (after the resolving submit).
    pub fn read_us(&self, ctx: &Context) -> Result<Vec<f64>> {
        let bytes = ctx.read_buffer(&self.resolve)?;
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        let period_ns = ctx.queue.get_timestamp_period() as f64;
        Ok((0..self.used as usize)
            .map(|i| ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_ns / 1000.0)
            .collect())
    }

    /// Forgets recorded spans so the timer can be reused.
    pub fn reset(&mut self) {
        self.used = 0;
    }
}
