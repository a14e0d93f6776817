//! [`Tensor`]: a view of a GPU buffer as a 3-D array of one dtype, and its host-side checks.

use crate::error::{shape, Error, Result};
use crate::types::Dtype;

/// A GPU tensor: a buffer with a dtype and a 3-D shape (row-major, innermost last).
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, e.g. `[num_tokens, num_heads, head_size]`.
    pub shape: [u32; 3],
}

impl<'a> Tensor<'a> {
    /// A tensor view of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, dtype: Dtype, shape: [u32; 3]) -> Self {
        Self {
            buffer,
            dtype,
            shape,
        }
    }

    /// Bytes the shape covers.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&s| s as u64).product::<u64>() * self.dtype.size() as u64
    }

    /// Bytes of the first `rows` rows, rounded up to 4 (what a call binds: storage bindings
    /// are whole u32 words).
    pub fn binding_bytes(&self, rows: u32) -> u64 {
        (rows as u64 * self.shape[1] as u64 * self.shape[2] as u64 * self.dtype.size() as u64)
            .max(4)
            .next_multiple_of(4)
    }

    /// The binding of the first `rows` rows: exactly the bytes the call reads or writes, never
    /// the whole buffer (so a larger buffer, e.g. one holding many layers, binds fine).
    pub fn binding(&self, rows: u32) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: 0,
            size: std::num::NonZeroU64::new(self.binding_bytes(rows)),
        })
    }

    /// Checks dtype, the inner two dims, at least `min_rows` rows, the buffer's size and usage,
    /// and that the bytes a call binds (`binding_bytes(min_rows)`) fit the buffer and the
    /// adapter's storage-binding limit.
    pub fn check(
        &self,
        what: &'static str,
        dtype: Dtype,
        min_rows: u32,
        inner: [u32; 2],
        limits: &wgpu::Limits,
    ) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::InvalidArgument {
                what,
                detail: format!(
                    "dtype {:?} does not match the model dtype {dtype:?}",
                    self.dtype
                ),
            });
        }
        if self.shape[1..] != inner || self.shape[0] < min_rows {
            return Err(shape(
                what,
                format!("[>= {min_rows}, {}, {}]", inner[0], inner[1]),
                format!("{:?}", self.shape),
            ));
        }
        let need = self.binding_bytes(min_rows).max(self.bytes());
        if self.buffer.size() < need {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "{} bytes, shape {:?} needs {need} (whole u32 words)",
                    self.buffer.size(),
                    self.shape,
                ),
            });
        }
        let bound = self.binding_bytes(min_rows);
        if bound > limits.max_storage_buffer_binding_size {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "the call binds {bound} bytes, over the adapter's storage-binding limit {}",
                    limits.max_storage_buffer_binding_size
                ),
            });
        }
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                what,
                detail: "needs STORAGE usage".into(),
            });
        }
        Ok(())
    }
}

/// Rejects any two of `bufs` that are the same buffer ([`Error::Aliased`]).
pub fn distinct(bufs: &[(&'static str, &wgpu::Buffer)]) -> Result<()> {
    for (i, (a, x)) in bufs.iter().enumerate() {
        for (b, y) in &bufs[i + 1..] {
            if x == y {
                return Err(Error::Aliased { a, b });
            }
        }
    }
    Ok(())
}
